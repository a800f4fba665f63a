"""CT series writer: one CT Image Storage file per slice, Explicit VR Little Endian.

The volume is (k, j, i) = (slice, row, column) with k toward +z (head); slice k is written with
``ImagePositionPatient = (x0, y0, z0 + k dk)`` (LPS mm, centre of its first pixel) and
``ImageOrientationPatient = [1,0,0,0,1,0]``, head first supine (``PatientPosition`` HFS).
UIDs come from ``pydicom.uid.generate_uid`` with entropy from the case id and seed, so the same
case gives the same files byte for byte (no clock is read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from .shapes import Grid


def ds_number(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    for digits in (6, 5, 4, 3, 2):
        text = f"{round(value, digits):.{digits}f}".rstrip("0").rstrip(".")
        if text == "-0":
            text = "0"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} does not fit a DS")


def case_uids(case_id: str, seed: int) -> dict[str, str]:
    """Deterministic study, series and frame-of-reference UIDs of a case."""
    base = ["llmctv-independent-phantom", case_id, str(seed)]
    return {
        name: str(generate_uid(entropy_srcs=[*base, name]))
        for name in ("study", "series", "frame_of_reference")
    }


def write_series(
    folder: Path,
    hu: npt.NDArray[np.int32],
    grid: Grid,
    *,
    case_id: str,
    seed: int,
    signed_pixels: bool,
    age: int | None,
    description: str,
) -> dict[str, str]:
    """Write ``CT_0001.dcm`` ... (slice k -> InstanceNumber k + 1); returns the series UIDs.

    ``hu`` holds integer Hounsfield units. ``signed_pixels``: int16 with RescaleIntercept 0,
    else uint16 (12 bits stored) with RescaleIntercept -1024.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uids = case_uids(case_id, seed)
    dk, dj, di = grid.spacing
    intercept = 0 if signed_pixels else -1024
    day = 1 + seed % 28
    date = f"2024{1 + seed % 12:02d}{day:02d}"
    for k, z in enumerate(grid.zs()):
        sop = generate_uid(
            entropy_srcs=["llmctv-independent-phantom", case_id, str(seed), "sop", str(k)]
        )
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = folder / f"CT_{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = uids["study"]
        ds.SeriesInstanceUID = uids["series"]
        ds.FrameOfReferenceUID = uids["frame_of_reference"]
        ds.PatientName = f"INDEP^{case_id}"
        ds.PatientID = f"INDEP^{case_id}"
        ds.PatientSex = "F"
        if age is not None:
            ds.PatientAge = f"{age:03d}Y"
        ds.PatientPosition = "HFS"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
        ds.StudyID = case_id[:16]
        ds.AccessionNumber = case_id[:16]
        ds.Modality = "CT"
        ds.Manufacturer = "llmctv independent phantom"
        ds.SeriesDescription = description[:64]
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.ImagePositionPatient = [
            ds_number(grid.origin[0]),
            ds_number(grid.origin[1]),
            ds_number(float(z)),
        ]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = ds_number(float(z))
        ds.PixelSpacing = [ds_number(dj), ds_number(di)]
        ds.SliceThickness = ds_number(dk)
        ds.SpacingBetweenSlices = ds_number(dk)
        ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if signed_pixels else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed_pixels else 0
        ds.RescaleIntercept = str(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        stored = hu[k] - intercept
        dtype = np.dtype("<i2") if signed_pixels else np.dtype("<u2")
        ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return uids
