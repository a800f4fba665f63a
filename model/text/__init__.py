"""The text side: clinical fields and the notes they render, and frozen text encoders."""
