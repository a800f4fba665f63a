"""Test helpers for the RTSTRUCT writer: small synthetic CT series, masks, and an independent
reading of contours back onto the grid (LPS -> index through the Grid, never by flips)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from model.dicom.rtstruct import ReferencedSeries
from model.dicom.rtstruct.polygons import polygons_to_mask
from model.imaging.geometry import Grid

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LUNG1_DIR = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001"
LUNG1_CT = LUNG1_DIR / "image"
LUNG1_RTSTRUCT = LUNG1_DIR / "mask_rtstruct" / "1-1.dcm"


def make_ct_series(
    folder: Path,
    shape: tuple[int, int, int] = (6, 24, 20),
    spacing: tuple[float, float, float] = (2.5, 0.8, 1.1),
    origin: tuple[float, float, float] = (-10.3, 20.7, -31.25),
    row: tuple[float, float, float] = (1.0, 0.0, 0.0),
    col: tuple[float, float, float] = (0.0, 1.0, 0.0),
    patient_name: str = "Test^Phantom",
) -> list[Dataset]:
    """Write a small CT series to ``folder`` (one file per slice, shuffled instance numbers).

    ``spacing`` is ``(dk, dj, di)``; slice ``k`` is at ``origin + k * dk * (row x col)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(row, col)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(shape[0]):
        ds = _ct_slice(shape[1:], spacing, row, col)
        ds.PatientName, ds.PatientID = patient_name, "PHANTOM-001"
        ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101112", "S1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC1", "Doc^Tor"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        position = np.asarray(origin) + k * spacing[0] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.InstanceNumber = str(shape[0] - k)
        ds.save_as(folder / f"ct_{shape[0] - k:03d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def _ct_slice(
    size: Sequence[int],
    spacing: Sequence[float],
    row: Sequence[float],
    col: Sequence[float],
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
    ds.PixelSpacing = [str(spacing[1]), str(spacing[2])]
    ds.SliceThickness = str(spacing[0])
    ds.Rows, ds.Columns = int(size[0]), int(size[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.PositionReferenceIndicator = ""
    ds.PixelData = np.zeros(tuple(size), dtype=np.int16).tobytes()
    return ds


def read_headers(folder: Path) -> list[Dataset]:
    """Headers (no pixels) of every ``*.dcm`` in ``folder``."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def ellipsoid(grid: Grid, centre: npt.ArrayLike, radii: Sequence[float]) -> npt.NDArray:
    """Boolean ``(k, j, i)`` mask of voxels whose centre is inside an LPS ellipsoid (mm)."""
    j, i = np.indices(grid.shape[1:])
    mask = np.zeros(grid.shape, dtype=bool)
    normal = grid.direction_matrix[:, 2]
    for k in range(grid.shape[0]):
        plane = grid.index_to_lps([k, 0, 0]) - np.asarray(centre)
        if abs(float(plane @ normal)) > max(radii):
            continue
        kji = np.stack([np.full_like(j, k), j, i], axis=-1)
        scaled = (grid.index_to_lps(kji) - np.asarray(centre)) / np.asarray(radii)
        mask[k] = np.sum(scaled**2, axis=-1) <= 1.0
    return mask


def hole_and_islands_slice(shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """A 2-D slice with a ring (island with a hole, an island inside the hole), a separate
    island, and two voxels touching only at a corner."""
    mask = np.zeros(shape, dtype=bool)
    mask[2:12, 2:12] = True
    mask[4:10, 4:10] = False  # hole
    mask[6:8, 6:8] = True  # island inside the hole
    mask[2:5, 14:17] = True  # second island
    mask[14, 14] = mask[15, 15] = True  # diagonal neighbours
    return mask


def roi_mask_from_rtstruct(
    ds: Dataset, roi_name: str, reference: ReferencedSeries, *, check_slices: bool = True
) -> npt.NDArray[np.bool_]:
    """Rasterise one ROI of a structure set onto ``reference.grid``: centre-inside, even-odd.

    Points are mapped LPS -> (k, j, i) with ``Grid.lps_to_index``. With ``check_slices``, each
    contour must lie on an integer slice index that matches its ContourImageSequence.
    """
    numbers = {int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi_name}
    if len(numbers) != 1:
        raise KeyError(roi_name)
    number = numbers.pop()
    grid = reference.grid
    by_slice: dict[int, list[npt.NDArray[np.float64]]] = {}
    uid_to_k = {uid: k for k, uid in enumerate(reference.sop_instance_uids)}
    for item in ds.ROIContourSequence:
        if int(item.ReferencedROINumber) != number:
            continue
        for contour in item.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            kji = grid.lps_to_index(points)
            k = round(float(np.mean(kji[:, 0])))
            if check_slices:
                if not np.allclose(kji[:, 0], k, atol=1e-3):
                    raise ValueError("contour not on a slice plane")
                named = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
                if uid_to_k[named] != k:
                    raise ValueError(f"contour on slice {k} names slice {uid_to_k[named]}")
            by_slice.setdefault(k, []).append(kji[:, 1:])
    mask = np.zeros(grid.shape, dtype=bool)
    for k, polygons in by_slice.items():
        if 0 <= k < grid.shape[0]:
            mask[k] = polygons_to_mask(polygons, (grid.shape[1], grid.shape[2]))
    return mask


def dice(a: npt.NDArray, b: npt.NDArray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def lung1_lungs_mask(reference: ReferencedSeries) -> npt.NDArray[np.bool_]:
    """Union of Lung-Left and Lung-Right of the clinical LUNG1-001 structure set."""
    clinical = pydicom.dcmread(LUNG1_RTSTRUCT)
    left = roi_mask_from_rtstruct(clinical, "Lung-Left", reference, check_slices=False)
    right = roi_mask_from_rtstruct(clinical, "Lung-Right", reference, check_slices=False)
    return left | right


def read_mha_on_grid(path: Path, grid: Grid) -> npt.NDArray[np.bool_]:
    """Sample an uncompressed MetaImage (ITK, LPS) at the voxel centres of ``grid``.

    Each ``grid`` voxel centre is mapped to LPS, then into the MetaImage's index space through
    its Offset, ElementSpacing and TransformMatrix (nearest voxel); outside means False.
    """
    raw = path.read_bytes()
    end = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    header = dict(
        line.split(" = ", 1) for line in raw[:end].decode("ascii").splitlines() if " = " in line
    )
    if header.get("CompressedData", "False") != "False" or header["ElementType"] != "MET_UCHAR":
        raise ValueError("expected uncompressed MET_UCHAR data")
    size = [int(v) for v in header["DimSize"].split()]  # x, y, z
    data = np.frombuffer(raw[end:], dtype=np.uint8).reshape(size[::-1])  # (z, y, x)
    offset = np.array([float(v) for v in header["Offset"].split()])
    spacing = np.array([float(v) for v in header["ElementSpacing"].split()])
    # MetaIO writes the direction matrix column by column: columns are the index axes.
    direction = np.array([float(v) for v in header["TransformMatrix"].split()]).reshape(3, 3).T
    lps = grid.index_to_lps(np.moveaxis(np.indices(grid.shape), 0, -1))
    xyz = np.rint(((lps - offset) @ direction) / spacing).astype(np.int64)
    inside = np.all((xyz >= 0) & (xyz < np.array(size)), axis=-1)
    result = np.zeros(grid.shape, dtype=bool)
    x, y, z = (xyz[..., n][inside] for n in range(3))
    result[inside] = data[z, y, x] != 0
    return result
