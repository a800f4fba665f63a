"""Training: DICOM data sets and their cache, sampling and batches, the trainer."""
