"""Training: DICOM data sets and their memory-mapped cache, batches, the trainer, DDP."""
