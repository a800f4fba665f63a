"""The image series an RT structure set refers to.

Coordinates: DICOM patient LPS in millimetres. Slices are indexed by ``k`` in order of
increasing position along the slice normal ``row x column`` of ImageOrientationPatient, the
same order as the arrays of :class:`model.imaging.geometry.Grid`. Logs and error details never name
patients; series are named by UID only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID, CTImageStorage

from model.errors import (
    DicomError,
    InconsistentGeometryError,
    MissingSlicesError,
    MixedSeriesError,
    NoSeriesError,
    StructureSetWriteError,
)
from model.imaging.geometry import FloatArray, Grid

_GEOMETRY_KEYWORDS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
#: Patient and study attributes copied verbatim: (ReferencedSeries field, DICOM keyword).
_COPIED = (
    ("patient_name", "PatientName"),
    ("patient_id", "PatientID"),
    ("patient_birth_date", "PatientBirthDate"),
    ("patient_sex", "PatientSex"),
    ("study_id", "StudyID"),
    ("study_date", "StudyDate"),
    ("study_time", "StudyTime"),
    ("accession_number", "AccessionNumber"),
    ("referring_physician_name", "ReferringPhysicianName"),
    ("position_reference_indicator", "PositionReferenceIndicator"),
)
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_SEX = {"", "M", "F", "O"}
#: Largest offset of a slice from its grid position along the normal, in slice spacings.
_SLICE_TOLERANCE = 0.25


@dataclass(frozen=True, kw_only=True)
class ReferencedSeries:
    """What an RTSTRUCT points at: one image series on one frame of reference.

    Parameters
    ----------
    grid
        Voxel grid of the series in LPS mm; ``grid.shape[0]`` slices in ``k`` order.
    study_instance_uid, series_instance_uid, frame_of_reference_uid
        UIDs copied into the structure set (the series UID is the *referenced* series).
    sop_instance_uids
        SOPInstanceUID of every slice, in ``k`` order.
    sop_class_uid
        SOP class of the slices (CT Image Storage by default).
    slice_positions
        ImagePositionPatient (LPS mm) of every slice in ``k`` order. Contour points are placed
        from these, so that each contour lies exactly in its slice's plane. ``None``: derived
        from ``grid``. Each must lie within a quarter slice spacing (along the normal) of the
        grid's slice position.
    patient_name, patient_id, patient_birth_date, patient_sex, study_id, study_date, \
study_time, accession_number, referring_physician_name, position_reference_indicator
        Copied verbatim (empty when unknown). Dates, times and sex that are not valid DICOM
        values are written empty.
    study_description
        Copied when given.
    specific_character_set
        SpecificCharacterSet of the series, used for the copied text.
    """

    grid: Grid
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    sop_class_uid: str = CTImageStorage
    slice_positions: tuple[tuple[float, float, float], ...] | None = None
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    position_reference_indicator: str = ""
    study_description: str | None = None
    specific_character_set: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid"):
            _check_uid(getattr(self, name), name)
        _check_uid(self.sop_class_uid, "sop_class_uid")
        uids = tuple(str(uid) for uid in self.sop_instance_uids)
        if len(uids) != self.grid.shape[0]:
            raise StructureSetWriteError(
                f"{len(uids)} SOP instance UIDs for a grid of {self.grid.shape[0]} slices"
            )
        if len(set(uids)) != len(uids):
            raise StructureSetWriteError("the referenced slices repeat a SOP instance UID")
        for uid in uids:
            _check_uid(uid, "sop_instance_uids")
        object.__setattr__(self, "sop_instance_uids", uids)
        object.__setattr__(self, "slice_positions", self._checked_positions())

    def _checked_positions(self) -> tuple[tuple[float, float, float], ...]:
        nominal = self.grid.index_to_lps(
            np.column_stack([np.arange(self.grid.shape[0]), np.zeros((self.grid.shape[0], 2))])
        )
        if self.slice_positions is None:
            return _as_tuples(nominal)
        given = np.asarray(self.slice_positions, dtype=np.float64)
        if given.shape != nominal.shape or not np.all(np.isfinite(given)):
            raise StructureSetWriteError(
                f"slice_positions must be {nominal.shape[0]} finite (x, y, z) triples"
            )
        normal = self.grid.direction_matrix[:, 2]
        offset = np.abs((given - nominal) @ normal)
        if float(offset.max()) > _SLICE_TOLERANCE * self.grid.spacing[0]:
            raise MissingSlicesError(
                f"slice positions of series {self.series_instance_uid} depart from a regular "
                f"grid by up to {float(offset.max()):.3f} mm (spacing {self.grid.spacing[0]} mm)"
            )
        return _as_tuples(given)

    @property
    def positions_array(self) -> FloatArray:
        """``(nk, 3)`` ImagePositionPatient of every slice, LPS mm, in ``k`` order."""
        return np.asarray(self.slice_positions, dtype=np.float64)

    @classmethod
    def from_datasets(cls, datasets: Sequence[pydicom.Dataset]) -> ReferencedSeries:
        """Describe a series from the headers of its slices.

        Parameters
        ----------
        datasets
            One dataset per slice (pixel data not needed), in any order.

        Returns
        -------
        ReferencedSeries
            Slices sorted by position along the slice normal ``row x column`` (LPS).

        Raises
        ------
        NoSeriesError
            No datasets.
        DicomError
            A required attribute is missing, or a SOP instance UID repeats.
        MixedSeriesError
            Several series, studies or frames of reference.
        InconsistentGeometryError
            Orientation, size or pixel spacing differ between slices, or positions repeat.
        MissingSlicesError
            Slice positions are not (close to) regularly spaced.
        """
        if not datasets:
            raise NoSeriesError("no image headers given to reference")
        for number, ds in enumerate(datasets):
            missing = [kw for kw in _GEOMETRY_KEYWORDS if ds.get(kw) in (None, "")]
            if missing:
                raise DicomError(f"image {number} lacks {', '.join(missing)}")
        for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            _require_single(datasets, keyword)
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        if len(set(uids)) != len(uids):
            raise DicomError("two images share a SOP instance UID")
        direction = _direction(datasets)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        order = np.argsort(positions @ direction[:, 2], kind="stable")
        grid = _grid(datasets[int(order[0])], positions[order], direction, len(datasets))
        first = datasets[int(order[0])]
        return cls(
            grid=grid,
            study_instance_uid=str(first.StudyInstanceUID),
            series_instance_uid=str(first.SeriesInstanceUID),
            frame_of_reference_uid=str(first.FrameOfReferenceUID),
            sop_instance_uids=tuple(uids[int(n)] for n in order),
            sop_class_uid=str(first.SOPClassUID),
            slice_positions=_as_tuples(positions[order]),
            study_description=_text(first.get("StudyDescription")) or None,
            specific_character_set=_charset(first),
            **_copied_attributes(first),
        )


def _check_uid(value: Any, name: str) -> None:
    if not isinstance(value, str) or not UID(value).is_valid:
        raise StructureSetWriteError(f"{name} is not a valid DICOM UID: {value!r}")


def _as_tuples(points: FloatArray) -> tuple[tuple[float, float, float], ...]:
    return tuple((float(x), float(y), float(z)) for x, y, z in points)


def _require_single(datasets: Sequence[pydicom.Dataset], keyword: str) -> None:
    values = {str(ds.get(keyword)) for ds in datasets}
    if len(values) > 1:
        raise MixedSeriesError(f"the images carry {len(values)} different {keyword} values")


def _direction(datasets: Sequence[pydicom.Dataset]) -> FloatArray:
    """3x3 matrix whose columns are the LPS row, column and normal unit vectors."""
    first = datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    size = (int(first.Rows), int(first.Columns))
    spacing = [float(v) for v in first.PixelSpacing]
    for number, ds in enumerate(datasets):
        other = np.array([float(v) for v in ds.ImageOrientationPatient])
        if other.shape != (6,) or not np.allclose(other, iop, atol=1e-4):
            raise InconsistentGeometryError(f"image {number} has a different orientation")
        same_size = (int(ds.Rows), int(ds.Columns)) == size
        if not same_size or not np.allclose([float(v) for v in ds.PixelSpacing], spacing):
            raise InconsistentGeometryError(f"image {number} has a different size or spacing")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        raise InconsistentGeometryError("ImageOrientationPatient is not made of unit vectors")
    if abs(float(row @ col)) > 1e-3:
        raise InconsistentGeometryError("ImageOrientationPatient vectors are not orthogonal")
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)])


def _grid(first: pydicom.Dataset, positions: FloatArray, direction: FloatArray, n: int) -> Grid:
    """Regular grid through sorted slice positions (median spacing along the normal)."""
    steps = np.diff(positions @ direction[:, 2])
    if steps.size and float(steps.min()) < 1e-3:
        raise InconsistentGeometryError("two images share a slice position")
    if steps.size:
        dk = float(np.median(steps))
    else:
        dk = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    return Grid(
        shape=(n, int(first.Rows), int(first.Columns)),
        origin=(float(positions[0, 0]), float(positions[0, 1]), float(positions[0, 2])),
        spacing=(dk, row_spacing, col_spacing),
        direction=tuple((float(a), float(b), float(c)) for a, b, c in direction),
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _charset(ds: pydicom.Dataset) -> tuple[str, ...] | None:
    value = ds.get("SpecificCharacterSet")
    if not value:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _copied_attributes(ds: pydicom.Dataset) -> dict[str, str]:
    """Patient/study attributes of ``ds``; invalid dates, times and sexes become empty."""
    values = {name: _text(ds.get(keyword)) for name, keyword in _COPIED}
    for name in ("patient_birth_date", "study_date"):
        if values[name] and not _DA.match(values[name]):
            values[name] = ""
    if values["study_time"] and not _TM.match(values["study_time"]):
        values["study_time"] = ""
    if values["patient_sex"] not in _SEX:
        values["patient_sex"] = ""
    return values
