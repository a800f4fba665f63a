"""RTSTRUCT writer: geometry round trips, tags, and checks by tools written elsewhere
(dciodvfy from dicom3tools, plastimatch, rt-utils)."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from dicom_tools import dciodvfy_errors, needs_dciodvfy, needs_plastimatch, plastimatch_mask
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage
from rtstruct_factories import (
    LUNG1_CT,
    dice,
    ellipsoid,
    hole_and_islands_slice,
    lung1_lungs_mask,
    make_ct_series,
    read_headers,
    read_mha_on_grid,
    roi_mask_from_rtstruct,
)

from model.dicom.rtstruct import (
    ReferencedSeries,
    RoiGenerationAlgorithm,
    RoiInterpretedType,
    RoiSpec,
    WriterInfo,
    build_rtstruct,
    roi_color,
    write_rtstruct,
)
from model.dicom.rtstruct.polygons import corner_loops, mask_to_polygons, polygons_to_mask
from model.errors import (
    ConfigurationError,
    DicomError,
    MissingSlicesError,
    MixedSeriesError,
    StructureSetWriteError,
)

INFO = WriterInfo(
    model_name="llmctv-test-model",
    software_versions=("llmctv 0.1.0", "checkpoint sha256:0123abcd"),
    roi_name_suffix=" (AI)",
)
ORIENTATIONS = {
    "axial_hfs": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "axial_hfp": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "oblique": (
        (np.cos(0.5), np.sin(0.5), 0.0),
        (-np.sin(0.5) * np.cos(0.3), np.cos(0.5) * np.cos(0.3), np.sin(0.3)),
    ),
}
needs_lung1 = pytest.mark.skipif(not LUNG1_CT.is_dir(), reason=f"shared data absent: {LUNG1_CT}")


# --- contour geometry ------------------------------------------------------------------------
def _check_polygons(mask: npt.NDArray[np.bool_]) -> int:
    polygons = mask_to_polygons(mask)
    for polygon in polygons:
        steps = np.diff(np.vstack([polygon, polygon[:1]]), axis=0)
        assert np.all(np.mod(polygon, 1.0) == 0.5), "vertices must be voxel corners"
        assert np.all((steps[:, 0] == 0) ^ (steps[:, 1] == 0)), "edges must follow voxel edges"
        turns = steps[:, 0] * np.roll(steps, -1, axis=0)[:, 1]
        turns -= steps[:, 1] * np.roll(steps, -1, axis=0)[:, 0]
        assert np.all(turns != 0), "only corners are kept"
        assert len(np.unique(polygon, axis=0)) == len(polygon), "polygons are simple"
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)
    return len(polygons)


def test_every_3x3_mask_round_trips_exactly() -> None:
    for bits in range(1 << 9):
        _check_polygons(np.array([(bits >> b) & 1 for b in range(9)], dtype=bool).reshape(3, 3))


def test_random_masks_round_trip_exactly() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(1, 30, size=2))
        _check_polygons(rng.random(shape) < rng.random())


def test_hole_islands_and_diagonal_voxels_give_separate_contours() -> None:
    mask = hole_and_islands_slice((18, 18))
    # ring outline, hole, island in the hole, second island, two corner-touching voxels
    assert _check_polygons(mask) == 6
    loops = corner_loops(mask)
    single = [loop for loop in loops if len(loop) == 4 and np.ptp(loop[:, 0]) == 1]
    assert len(single) == 2
    assert len({tuple(p) for p in single[0]} & {tuple(p) for p in single[1]}) == 1


# --- synthetic CT ------------------------------------------------------------------------------
def _synthetic_mask(shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    mask = np.zeros(shape, dtype=bool)
    for k in range(1, shape[0] - 1):
        mask[k] = hole_and_islands_slice(shape[1:])
    mask[-1, 5, 7] = True
    return mask


@pytest.fixture(params=sorted(ORIENTATIONS))
def synthetic(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[Dataset]]:
    row, col = ORIENTATIONS[request.param]
    folder = tmp_path / "ct"
    datasets = make_ct_series(folder, row=row, col=col)
    return folder, datasets


def _write_synthetic(folder: Path, tmp_path: Path) -> tuple[Path, ReferencedSeries, np.ndarray]:
    headers = read_headers(folder)
    reference = ReferencedSeries.from_datasets(headers[::-1])
    mask = _synthetic_mask(reference.grid.shape)
    rois = [
        RoiSpec("CTV", mask),
        RoiSpec("Empty", np.zeros_like(mask), RoiInterpretedType.ORGAN, color=(1, 2, 3)),
    ]
    path = tmp_path / "rtss.dcm"
    write_rtstruct(path, reference, rois, INFO, created=datetime(2024, 5, 6, 7, 8, 9))
    return path, reference, mask


def test_synthetic_round_trip_tags_and_geometry(
    synthetic: tuple[Path, list[Dataset]], tmp_path: Path
) -> None:
    folder, ct = synthetic
    path, reference, mask = _write_synthetic(folder, tmp_path)
    ds = pydicom.dcmread(path)
    first = ct[0]
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == RTStructureSetStorage
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "RTSTRUCT"
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "FrameOfReferenceUID",
    ):
        assert ds[keyword].value == first[keyword].value, keyword
    assert ds.SeriesInstanceUID not in {first.SeriesInstanceUID, ds.SOPInstanceUID}
    assert ds.InstanceCreationDate == ds.StructureSetDate == "20240506"
    assert ds.InstanceCreationTime == ds.StructureSetTime == "070809"
    assert ds.ApprovalStatus == "UNAPPROVED"
    assert ds.Manufacturer == "llmctv"
    assert ds.ManufacturerModelName == INFO.model_name
    assert list(ds.SoftwareVersions) == list(INFO.software_versions)
    assert "AI-generated" in ds.SeriesDescription
    assert 0 < len(ds.StructureSetLabel) <= 16

    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    listed = [item.ReferencedSOPInstanceUID for item in series.ContourImageSequence]
    assert listed == list(reference.sop_instance_uids)
    assert sorted(listed) == sorted(d.SOPInstanceUID for d in ct)

    names = [item.ROIName for item in ds.StructureSetROISequence]
    assert names == ["CTV (AI)", "Empty (AI)"]
    for item in ds.StructureSetROISequence:
        assert item.ReferencedFrameOfReferenceUID == first.FrameOfReferenceUID
        assert item.ROIGenerationAlgorithm == RoiGenerationAlgorithm.AUTOMATIC
    types = [item.RTROIInterpretedType for item in ds.RTROIObservationsSequence]
    assert types == ["CTV", "ORGAN"]
    ctv, empty = ds.ROIContourSequence
    assert [int(c) for c in ctv.ROIDisplayColor] == list(roi_color("CTV"))
    assert [int(c) for c in empty.ROIDisplayColor] == [1, 2, 3]
    assert "ContourSequence" not in empty

    ds_raw = pydicom.dcmread(path)
    for contour in ds_raw.ROIContourSequence[0].ContourSequence:
        raw = contour.get_item(0x30060050)
        values = bytes(raw.value).rstrip(b" ").split(b"\\")
        assert max(len(v) for v in values) <= 16
        assert len(values) == 3 * int(contour.NumberOfContourPoints)
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        assert len(contour.ContourImageSequence) == 1
    # each contour lies on the plane of the slice it names; the mask comes back exactly
    back = roi_mask_from_rtstruct(ds, "CTV (AI)", reference, check_slices=True)
    np.testing.assert_array_equal(back, mask)
    assert not roi_mask_from_rtstruct(ds, "Empty (AI)", reference).any()


def test_dates_and_times_are_valid(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "ct")
    reference = ReferencedSeries.from_datasets(read_headers(tmp_path / "ct"))
    rois = [RoiSpec("CTV", _synthetic_mask(reference.grid.shape))]
    ds = build_rtstruct(reference, rois, INFO)
    for keyword in ("InstanceCreationDate", "StructureSetDate", "SeriesDate", "StudyDate"):
        assert re.fullmatch(r"\d{8}", ds[keyword].value), keyword
    for keyword in ("InstanceCreationTime", "StructureSetTime", "SeriesTime", "StudyTime"):
        assert re.fullmatch(r"\d{6}(\.\d+)?", ds[keyword].value), keyword


def test_in_memory_dataset_matches_the_file(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "ct")
    reference = ReferencedSeries.from_datasets(read_headers(tmp_path / "ct"))
    rois = [RoiSpec("CTV", _synthetic_mask(reference.grid.shape))]
    built = write_rtstruct(tmp_path / "rtss.dcm", reference, rois, INFO)
    read = pydicom.dcmread(tmp_path / "rtss.dcm")
    assert not list(tmp_path.glob("*.partial"))
    pairs = zip(
        built.ROIContourSequence[0].ContourSequence,
        read.ROIContourSequence[0].ContourSequence,
        strict=True,
    )
    for ours, theirs in pairs:
        assert [float(v) for v in ours.ContourData] == [float(v) for v in theirs.ContourData]
    np.testing.assert_array_equal(
        roi_mask_from_rtstruct(built, "CTV (AI)", reference), rois[0].mask
    )


def test_colours_are_deterministic_and_names_differ() -> None:
    assert roi_color("CTV") == roi_color("CTV")
    assert roi_color("CTV") != roi_color("CTV breast")
    assert all(0 <= c <= 255 for c in roi_color("anything"))


def test_from_datasets_sorts_along_the_normal(tmp_path: Path) -> None:
    ct = make_ct_series(tmp_path / "ct", row=(-1.0, 0.0, 0.0), col=(0.0, -1.0, 0.0))
    reference = ReferencedSeries.from_datasets(read_headers(tmp_path / "ct")[::-1])
    # HFP-like orientation: the normal is +z, so k grows with z
    assert reference.sop_instance_uids == tuple(d.SOPInstanceUID for d in ct)
    assert np.all(np.diff(reference.positions_array[:, 2]) > 0)
    assert reference.grid.direction_matrix[0, 0] == -1.0


def test_from_datasets_refuses_mixed_or_incomplete_series(tmp_path: Path) -> None:
    one = read_headers(make_series_folder(tmp_path / "a"))
    two = read_headers(make_series_folder(tmp_path / "b"))
    with pytest.raises(MixedSeriesError):
        ReferencedSeries.from_datasets(one + two[:1])
    other_frame = [copy.deepcopy(d) for d in one]
    other_frame[0].FrameOfReferenceUID = "1.2.3.4"
    with pytest.raises(MixedSeriesError):
        ReferencedSeries.from_datasets(other_frame)
    missing = [copy.deepcopy(d) for d in one]
    del missing[2].ImagePositionPatient
    with pytest.raises(DicomError):
        ReferencedSeries.from_datasets(missing)
    gap = [d for n, d in enumerate(one) if n != 2]
    with pytest.raises(MissingSlicesError):
        ReferencedSeries.from_datasets(gap)


def make_series_folder(folder: Path) -> Path:
    make_ct_series(folder)
    return folder


def test_invalid_inputs_raise_clear_errors(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "ct")
    reference = ReferencedSeries.from_datasets(read_headers(tmp_path / "ct"))
    mask = _synthetic_mask(reference.grid.shape)
    with pytest.raises(ConfigurationError, match="16"):
        WriterInfo(model_name="m", software_versions=("v",), structure_set_label="x" * 17)
    with pytest.raises(ConfigurationError):
        WriterInfo(model_name="m", software_versions=())
    with pytest.raises(StructureSetWriteError, match="shape"):
        build_rtstruct(reference, [RoiSpec("CTV", mask[:, :-1])], INFO)
    with pytest.raises(StructureSetWriteError, match="twice"):
        build_rtstruct(reference, [RoiSpec("CTV", mask), RoiSpec("ctv", mask)], INFO)
    with pytest.raises(StructureSetWriteError, match="64"):
        build_rtstruct(reference, [RoiSpec("x" * 62, mask)], INFO)
    with pytest.raises(StructureSetWriteError, match="boolean"):
        RoiSpec("CTV", mask.astype(float))
    with pytest.raises(StructureSetWriteError, match="color"):
        RoiSpec("CTV", mask, color=(0, 0, 256))
    with pytest.raises(StructureSetWriteError):
        build_rtstruct(reference, [], INFO)
    assert RoiSpec("CTV", mask.astype(np.uint8)).mask.dtype == np.bool_


# --- tools written elsewhere -------------------------------------------------------------------
@needs_dciodvfy
def test_dciodvfy_finds_no_errors_synthetic(
    synthetic: tuple[Path, list[Dataset]], tmp_path: Path
) -> None:
    path, _, _ = _write_synthetic(synthetic[0], tmp_path)
    assert dciodvfy_errors(path) == []


@needs_plastimatch
def test_plastimatch_rasterises_synthetic_back(
    synthetic: tuple[Path, list[Dataset]], tmp_path: Path
) -> None:
    path, reference, mask = _write_synthetic(synthetic[0], tmp_path)
    image = plastimatch_mask(path, synthetic[0], tmp_path / "pl", "CTV (AI)")
    assert dice(read_mha_on_grid(image, reference.grid), mask) >= 0.98


# --- real LUNG1 CT -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lung1() -> tuple[ReferencedSeries, npt.NDArray[np.bool_]]:
    if not LUNG1_CT.is_dir():
        pytest.skip(f"shared data absent: {LUNG1_CT}")
    reference = ReferencedSeries.from_datasets(read_headers(LUNG1_CT))
    lungs = lung1_lungs_mask(reference)
    # a hollow in each lung: islands (left, right) with holes on the middle slices
    k, j, i = np.nonzero(lungs)
    hollows = np.zeros_like(lungs)
    for side in (i < lungs.shape[2] // 2, i >= lungs.shape[2] // 2):
        centre = reference.grid.index_to_lps([k[side].mean(), j[side].mean(), i[side].mean()])
        hollows |= ellipsoid(reference.grid, centre, (25.0, 30.0, 40.0))
    return reference, lungs & ~hollows


@pytest.fixture(scope="module")
def lung1_file(
    lung1: tuple[ReferencedSeries, npt.NDArray[np.bool_]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    reference, mask = lung1
    path = tmp_path_factory.mktemp("lung1") / "rtss.dcm"
    info = WriterInfo(model_name="llmctv-test", software_versions=("llmctv 0.1.0",))
    write_rtstruct(path, reference, [RoiSpec("CTV", mask)], info)
    return path


@needs_lung1
def test_lung1_has_holes_and_two_islands_and_round_trips(
    lung1: tuple[ReferencedSeries, npt.NDArray[np.bool_]], lung1_file: Path
) -> None:
    reference, mask = lung1
    ds = pydicom.dcmread(lung1_file)
    per_slice: dict[str, int] = {}
    for contour in ds.ROIContourSequence[0].ContourSequence:
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        per_slice[uid] = per_slice.get(uid, 0) + 1
    assert max(per_slice.values()) >= 4  # two islands, each with a hole
    back = roi_mask_from_rtstruct(ds, "CTV", reference, check_slices=True)
    np.testing.assert_array_equal(back, mask)


@needs_lung1
@needs_dciodvfy
def test_dciodvfy_finds_no_errors_lung1(lung1_file: Path) -> None:
    assert dciodvfy_errors(lung1_file) == []


@needs_lung1
@needs_plastimatch
def test_plastimatch_rasterises_lung1_back(
    lung1: tuple[ReferencedSeries, npt.NDArray[np.bool_]], lung1_file: Path, tmp_path: Path
) -> None:
    reference, mask = lung1
    image = plastimatch_mask(lung1_file, LUNG1_CT, tmp_path / "pl", "CTV")
    assert dice(read_mha_on_grid(image, reference.grid), mask) >= 0.98


@needs_lung1
def test_rt_utils_reads_lung1_back(
    lung1: tuple[ReferencedSeries, npt.NDArray[np.bool_]], lung1_file: Path
) -> None:
    rt_utils = pytest.importorskip("rt_utils")
    mask = lung1[1]
    struct = rt_utils.RTStructBuilder.create_from(
        dicom_series_path=str(LUNG1_CT), rt_struct_path=str(lung1_file)
    )
    assert struct.get_roi_names() == ["CTV"]
    # rt-utils orders slices along the normal too; its masks are (row, column, slice)
    back = np.moveaxis(struct.get_roi_mask_by_name("CTV"), -1, 0)
    assert dice(back, mask) >= 0.95
