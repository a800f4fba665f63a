"""The CT Image Storage series of a phantom case.

Coordinates: slice ``k`` of the case's ``(k, j, i)`` array becomes one axial image whose
ImagePositionPatient is the LPS position (mm) of voxel ``(k, 0, 0)``;
``ImageOrientationPatient = [1,0,0,0,1,0]``, PixelSpacing = (row spacing, column spacing).
Instance numbers run from the cranial slice (1) to the caudal one, as on most scanners.
Files are Explicit VR Little Endian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
)
from pydicom.valuerep import format_number_as_ds

from model.dicom.part10 import file_meta
from model.lab.phantoms.case import PhantomCase
from model.lab.phantoms.sites import SPEC_VERSION

STUDY_DATE = "20240102"
STUDY_TIME = "090000"
_UNSIGNED_INTERCEPT = -1024


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (no exponent for phantom values)."""
    return format_number_as_ds(float(round(value, 6)))


def storage(case: PhantomCase) -> tuple[int, int, int]:
    """``(PixelRepresentation, BitsStored, RescaleIntercept)`` of the case's site."""
    if case.profile.unsigned_storage:
        return 0, 12, _UNSIGNED_INTERCEPT
    return 1, 16, 0


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    """File meta information: CTImageStorage, Explicit VR Little Endian."""
    return file_meta(CTImageStorage, sop_instance_uid, "LLMCTV_PHANTOM")


def _patient_study(ds: Dataset, case: PhantomCase) -> None:
    """Patient and General Study modules (synthetic identity, fixed date)."""
    ds.PatientName = f"PHANTOM^{case.case_id}"
    ds.PatientID = case.case_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    if case.clinical.age is not None:
        ds.PatientAge = f"{case.clinical.age:03d}Y"
    ds.StudyInstanceUID = case.uids.study
    ds.StudyDate, ds.StudyTime = STUDY_DATE, STUDY_TIME
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Breast RT planning CT (synthetic phantom)"


def _series_equipment(ds: Dataset, case: PhantomCase) -> None:
    """General Series, Frame of Reference and General Equipment modules."""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = case.uids.series
    ds.SeriesNumber = "2"
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, STUDY_TIME
    ds.SeriesDescription = f"Synthetic breast phantom, site {case.site}"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.Manufacturer = "llmctv"
    ds.ManufacturerModelName = f"phantom site {case.site}"
    ds.InstitutionName = f"Synthetic site {case.site}"
    ds.SoftwareVersions = [f"phantom-{SPEC_VERSION}"]
    ds.FrameOfReferenceUID = case.uids.frame_of_reference
    ds.PositionReferenceIndicator = ""


def _acquisition(ds: Dataset, case: PhantomCase) -> None:
    """CT Image and Image Plane attributes shared by all slices (LPS, mm)."""
    dk, dj, di = case.grid.spacing
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = "120"
    ds.SliceThickness = _ds(dk)
    ds.SpacingBetweenSlices = _ds(dk)
    ds.ReconstructionDiameter = _ds(case.grid.shape[2] * di)
    ds.GantryDetectorTilt = "0"
    ds.ConvolutionKernel = "STANDARD"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(dj), _ds(di)]


def _pixels(ds: Dataset, case: PhantomCase, k: int) -> None:
    """Image Pixel module of slice ``k``: stored value = HU - RescaleIntercept."""
    representation, bits_stored, intercept = storage(case)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = case.grid.shape[1], case.grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = representation
    ds.RescaleIntercept = str(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    values = case.hu[k].astype(np.int32) - intercept
    dtype = "<i2" if representation else "<u2"
    ds.PixelData = values.astype(dtype).tobytes()


def ct_slice_dataset(case: PhantomCase, k: int) -> Dataset:
    """The CT image of slice ``k`` (file meta included), ready for writing."""
    nk = case.grid.shape[0]
    uid = case.uids.instances[k]
    x0, y0, _ = case.grid.origin
    z = case.grid.origin[2] + k * case.grid.spacing[0]
    ds = Dataset()
    ds.file_meta = _file_meta(uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = STUDY_DATE, STUDY_TIME
    _patient_study(ds, case)
    _series_equipment(ds, case)
    _acquisition(ds, case)
    ds.AcquisitionNumber = "1"
    extras = case.anatomy.params.extras
    from_feet = extras is not None and extras.numbered_from_feet
    ds.InstanceNumber = str(k + 1 if from_feet else nk - k)
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.SliceLocation = _ds(z)
    _pixels(ds, case, k)
    return ds


def ct_datasets(case: PhantomCase) -> list[Dataset]:
    """All slices of the case, in ``k`` order (caudal to cranial)."""
    return [ct_slice_dataset(case, k) for k in range(case.grid.shape[0])]


def write_ct_series(datasets: list[Dataset], directory: Path) -> list[Path]:
    """Write the slices as ``directory/CT_<instance number>.dcm``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"CT_{int(ds.InstanceNumber):04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
