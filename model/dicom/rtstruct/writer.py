"""Writing DICOM RT Structure Sets (RTSTRUCT) from voxel masks.

Coordinates
-----------
Masks are boolean arrays indexed ``(k, j, i)`` on the grid of the referenced series
(:class:`~model.dicom.rtstruct.reference.ReferencedSeries`). Contour points are DICOM patient
LPS millimetres, computed through the grid's direction cosines and pixel spacing and each
slice's ImagePositionPatient; arrays are never flipped or rotated.

Contour conventions (what a reader must assume to get the mask back)
--------------------------------------------------------------------
* Every contour is ``CLOSED_PLANAR`` and lies in the plane of the slice it names in its
  ContourImageSequence.
* Contours run along the *outline of the voxel squares* (vertices at voxel corners, half a
  voxel from the centres), not through voxel centres: a reader that includes a voxel when its
  centre is inside the polygon (plastimatch, :func:`model.dicom.rtstruct.polygons.polygons_to_mask`)
  gets back exactly the mask that was written. Only corners are written.
* Holes and several islands on a slice: each island's outer boundary and each hole's boundary
  is a separate contour, and the slice's region is given by the **even-odd (XOR) rule** over
  all contours of the ROI on that slice, as Eclipse and RayStation interpret nested contours
  (plastimatch: ``--xor-contours``). No "keyhole" cuts are made.
* Every contour is a simple polygon. Voxels that touch only at a corner belong to separate
  contours that share that corner point, so diagonal neighbours round-trip whichever of
  4- or 8-connectivity a reader assumes (see :mod:`model.dicom.rtstruct.polygons`).
* An ROI whose mask is empty is still written (StructureSetROI, ROIContour and observation
  items) but has no ContourSequence, so the planning system shows an empty structure rather
  than a missing one. A warning is logged.
* Coordinates are written with at most 3 decimals (so every DS value has at most 16
  characters, checked).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    RTStructureSetStorage,
    generate_uid,
)

from model.dicom.part10 import file_meta
from model.dicom.rtstruct.content import (
    LO_MAX,
    RoiSpec,
    WriterInfo,
    check_text,
)
from model.dicom.rtstruct.polygons import corner_loops
from model.dicom.rtstruct.reference import ReferencedSeries
from model.errors import StructureSetWriteError
from model.imaging.geometry import FloatArray

logger = logging.getLogger(__name__)

#: Referenced SOP Class of an RT Referenced Study item (Detached Study Management, PS3.3).
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_CONTOUR_DATA = Tag(0x3006, 0x0050)
_MAX_ABS_COORDINATE = 1e9  # mm; with 3 decimals every DS value then fits in 16 characters


def build_rtstruct(
    reference: ReferencedSeries,
    rois: Sequence[RoiSpec],
    info: WriterInfo,
    *,
    created: datetime | None = None,
) -> pydicom.Dataset:
    """Build an RT Structure Set that references ``reference`` and holds ``rois``.

    Parameters
    ----------
    reference
        The image series (grid in LPS mm, UIDs, patient and study attributes).
    rois
        ROIs in the order they are numbered (1, 2, ...); masks on ``reference.grid``.
    info
        Manufacturer, model, versions and labels.
    created
        Creation time (local) for the instance, series and structure set dates; now by default.

    Returns
    -------
    pydicom.Dataset
        The structure set with file meta information (Explicit VR Little Endian), ready for
        ``save_as(path, enforce_file_format=True)``. Contour Data is held pre-encoded.

    Raises
    ------
    StructureSetWriteError
        No ROI, a mask not on the grid, duplicate ROI names, a name too long with the suffix,
        or coordinates too large for a 16-character DS value.
    """
    start = time.perf_counter()
    _check_rois(reference, rois, info)
    when = created or datetime.now()
    ds = _base_dataset(reference, info, when)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_frame_of_reference_item(reference)])
    ds.StructureSetROISequence = DicomSequence(
        [_structure_set_roi_item(number, roi, reference, info) for number, roi in _numbered(rois)]
    )
    contour_items = [_roi_contour_item(number, roi, reference) for number, roi in _numbered(rois)]
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(
        [_observation_item(number, roi) for number, roi in _numbered(rois)]
    )
    counts = [len(item.get("ContourSequence", [])) for item in contour_items]
    logger.info(
        "built RTSTRUCT with %d ROIs, %d contours in %.2f s",
        len(rois),
        sum(counts),
        time.perf_counter() - start,
    )
    return ds


def write_rtstruct(
    path: Path,
    reference: ReferencedSeries,
    rois: Sequence[RoiSpec],
    info: WriterInfo,
    *,
    created: datetime | None = None,
) -> pydicom.Dataset:
    """Build the structure set and write it to ``path`` (Explicit VR Little Endian, Part 10).

    Parameters
    ----------
    path
        Output file. It is written next to ``path`` first and then renamed, so that a reader
        never sees a partial file.
    reference, rois, info, created
        As for :func:`build_rtstruct` (masks ``(k, j, i)`` on the reference grid; contours in
        LPS mm).

    Returns
    -------
    pydicom.Dataset
        The dataset that was written.
    """
    ds = build_rtstruct(reference, rois, info, created=created)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        ds.save_as(partial, enforce_file_format=True)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return ds


def _numbered(rois: Sequence[RoiSpec]) -> list[tuple[int, RoiSpec]]:
    return list(enumerate(rois, start=1))


def _check_rois(reference: ReferencedSeries, rois: Sequence[RoiSpec], info: WriterInfo) -> None:
    if not rois:
        raise StructureSetWriteError("a structure set needs at least one ROI")
    seen: set[str] = set()
    for roi in rois:
        if not isinstance(roi, RoiSpec):
            raise StructureSetWriteError(f"expected RoiSpec items, got {type(roi).__name__}")
        if roi.mask.shape != reference.grid.shape:
            raise StructureSetWriteError(
                f"ROI {roi.name!r}: mask shape {roi.mask.shape} is not the referenced grid "
                f"shape {reference.grid.shape}"
            )
        full_name = roi.name + info.roi_name_suffix
        check_text(full_name, "ROI name with suffix", LO_MAX, error=StructureSetWriteError)
        if full_name.casefold() in seen:
            raise StructureSetWriteError(f"ROI name {full_name!r} is used twice")
        seen.add(full_name.casefold())


def _base_dataset(reference: ReferencedSeries, info: WriterInfo, when: datetime) -> Dataset:
    """Patient, study, series, equipment, structure set header, approval and SOP common."""
    sop_instance_uid = generate_uid(prefix=info.uid_prefix)
    ds = Dataset()
    ds.file_meta = _file_meta(sop_instance_uid)
    charset = _character_set(reference, info)
    if charset is not None:
        ds.SpecificCharacterSet = list(charset) if len(charset) > 1 else charset[0]
    date, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, clock
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate, ds.StudyTime = reference.study_date, reference.study_time
    ds.AccessionNumber = reference.accession_number
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = info.manufacturer
    _set_optional(ds, "InstitutionName", info.institution_name)
    ds.ReferringPhysicianName = reference.referring_physician_name
    _set_optional(ds, "StationName", info.station_name)
    _set_optional(ds, "StudyDescription", reference.study_description)
    ds.SeriesDescription = info.series_description
    ds.OperatorsName = ""
    ds.ManufacturerModelName = info.model_name
    ds.PatientName = reference.patient_name
    ds.PatientID = reference.patient_id
    ds.PatientBirthDate = reference.patient_birth_date
    ds.PatientSex = reference.patient_sex
    _set_optional(ds, "DeviceSerialNumber", info.device_serial_number)
    ds.SoftwareVersions = list(info.software_versions)
    ds.StudyInstanceUID = reference.study_instance_uid
    ds.SeriesInstanceUID = generate_uid(prefix=info.uid_prefix)
    ds.StudyID = reference.study_id
    ds.SeriesNumber = "" if info.series_number is None else str(info.series_number)
    ds.InstanceNumber = str(info.instance_number)
    ds.SeriesDate, ds.SeriesTime = date, clock
    ds.FrameOfReferenceUID = reference.frame_of_reference_uid
    ds.PositionReferenceIndicator = reference.position_reference_indicator
    ds.StructureSetLabel = info.structure_set_label
    _set_optional(ds, "StructureSetName", info.structure_set_name)
    _set_optional(ds, "StructureSetDescription", info.structure_set_description)
    ds.StructureSetDate, ds.StructureSetTime = date, clock
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _set_optional(ds: Dataset, keyword: str, value: str | None) -> None:
    if value:
        setattr(ds, keyword, value)


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    """File meta information: RTStructureSetStorage, Explicit VR Little Endian."""
    return file_meta(RTStructureSetStorage, sop_instance_uid, "LLMCTV_RTSS_1")


def _character_set(reference: ReferencedSeries, info: WriterInfo) -> tuple[str, ...] | None:
    """The series' character set; UTF-8 when it has none and our own text is not ASCII."""
    if reference.specific_character_set:
        return reference.specific_character_set
    own = [info.series_description, info.structure_set_label, info.model_name]
    own += [info.roi_name_suffix, info.manufacturer, *info.software_versions]
    own += [info.structure_set_name or "", info.structure_set_description or ""]
    return None if all(text.isascii() for text in own) else ("ISO_IR 192",)


def _frame_of_reference_item(reference: ReferencedSeries) -> Dataset:
    """Referenced Frame of Reference -> Study -> Series -> every image of the series."""
    images = []
    for uid in reference.sop_instance_uids:
        image = Dataset()
        image.ReferencedSOPClassUID = reference.sop_class_uid
        image.ReferencedSOPInstanceUID = uid
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = reference.series_instance_uid
    series.ContourImageSequence = DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS
    study.ReferencedSOPInstanceUID = reference.study_instance_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = reference.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _structure_set_roi_item(
    number: int, roi: RoiSpec, reference: ReferencedSeries, info: WriterInfo
) -> Dataset:
    item = Dataset()
    item.ROINumber = str(number)
    item.ReferencedFrameOfReferenceUID = reference.frame_of_reference_uid
    item.ROIName = roi.name + info.roi_name_suffix
    _set_optional(item, "ROIDescription", roi.description)
    item.ROIGenerationAlgorithm = roi.generation_algorithm.value
    item.ROIGenerationDescription = f"{info.manufacturer} {info.model_name}"[:LO_MAX]
    return item


def _observation_item(number: int, roi: RoiSpec) -> Dataset:
    item = Dataset()
    item.ObservationNumber = str(number)
    item.ReferencedROINumber = str(number)
    item.RTROIInterpretedType = roi.interpreted_type.value
    item.ROIInterpreter = ""
    return item


def _roi_contour_item(number: int, roi: RoiSpec, reference: ReferencedSeries) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = [str(c) for c in roi.display_color]
    item.ReferencedROINumber = str(number)
    slices, texts = _contour_texts(roi.mask, reference)
    if not texts:
        logger.warning("ROI %d has an empty mask; it is written without contours", number)
        return item
    contours = []
    for contour_number, (k, (text, n_points)) in enumerate(
        zip(slices, texts, strict=True), start=1
    ):
        contours.append(_contour(contour_number, reference, k, text, n_points))
    item.ContourSequence = DicomSequence(contours)
    return item


def _contour(
    contour_number: int, reference: ReferencedSeries, k: int, text: bytes, n_points: int
) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID = reference.sop_class_uid
    image.ReferencedSOPInstanceUID = reference.sop_instance_uids[k]
    contour = Dataset()
    contour.ContourImageSequence = DicomSequence([image])
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = str(n_points)
    contour.ContourNumber = str(contour_number)
    # Pre-encoded DS values: pydicom would otherwise build one DSfloat per coordinate, which
    # dominates the writing time for large ROIs. Marking the item as explicit VR little endian
    # lets pydicom write the raw value as it is.
    contour[_CONTOUR_DATA] = RawDataElement(_CONTOUR_DATA, "DS", len(text), text, 0, False, True)
    contour.set_original_encoding(False, True, default_encoding)
    return contour


def _contour_texts(
    mask: npt.NDArray[np.bool_], reference: ReferencedSeries
) -> tuple[list[int], list[tuple[bytes, int]]]:
    """Encoded Contour Data of every contour of a mask, with its slice index and point count."""
    slices: list[int] = []
    loops: list[npt.NDArray[np.int64]] = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))).tolist():
        for loop in corner_loops(mask[k]):
            slices.append(k)
            loops.append(loop)
    if not loops:
        return [], []
    sizes = np.array([len(loop) for loop in loops])
    corners = np.concatenate(loops)
    k_of_point = np.repeat(np.array(slices), sizes)
    values = _format_ds(_corners_to_lps(corners, k_of_point, reference))
    bounds = np.concatenate([[0], np.cumsum(sizes * 3)]).tolist()
    texts = [
        _encode_ds(values[a:b], n)
        for a, b, n in zip(bounds[:-1], bounds[1:], sizes.tolist(), strict=True)
    ]
    return slices, texts


def _corners_to_lps(
    corners: npt.NDArray[np.int64], k: npt.NDArray[np.int64], reference: ReferencedSeries
) -> FloatArray:
    """Map corner indices ``(J, I)`` (index position ``(J - 0.5, I - 0.5)``) on slice ``k``
    to LPS mm: in-plane through the grid, then shifted to that slice's ImagePositionPatient.
    """
    grid = reference.grid
    index = np.column_stack([np.zeros(len(corners)), corners - 0.5])
    shift = reference.positions_array - np.asarray(grid.origin, dtype=np.float64)
    return grid.index_to_lps(index) + shift[k]


def _format_ds(points: FloatArray) -> list[str]:
    """DS strings with at most 3 decimals, each at most 16 characters."""
    if not np.all(np.isfinite(points)) or float(np.abs(points).max()) >= _MAX_ABS_COORDINATE:
        raise StructureSetWriteError("contour coordinates are not finite or too large for DS")
    # rint(x * 1000) / 1000 is the float nearest to a 3-decimal number, so repr() prints at
    # most 3 decimals; adding 0.0 turns -0.0 into 0.0.
    rounded = np.rint(points.ravel() * 1000.0) / 1000.0 + 0.0
    # |v| < 1e9 with at most 3 decimals: at most 1 + 9 + 1 + 3 = 14 characters.
    return [repr(v) for v in rounded.tolist()]


def _encode_ds(values: list[str], n_points: int) -> tuple[bytes, int]:
    text = "\\".join(values).encode("ascii")
    return (text + b" " if len(text) % 2 else text), n_points
