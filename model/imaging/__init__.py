"""Voxel grids in DICOM patient coordinates and CT preprocessing for the network."""
