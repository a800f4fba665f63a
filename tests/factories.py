"""Synthetic DICOM data for tests: small CT series and RT structure sets.

Positions and contour points are DICOM patient LPS in millimetres.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RTStructureSetStorage,
    generate_uid,
)

from model.training.sampling import TrainingCase

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LUNG1_DIR = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001"
BREAST_DIR = SHARED_DATA / "breast_rtstruct_example"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711"


@dataclass
class CtSpec:
    """What :func:`write_ct_series` writes; every slice shares these unless ``edit`` changes it.

    ``signed`` switches to PixelRepresentation 1 with intercept 0 (values stored as HU).
    """

    n_slices: int = 6
    rows: int = 12
    columns: int = 10
    pixel_spacing: tuple[float, float] = (0.8, 0.7)
    slice_spacing: float = 2.5
    origin: tuple[float, float, float] = (-4.0, -6.0, -10.0)
    orientation: tuple[float, ...] = AXIAL
    modality: str = "CT"
    bits_stored: int = 16
    signed: bool = False
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    seed: int = 0


def slice_position(spec: CtSpec, k: int) -> tuple[float, float, float]:
    """IPP of slice ``k``: the origin moved ``k`` slice spacings along the normal."""
    o = np.asarray(spec.orientation, dtype=float)
    normal = np.cross(o[:3], o[3:])
    pos = np.asarray(spec.origin) + k * spec.slice_spacing * normal
    return (float(pos[0]), float(pos[1]), float(pos[2]))


def stored_pixels(spec: CtSpec, k: int) -> npt.NDArray[np.integer]:
    """Deterministic stored values of slice ``k`` (HU = value + intercept)."""
    rng = np.random.default_rng(spec.seed * 1000 + k)
    top = (1 << (spec.bits_stored - 1 if spec.signed else spec.bits_stored)) - 1
    low = -min(1024, top) if spec.signed else 0
    values = rng.integers(low, min(top, 4095) + 1, size=(spec.rows, spec.columns))
    return values.astype(np.int16 if spec.signed else np.uint16)


def make_ct_slice(spec: CtSpec, k: int) -> FileDataset:
    """One single-frame CT (or ``spec.modality``) image, explicit VR little endian."""
    sop_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = spec.modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = spec.frame_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = list(slice_position(spec, k))
    ds.ImageOrientationPatient = list(spec.orientation)
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = spec.slice_spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 1 if spec.signed else 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0 if spec.signed else -1024
    ds.PixelData = stored_pixels(spec, k).tobytes()
    return ds


def write_ct_series(
    folder: Path,
    spec: CtSpec | None = None,
    *,
    edit: Callable[[int, FileDataset], None] | None = None,
) -> list[Path]:
    """Write a series, one file per slice, named so that file order is not slice order.

    ``edit(k, ds)`` may change slice ``k`` before it is written.
    """
    spec = spec or CtSpec()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(spec.n_slices):
        ds = make_ct_slice(spec, k)
        if edit is not None:
            edit(k, ds)
        path = folder / f"{spec.series_uid[-6:]}_{(k * 7919) % 1009:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_rtstruct(
    frame_uid: str,
    rois: Mapping[str, Sequence[npt.ArrayLike]],
    *,
    types: Mapping[str, str] | None = None,
    series_uid: str | None = None,
) -> FileDataset:
    """An RTSTRUCT whose ROI ``name`` holds closed planar contours (``(n, 3)`` LPS mm)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    if series_uid is not None:
        series, study = Dataset(), Dataset()
        series.SeriesInstanceUID = series_uid
        study.RTReferencedSeriesSequence = [series]
        frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        _add_roi(ds, number, name, contours, frame_uid, (types or {}).get(name, "CTV"))
    return ds


def _add_roi(
    ds: Dataset,
    number: int,
    name: str,
    contours: Sequence[npt.ArrayLike],
    frame_uid: str,
    kind: str,
) -> None:
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
    ds.StructureSetROISequence.append(roi)
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = [255, 0, number % 256]
    item.ContourSequence = []
    for points in contours:
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(pts)
        contour.ContourData = [f"{v:.6g}" for v in pts.ravel()]
        item.ContourSequence.append(contour)
    ds.ROIContourSequence.append(item)
    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber = number, number
    obs.RTROIInterpretedType = kind
    ds.RTROIObservationsSequence.append(obs)


# --- toy training sets (two bright blocks; the note says which is the target) -------------------
def toy_block_image(idx: int) -> npt.NDArray[np.float32]:
    """A 32 x 64 x 64 image with two identical bright blocks, left and right (seeded by idx)."""
    rng = np.random.default_rng(idx)
    image = (rng.random((32, 64, 64)) * 0.1).astype(np.float32)
    image[8:24, 20:44, 6:26] += 0.8
    image[8:24, 20:44, 38:58] += 0.8
    return image


def toy_block_label(side: str) -> npt.NDArray[np.uint8]:
    """The target block of ``side`` (LPS: the patient's left is +x, the larger column index)."""
    label = np.zeros((32, 64, 64), np.uint8)
    if side == "left":
        label[8:24, 20:44, 38:58] = 1
    else:
        label[8:24, 20:44, 6:26] = 1
    return label


def toy_training_cases(n: int = 6) -> list[TrainingCase]:
    """``n`` toy cases, sides alternating (left first), each with its one-sided note."""
    cases = []
    for idx in range(n):
        side = "left" if idx % 2 == 0 else "right"
        image, label = toy_block_image(idx), toy_block_label(side)
        cases.append(TrainingCase(f"c{idx}", image, label, f"N0, cT1, {side} side", (3, 1, 1)))
    return cases
