"""Geometry checks of a CT series and the LPS :class:`~model.imaging.geometry.Grid` they imply.

Coordinates: DICOM patient LPS, millimetres. The grid's ``i`` axis follows the
ImageOrientationPatient row cosines, ``j`` the column cosines and ``k`` their cross product
(the slice normal); slices are ordered by position along that normal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from model.dicom.ingest_policy import IngestPolicy
from model.dicom.patient_position import position_findings
from model.errors import (
    DicomError,
    ImplausibleGeometryError,
    InconsistentGeometryError,
    MissingSlicesError,
    MixedSeriesError,
    ObliqueSeriesError,
)
from model.imaging.geometry import Grid

FloatArray = npt.NDArray[np.float64]

_REQUIRED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
#: Slice positions closer than this (mm) are the same position.
_DUPLICATE_MM = 0.01


@dataclass(frozen=True)
class SeriesGeometry:
    """The LPS grid of a series, its slice order, and findings about the patient position.

    Attributes
    ----------
    grid
        LPS mm, shape ``(k, j, i)``, origin = ImagePositionPatient of slice 0.
    order
        Indices into the slices in ``k`` order.
    position_warnings
        :func:`model.dicom.patient_position.position_findings` (job warnings).
    """

    grid: Grid
    order: list[int]
    position_warnings: tuple[str, ...] = ()


def build_grid(slices: Sequence[Dataset], policy: IngestPolicy) -> SeriesGeometry:
    """Check the geometry of single-frame CT slices and build their LPS grid.

    Parameters
    ----------
    slices
        Headers of one series, in any order.
    policy
        Tolerances (:class:`model.dicom.ingest_policy.IngestPolicy`).

    Returns
    -------
    SeriesGeometry
        The grid, the slice order and the patient-position warnings.

    Raises
    ------
    UnsupportedPatientPositionError
        Decubitus, or a position the policy refuses (:mod:`model.dicom.patient_position`).
    """
    for keyword in _REQUIRED:
        if any(keyword not in ds or ds[keyword].value is None for ds in slices):
            raise DicomError(f"a CT slice lacks {keyword}")
    _check_matrix(slices, policy)
    for ds in slices:
        if ds.get("SliceThickness") not in (None, ""):
            tag_values(ds, "SliceThickness", 1)
    row, col, normal = _orientation(slices, policy.orientation_tolerance_deg)
    _check_gantry_tilt(slices, policy.orientation_tolerance_deg)
    findings = position_findings(
        slices, row, col, refuse_untrained=policy.refuse_untrained_positions
    )
    rows, cols, spacing = _pixel_geometry(slices, policy.pixel_spacing_tolerance_mm)
    positions = np.array([tag_values(ds, "ImagePositionPatient", 3) for ds in slices])
    along = positions @ normal
    order = [int(n) for n in np.argsort(along, kind="stable")]
    _check_in_plane(positions[order], row, col, spacing, policy.in_plane_shift_tolerance)
    dk = _slice_spacing(along[order], policy)
    _check_plausible((len(slices), rows, cols), (dk, spacing[0], spacing[1]), policy)
    grid = Grid(
        shape=(len(slices), rows, cols),
        origin=(
            float(positions[order[0], 0]),
            float(positions[order[0], 1]),
            float(positions[order[0], 2]),
        ),
        spacing=(dk, spacing[0], spacing[1]),
        direction=tuple(
            (float(r[0]), float(r[1]), float(r[2])) for r in np.column_stack([row, col, normal])
        ),
    )
    return SeriesGeometry(grid, order, tuple(findings))


def tag_values(ds: Dataset, keyword: str, count: int) -> list[float]:
    """The ``count`` numbers of a decimal-string tag; refuse a wrong count or NaN/inf."""
    value = ds[keyword].value
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{keyword} holds a value that is not a number") from exc
    if len(numbers) != count:
        raise DicomError(f"{keyword} must hold {count} values, not {len(numbers)}")
    if not all(math.isfinite(v) for v in numbers):
        raise ImplausibleGeometryError(f"{keyword} holds NaN or an infinite value")
    return numbers


def _check_matrix(slices: Sequence[Dataset], policy: IngestPolicy) -> None:
    """Refuse empty or huge matrices from the headers, before anything is allocated."""
    limit = policy.max_matrix
    if len(slices) > limit:
        raise ImplausibleGeometryError(f"{len(slices)} slices; at most {limit} are accepted")
    for ds in slices:
        rows, cols = int(ds.Rows), int(ds.Columns)
        if not (0 < rows <= limit and 0 < cols <= limit):
            raise ImplausibleGeometryError(
                f"a {rows}x{cols} matrix; Rows and Columns must be between 1 and {limit}"
            )


def _check_plausible(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], policy: IngestPolicy
) -> None:
    """Refuse spacings (mm) and a physical extent (LPS mm per grid axis) outside the limits."""
    low, high = policy.min_spacing_mm, policy.max_spacing_mm
    names = ("slice spacing", "PixelSpacing (rows)", "PixelSpacing (columns)")
    for name, value in zip(names, spacing, strict=True):
        if not low <= value <= high:
            raise ImplausibleGeometryError(
                f"{name} is {value:.4g} mm; accepted are {low:g} to {high:g} mm"
            )
    for axis, n, value in zip("kji", shape, spacing, strict=True):
        extent = n * value
        if extent > policy.max_extent_mm:
            raise ImplausibleGeometryError(
                f"the series spans {extent:.0f} mm along axis {axis}; at most "
                f"{policy.max_extent_mm:.0f} mm are accepted"
            )


def _angle_deg(a: FloatArray, b: FloatArray) -> float:
    """Angle between two unit vectors, in degrees, ignoring their sign."""
    return float(np.degrees(np.arccos(np.clip(abs(float(a @ b)), 0.0, 1.0))))


def _unit(v: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise DicomError("ImageOrientationPatient holds a zero vector")
    return np.asarray(v / norm, dtype=np.float64)


def _orientation(slices: Sequence[Dataset], tol_deg: float) -> tuple[FloatArray, ...]:
    """Row, column and normal unit vectors (orthonormalised); refuse non-axial series."""
    iops = np.array([tag_values(ds, "ImageOrientationPatient", 6) for ds in slices])
    row = _unit(iops[0, :3])
    col = _unit(iops[0, 3:] - (iops[0, 3:] @ row) * row)
    normal = np.cross(row, col)
    for other in iops[1:]:
        if max(_angle_deg(row, _unit(other[:3])), _angle_deg(col, _unit(other[3:]))) > tol_deg:
            raise InconsistentGeometryError("ImageOrientationPatient differs between slices")
    axes = np.eye(3)
    row_off = _angle_deg(row, axes[int(np.argmax(np.abs(row)))])
    col_off = _angle_deg(col, axes[int(np.argmax(np.abs(col)))])
    normal_off = _angle_deg(normal, axes[2])
    if max(row_off, col_off, normal_off) > tol_deg:
        raise ObliqueSeriesError(
            f"series is not axial: slice normal is {normal_off:.2f} deg from the patient z axis, "
            f"rows/columns {row_off:.2f}/{col_off:.2f} deg from the patient axes "
            f"(tolerance {tol_deg} deg)"
        )
    return row, col, normal


def _check_gantry_tilt(slices: Sequence[Dataset], tol_deg: float) -> None:
    tilts = [float(ds.GantryDetectorTilt) for ds in slices if ds.get("GantryDetectorTilt")]
    if tilts and max(abs(t) for t in tilts) > tol_deg:
        raise ObliqueSeriesError(
            f"gantry tilt of {max(tilts, key=abs):.2f} deg (tolerance {tol_deg} deg)"
        )


def _pixel_geometry(slices: Sequence[Dataset], tol_mm: float) -> tuple[int, int, list[float]]:
    """Rows, columns and PixelSpacing ``[row spacing, column spacing]`` shared by all slices."""
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    if len(shapes) > 1:
        raise InconsistentGeometryError(f"slices have {len(shapes)} different matrix sizes")
    spacings = np.array([tag_values(ds, "PixelSpacing", 2) for ds in slices])
    if np.any(spacings <= 0):
        raise DicomError("PixelSpacing must hold two positive values")
    if np.ptp(spacings, axis=0).max() > tol_mm:
        raise InconsistentGeometryError("PixelSpacing differs between slices")
    ((rows, cols),) = shapes
    return rows, cols, [float(spacings[0, 0]), float(spacings[0, 1])]


def _check_in_plane(
    positions: FloatArray, row: FloatArray, col: FloatArray, spacing: list[float], tol: float
) -> None:
    """Refuse positions that drift in-plane from slice to slice (gantry tilt, shear)."""
    offsets = positions - positions[0]
    drift_i = np.abs(offsets @ row).max() / spacing[1]
    drift_j = np.abs(offsets @ col).max() / spacing[0]
    if max(drift_i, drift_j) > tol:
        raise ObliqueSeriesError(
            f"slice positions drift {max(drift_i, drift_j):.2f} pixels in-plane across the "
            "series; they do not lie along the slice normal (gantry tilt or sheared series)"
        )


def _slice_spacing(along: FloatArray, policy: IngestPolicy) -> float:
    """Uniform slice spacing (mm) of sorted positions along the normal; refuse gaps."""
    steps = np.diff(along)
    duplicates = int(np.count_nonzero(steps < _DUPLICATE_MM))
    if duplicates:
        raise MixedSeriesError(
            f"{duplicates} slice positions occur more than once (several acquisitions in "
            "one series?)"
        )
    median = float(np.median(steps))
    gaps = steps > policy.max_gap_factor * median
    if np.any(gaps):
        raise MissingSlicesError(
            f"{int(np.count_nonzero(gaps))} gap(s) in slice positions, largest "
            f"{float(steps.max()):.2f} mm against a median spacing of {median:.2f} mm"
        )
    dk = float(along[-1] - along[0]) / (len(along) - 1)
    misplaced = np.abs(along - (along[0] + dk * np.arange(len(along)))).max()
    if misplaced > policy.slice_position_tolerance * dk:
        raise InconsistentGeometryError(
            f"slice spacing is not uniform: a slice lies {misplaced:.2f} mm from its place on "
            f"a regular {dk:.3f} mm grid"
        )
    return dk
