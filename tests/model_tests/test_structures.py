"""Tests of model.dicom.rtstruct.reader: reading RTSTRUCTs, ROI rules, rasterisation (LPS mm)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from factories import BREAST_DIR, LUNG1_DIR, make_rtstruct
from matplotlib.path import Path as MplPath
from pydicom.uid import generate_uid

from model.dicom.rtstruct.reader import (
    RoiRule,
    StructureSet,
    parse_structure_set,
    rasterize,
    read_structure_set,
)
from model.dicom.series import CtSeries, read_ct_series
from model.errors import (
    ConfigurationError,
    RoiNotFoundError,
    StructureSetError,
    UnreadableDicomError,
)
from model.imaging.geometry import Grid

FRAME = generate_uid()
GRID = Grid(shape=(3, 10, 12), origin=(0.0, 0.0, 0.0), spacing=(2.0, 1.0, 1.0))


def square(x0: float, x1: float, y0: float, y1: float, z: float) -> npt.NDArray[np.float64]:
    """Closed square contour (LPS mm), counter-clockwise in x/y."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def structures(rois: dict[str, list[npt.NDArray[np.float64]]], **kw: object) -> StructureSet:
    return parse_structure_set(make_rtstruct(FRAME, rois, **kw))  # type: ignore[arg-type]


def box(
    k: int, j: tuple[int, int], i: tuple[int, int], shape: tuple[int, ...] = GRID.shape
) -> npt.NDArray[np.bool_]:
    mask = np.zeros(shape, dtype=bool)
    mask[k, j[0] : j[1], i[0] : i[1]] = True
    return mask


# --- rasterisation on synthetic contours -------------------------------------------------------
def test_square_on_voxel_boundaries() -> None:
    ss = structures({"CTV": [square(1.5, 5.5, 2.5, 6.5, 2.0)]})
    mask = rasterize(ss, "CTV", GRID)
    np.testing.assert_array_equal(mask, box(1, (3, 7), (2, 6)))


def test_even_odd_hole_and_island() -> None:
    outer = square(0.5, 9.5, 0.5, 8.5, 2.0)
    hole = square(2.5, 6.5, 2.5, 5.5, 2.0)
    island = square(3.5, 4.5, 3.5, 4.5, 2.0)  # inside the hole: filled again
    mask = rasterize(structures({"CTV": [outer, hole, island]}), "CTV", GRID)
    expected = box(1, (1, 9), (1, 10)) ^ box(1, (3, 6), (3, 7)) ^ box(1, (4, 5), (4, 5))
    np.testing.assert_array_equal(mask, expected)
    assert not mask[1, 3, 3]
    assert mask[1, 4, 4]


def test_rois_combine_by_union_not_xor() -> None:
    ss = structures(
        {"CTV1": [square(0.5, 9.5, 0.5, 8.5, 2.0)], "CTV2": [square(2.5, 6.5, 2.5, 5.5, 2.0)]}
    )
    np.testing.assert_array_equal(rasterize(ss, ["CTV1", "CTV2"], GRID), box(1, (1, 9), (1, 10)))


def test_centres_exactly_on_edges_belong_to_low_index_side() -> None:
    # Edges through voxel centres: x in [2, 5], y in [3, 6] keeps i = 2..4, j = 3..5.
    mask = rasterize(structures({"CTV": [square(2.0, 5.0, 3.0, 6.0, 2.0)]}), "CTV", GRID)
    np.testing.assert_array_equal(mask, box(1, (3, 6), (2, 5)))
    # Clockwise order gives the same voxels.
    clockwise = square(2.0, 5.0, 3.0, 6.0, 2.0)[::-1]
    np.testing.assert_array_equal(rasterize(structures({"C": [clockwise]}), "C", GRID), mask)


def test_polygons_sharing_an_edge_share_no_voxel() -> None:
    left, right = square(1.0, 4.0, 1.0, 7.0, 0.0), square(4.0, 9.0, 1.0, 7.0, 0.0)
    ss = structures({"L": [left], "R": [right]})
    a, b = rasterize(ss, "L", GRID), rasterize(ss, "R", GRID)
    assert not np.any(a & b)
    np.testing.assert_array_equal(a | b, rasterize(ss, ["L", "R"], GRID))
    assert np.count_nonzero(a | b) == 8 * 6


def test_matches_brute_force_point_in_polygon() -> None:
    grid = Grid(shape=(4, 40, 50), origin=(-12.3, 40.1, -7.0), spacing=(2.5, 0.8, 0.7))
    rng = np.random.default_rng(7)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(6, 18, 40)
    ji = np.column_stack([20 + radii * np.sin(angles), 25 + radii * np.cos(angles)])
    kji = np.column_stack([np.full(len(ji), 2.0), ji])
    lps = grid.index_to_lps(kji)
    mask = rasterize(structures({"CTV": [lps]}), "CTV", grid)
    jj, ii = np.mgrid[0:40, 0:50]
    inside = MplPath(ji).contains_points(np.column_stack([jj.ravel(), ii.ravel()]))
    np.testing.assert_array_equal(mask[2], inside.reshape(40, 50))
    assert not mask[[0, 1, 3]].any()


def test_contour_goes_to_nearest_slice() -> None:
    ss = structures(
        {"A": [square(1.5, 3.5, 1.5, 3.5, 2.0 * 1.4)], "B": [square(1.5, 3.5, 1.5, 3.5, 2.0 * 1.6)]}
    )
    assert rasterize(ss, "A", GRID)[1].any()
    assert rasterize(ss, "B", GRID)[2].any()


def test_partly_outside_grid_is_clipped() -> None:
    ss = structures({"CTV": [square(-5.5, 2.5, 7.5, 20.5, 0.0), square(1.5, 3.5, 1.5, 3.5, 40.0)]})
    mask = rasterize(ss, "CTV", GRID)
    np.testing.assert_array_equal(mask, box(0, (8, 10), (0, 3)))


def test_off_grid_contours_are_dropped_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    ss = structures({"CTV": [square(1.5, 3.5, 1.5, 3.5, 2.0), square(1.5, 3.5, 1.5, 3.5, 30.0)]})
    with caplog.at_level(logging.WARNING, logger="model.dicom.rtstruct.reader"):
        mask = rasterize(ss, "CTV", GRID)
    assert np.count_nonzero(mask) == 4
    assert "1 of 2 contours" in caplog.text


def test_all_contours_off_grid_is_an_error() -> None:
    ss = structures({"CTV": [square(1.5, 3.5, 1.5, 3.5, 300.0)]})
    with pytest.raises(StructureSetError):
        rasterize(ss, "CTV", GRID)


def test_non_planar_contour_is_an_error() -> None:
    tilted = square(1.5, 3.5, 1.5, 3.5, 0.0)
    tilted[2:, 2] = 4.0
    with pytest.raises(StructureSetError):
        rasterize(structures({"CTV": [tilted]}), "CTV", GRID)


def test_frame_of_reference_mismatch() -> None:
    ss = structures({"CTV": [square(1.5, 3.5, 1.5, 3.5, 2.0)]})
    assert rasterize(ss, "CTV", GRID, frame_of_reference_uid=FRAME).any()
    with pytest.raises(StructureSetError):
        rasterize(ss, "CTV", GRID, frame_of_reference_uid=generate_uid())


def test_rois_sharing_a_name_all_count() -> None:
    ds = make_rtstruct(
        FRAME, {"A": [square(1.5, 3.5, 1.5, 3.5, 2.0)], "B": [square(5.5, 7.5, 1.5, 3.5, 2.0)]}
    )
    ds.StructureSetROISequence[1].ROIName = "A"
    assert np.count_nonzero(rasterize(parse_structure_set(ds), "A", GRID)) == 8


def test_unknown_roi_name() -> None:
    with pytest.raises(RoiNotFoundError):
        rasterize(structures({"CTV": [square(1.5, 3.5, 1.5, 3.5, 2.0)]}), "PTV", GRID)


# --- reading -----------------------------------------------------------------------------------
def test_read_from_file(tmp_path: Path) -> None:
    series = generate_uid()
    ds = make_rtstruct(
        FRAME,
        {"CTV_1": [square(1.5, 3.5, 1.5, 3.5, 2.0)], "Heart": []},
        types={"Heart": "ORGAN"},
        series_uid=series,
    )
    ds.save_as(tmp_path / "rs.dcm", enforce_file_format=True)
    ss = read_structure_set(tmp_path / "rs.dcm")
    assert ss.roi_names == ("CTV_1", "Heart")
    assert ss.frame_of_reference_uid == FRAME
    assert ss.referenced_series_instance_uid == series
    ctv = ss.roi("CTV_1")
    assert (ctv.number, ctv.interpreted_type, ctv.color) == (1, "CTV", (255, 0, 1))
    np.testing.assert_allclose(ctv.contours[0].points, square(1.5, 3.5, 1.5, 3.5, 2.0))
    assert ss.roi("Heart").contours == ()


def test_read_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(UnreadableDicomError):
        read_structure_set(tmp_path / "x.txt")
    ds = make_rtstruct(FRAME, {})
    ds.Modality = "CT"
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    with pytest.raises(StructureSetError):
        read_structure_set(tmp_path / "ct.dcm")


# --- ROI rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [("CTV", True), ("ctv_breast_L", True), ("CTVn", True), ("PTV", False), ("zCTV", False)],
)
def test_default_rule(name: str, expected: bool) -> None:
    assert RoiRule().matches(name) is expected


def test_rule_include_exclude_and_types() -> None:
    rule = RoiRule(include=(r"^ctv", r"tumou?r bed"), exclude=(r"block", r"_old$"))
    assert rule.matches("Tumor Bed")
    assert rule.matches("ctv_p")
    assert not rule.matches("Tumor Bed Block")
    assert not rule.matches("CTV_old")
    assert RoiRule(include="^gtv").include == ("^gtv",)  # type: ignore[arg-type]
    assert RoiRule(include=(), interpreted_types=("ctv",)).matches("Boost", "CTV")
    with pytest.raises(ConfigurationError):
        RoiRule(include=("([",))


def test_rule_select() -> None:
    ss = structures(
        {
            "CTV_a": [square(1.5, 3.5, 1.5, 3.5, 2.0)],
            "CTV_empty": [],
            "Lung": [square(1.5, 3.5, 1.5, 3.5, 2.0)],
        }
    )
    assert [r.name for r in RoiRule().select(ss)] == ["CTV_a"]
    with pytest.raises(RoiNotFoundError, match="no contours"):
        RoiRule(include=("empty",)).select(ss)
    with pytest.raises(RoiNotFoundError):
        RoiRule(include=("^ptv",)).select(ss)


# --- real structure sets -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lung1() -> tuple[CtSeries, StructureSet]:
    if not (LUNG1_DIR / "mask_rtstruct").is_dir():
        pytest.skip(f"LUNG1 test data not found at {LUNG1_DIR}")
    ct = read_ct_series(LUNG1_DIR / "image")
    return ct, read_structure_set(next((LUNG1_DIR / "mask_rtstruct").glob("*.dcm")))


def _centroid_lps(mask: npt.NDArray[np.bool_], grid: Grid) -> npt.NDArray[np.float64]:
    return grid.index_to_lps(np.argwhere(mask).mean(axis=0))


def test_lung1_rois(lung1: tuple[CtSeries, StructureSet]) -> None:
    ct, ss = lung1
    assert set(ss.roi_names) == {"GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"}
    assert ss.frame_of_reference_uid == ct.frame_of_reference_uid
    assert ss.referenced_series_instance_uid == ct.series_instance_uid


def test_lung1_gtv_and_lungs(lung1: tuple[CtSeries, StructureSet]) -> None:
    ct, ss = lung1
    grid, frame = ct.volume.grid, ct.frame_of_reference_uid
    gtv = rasterize(ss, "GTV-1", grid, frame_of_reference_uid=frame)
    left = rasterize(ss, "Lung-Left", grid, frame_of_reference_uid=frame)
    right = rasterize(ss, "Lung-Right", grid, frame_of_reference_uid=frame)
    gtv_cc = np.count_nonzero(gtv) * float(np.prod(grid.spacing)) / 1000.0
    assert 120.0 < gtv_cc < 200.0  # about 156 cc
    lungs = np.argwhere(left | right)
    assert np.all(np.argwhere(gtv).min(axis=0) >= lungs.min(axis=0))
    assert np.all(np.argwhere(gtv).max(axis=0) <= lungs.max(axis=0))
    assert _centroid_lps(left, grid)[0] > 50.0 > -50.0 > _centroid_lps(right, grid)[0]
    assert float(ct.volume.array[left | right].mean()) < -600.0
    assert not np.any(left & right)


@pytest.fixture(scope="module")
def breast() -> StructureSet:
    if not (BREAST_DIR / "rtss.dcm").is_file():
        pytest.skip(f"breast example not found at {BREAST_DIR}")
    return read_structure_set(BREAST_DIR / "rtss.dcm")


def test_breast_example_reads(breast: StructureSet) -> None:
    assert {"BODY", "Breast", "Heart", "Lt Lung", "Tumor Bed", "Tumor Bed Block"} <= set(
        breast.roi_names
    )
    assert breast.roi("Tumor Bed").interpreted_type == "CTV"
    assert len(breast.roi("BODY").contours) == 141


def test_breast_rules_pick_ctv(breast: StructureSet) -> None:
    by_type = RoiRule(include=(), interpreted_types=("CTV",))
    assert [r.name for r in by_type.select(breast)] == ["Borders", "Tumor Bed"]
    by_name = RoiRule(include=(r"^ctv", r"tumou?r bed"), exclude=(r"block",))
    assert [r.name for r in by_name.select(breast)] == ["Tumor Bed"]
    with pytest.raises(RoiNotFoundError):
        RoiRule().select(breast)


def test_breast_tumour_bed_rasterises_inside_body(breast: StructureSet) -> None:
    z = np.concatenate([c.points[:, 2] for c in breast.roi("BODY").contours])
    grid = Grid(
        shape=(round(float(z.max() - z.min()) / 3.0) + 1, 512, 512),
        origin=(-275.0, -524.0, float(z.min())),
        spacing=(3.0, 1.074219, 1.074219),
    )
    body = rasterize(breast, "BODY", grid)
    bed = rasterize(breast, "Tumor Bed", grid)
    bed_cc = np.count_nonzero(bed) * float(np.prod(grid.spacing)) / 1000.0
    assert 5.0 < bed_cc < 500.0
    assert np.count_nonzero(bed & ~body) <= 0.01 * np.count_nonzero(bed)
    assert _centroid_lps(bed, grid)[0] > 0  # a left-sided tumour bed


def test_round_trip_with_the_writer_tracing() -> None:
    contours = pytest.importorskip(
        "model.dicom.rtstruct.polygons", reason="RTSTRUCT writer not present"
    )
    from scipy import ndimage

    grid = Grid(shape=(5, 40, 50), origin=(-12.3, 40.1, -7.0), spacing=(2.5, 0.8, 0.7))
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random(grid.shape) > 0.45)
    mask[:, :, 0] = True  # touches the grid edge
    points = [
        grid.index_to_lps(np.column_stack([np.full(len(ji), k), ji]))
        for k in range(grid.shape[0])
        for ji in contours.mask_to_polygons(mask[k])
    ]
    ss = parse_structure_set(make_rtstruct(FRAME, {"CTV": points}))
    np.testing.assert_array_equal(rasterize(ss, "CTV", grid), mask)
