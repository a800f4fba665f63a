"""DICOM input and output: CT series, RT structure sets."""
