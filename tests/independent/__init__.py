"""Independent synthetic breast-RT test data (see ``generator`` for the modelling choices).

Written from ``shared/specs/breast-phantom.md`` only, without the training generator, to test
the shipped model on anatomy nobody tuned it to. Coordinates everywhere: DICOM patient LPS in mm
(+x patient left, +y posterior, +z head) and array index (k, j, i) = (slice, row, column).
"""
