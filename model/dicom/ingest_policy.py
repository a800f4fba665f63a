"""What a CT series must satisfy to be accepted: the tolerances of ingest."""

from __future__ import annotations

from dataclasses import dataclass

from model.errors import ConfigurationError


@dataclass(frozen=True)
class IngestPolicy:
    """Tolerances for accepting a CT series.

    Parameters
    ----------
    min_slices
        Fewest slices accepted (at least 2, so that a slice spacing exists).
    max_gap_factor
        A step between neighbouring slice positions larger than this times the median step
        means slices are missing.
    orientation_tolerance_deg
        Largest angle between an ImageOrientationPatient direction and the nearest patient
        axis, between the slice normal and the LPS z axis, between the orientations of two
        slices, and largest GantryDetectorTilt.
    in_plane_shift_tolerance
        Largest in-plane offset (fraction of the pixel spacing) of any slice position from the
        line through the first position along the slice normal (gantry tilt, shear).
    slice_position_tolerance
        Largest distance (fraction of the mean slice spacing) between a slice position and its
        place on the uniform grid.
    pixel_spacing_tolerance_mm
        Largest difference in PixelSpacing between slices.
    skip_non_dicom
        Skip files that are not DICOM with a logged warning; otherwise raise.
    min_spacing_mm, max_spacing_mm
        Plausible range of PixelSpacing (both values) and of the slice spacing, in mm.
    max_extent_mm
        Largest physical extent of the series along each grid axis (LPS mm).
    max_matrix
        Largest Rows, Columns and number of slices; refused from the headers, before any
        pixel is decoded or any array is allocated.
    max_windows
        Largest number of sliding windows one network pass may take (checked by the worker,
        which knows the network's window and spacing).
    refuse_untrained_positions
        Refuse a series whose PatientPosition the model was not trained on (prone) with
        ``unsupported_patient_position``, instead of a warning.

    The plausibility limits make a series with absurd geometry fail at inspection with
    ``implausible_geometry`` instead of tying up a worker for hours.
    """

    min_slices: int = 5
    max_gap_factor: float = 1.5
    orientation_tolerance_deg: float = 0.5
    in_plane_shift_tolerance: float = 0.25
    slice_position_tolerance: float = 0.1
    pixel_spacing_tolerance_mm: float = 1e-3
    skip_non_dicom: bool = True
    min_spacing_mm: float = 0.1
    max_spacing_mm: float = 10.0
    max_extent_mm: float = 1000.0
    max_matrix: int = 2048
    max_windows: int = 2000
    refuse_untrained_positions: bool = False

    def __post_init__(self) -> None:
        if self.min_slices < 2:
            raise ConfigurationError(f"min_slices must be at least 2, got {self.min_slices}")
        if self.max_gap_factor <= 1.0:
            raise ConfigurationError(f"max_gap_factor must exceed 1, got {self.max_gap_factor}")
        tolerances = (
            self.orientation_tolerance_deg,
            self.in_plane_shift_tolerance,
            self.slice_position_tolerance,
            self.pixel_spacing_tolerance_mm,
        )
        if any(t < 0 for t in tolerances):
            raise ConfigurationError("ingest tolerances must not be negative")
        if not 0 < self.min_spacing_mm < self.max_spacing_mm:
            raise ConfigurationError("need 0 < min_spacing_mm < max_spacing_mm")
        if self.max_extent_mm <= 0 or self.max_matrix < 1 or self.max_windows < 1:
            raise ConfigurationError("max_extent_mm, max_matrix and max_windows must be positive")


#: The clinical defaults.
DEFAULT_POLICY = IngestPolicy()
