"""Tests of model.imaging.preprocessing: grids, resampling both ways, HU windowing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from model.errors import ConfigurationError
from model.imaging import source_sampling
from model.imaging.geometry import Grid, Volume
from model.imaging.preprocessing import (
    PreprocessConfig,
    ResamplingPlan,
    plan_resampling,
    preprocess_ct,
    resample_image,
    resample_labels,
    to_source_grid,
)
from model.imaging.source_sampling import (
    MapOnSource,
    NearestOnSource,
    network_box,
    source_box_of,
    source_box_of_network_box,
)

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
# Feet-first-like axial series: columns run toward patient right, slices toward the feet.
FLIPPED = ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
# Axial but with rows and columns swapped (in-plane 90 degree permutation).
PERMUTED = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))

CENTRE = np.array([5.0, 40.0, -50.0])  # LPS mm
SEMI_AXES = np.array([22.0, 16.0, 27.0])  # mm along x, y, z


def _grid(direction: tuple[tuple[float, float, float], ...] = IDENTITY) -> Grid:
    """Anisotropic grid with a non-zero origin, spanning CENTRE in every direction."""
    shape = (40, 90, 70)
    spacing = (2.5, 0.8, 1.3)
    half = np.array([shape[2] * spacing[2], shape[1] * spacing[1], shape[0] * spacing[0]]) / 2
    d = np.asarray(direction)
    origin = CENTRE - d @ half + np.array([0.37, -0.21, 0.6])  # off-centre on purpose
    return Grid(shape, (origin[0], origin[1], origin[2]), spacing, direction)


def _centres(grid: Grid) -> npt.NDArray[np.float64]:
    """LPS mm of every voxel centre, shape (k, j, i, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1)
    return grid.index_to_lps(idx)


def _ellipsoid(grid: Grid) -> npt.NDArray[np.bool_]:
    return np.asarray(np.sum(((_centres(grid) - CENTRE) / SEMI_AXES) ** 2, axis=-1) <= 1.0)


def _dice(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def _centroid(mask: npt.NDArray[np.generic], grid: Grid) -> npt.NDArray[np.float64]:
    return np.asarray(grid.index_to_lps(np.argwhere(mask).astype(np.float64)).mean(axis=0))


# --- planning --------------------------------------------------------------------------------
def test_plan_keeps_origin_direction_and_spans_source() -> None:
    source = Grid((134, 512, 512), (-250.0, -260.0, -400.0), (3.0, 0.977, 0.977))
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    assert plan.target.origin == source.origin
    assert plan.target.direction == source.direction
    assert plan.target.spacing == (3.0, 1.0, 1.0)
    # 511 * 0.977 = 499.25 mm between first and last centres -> 501 one-mm voxels
    assert plan.target.shape == (134, 501, 501)


def test_plan_lps_orientation_is_canonical() -> None:
    source = _grid(FLIPPED)
    plan = plan_resampling(source, (3.0, 1.0, 1.0), orientation="lps")
    assert plan.target.direction == IDENTITY
    corners = source.index_to_lps(np.array([[0, 0, 0], [39, 89, 69]], dtype=float))
    assert plan.target.origin == pytest.approx(tuple(corners.min(axis=0)))


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (3.0, -1.0, 1.0), (3.0, 1.0)])
def test_plan_rejects_bad_spacing(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ConfigurationError):
        plan_resampling(_grid(), spacing)


def test_unknown_orientation_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        plan_resampling(_grid(), (3.0, 1.0, 1.0), orientation="ras")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        PreprocessConfig(orientation="ras")  # type: ignore[arg-type]


# --- coordinates -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("direction", "orientation"),
    [(IDENTITY, "source"), (FLIPPED, "source"), (FLIPPED, "lps"), (PERMUTED, "lps")],
)
def test_lps_coordinates_survive_both_ways(
    direction: tuple[tuple[float, float, float], ...], orientation: str
) -> None:
    """Linear interpolation reproduces linear fields: each voxel's value is its own LPS."""
    source = _grid(direction)
    plan = plan_resampling(source, (3.0, 1.0, 1.0), orientation=orientation)  # type: ignore[arg-type]
    coords = np.moveaxis(_centres(source), -1, 0).astype(np.float32)  # (3, k, j, i)
    forward = resample_image(coords, plan)
    target_centres = _centres(plan.target)
    expected = np.moveaxis(target_centres, -1, 0)
    # target centres beyond the source's last centres take edge values (border replication)
    in_source = source.lps_to_index(target_centres)
    inside = np.all((in_source >= -1e-6) & (in_source <= np.array(source.shape) - 1 + 1e-6), -1)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(forward[:, inside], expected[:, inside], atol=2e-3)
    back = to_source_grid(expected.astype(np.float32), plan)
    # every source centre lies within the target's centres: exact everywhere
    np.testing.assert_allclose(back, np.moveaxis(_centres(source), -1, 0), atol=2e-3)


def test_single_bright_voxel_keeps_its_position() -> None:
    source = _grid()
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    image = np.zeros(source.shape, dtype=np.float32)
    voxel = (17, 41, 29)
    image[voxel] = 1000.0
    forward = resample_image(image, plan)
    peak = np.unravel_index(np.argmax(forward), forward.shape)
    delta = plan.target.index_to_lps(np.array(peak, dtype=float)) - source.index_to_lps(
        np.array(voxel, dtype=float)
    )
    assert np.all(np.abs(delta) <= np.array(plan.target.spacing[::-1]) / 2 + 1e-6)
    back = to_source_grid(forward, plan)
    assert np.unravel_index(np.argmax(back), back.shape) == voxel


# --- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("direction", "orientation"),
    [(IDENTITY, "source"), (FLIPPED, "source"), (FLIPPED, "lps"), (PERMUTED, "lps")],
)
def test_ellipsoid_round_trip(
    direction: tuple[tuple[float, float, float], ...], orientation: str
) -> None:
    source = _grid(direction)
    truth = _ellipsoid(source)
    plan = plan_resampling(source, (3.0, 1.0, 1.0), orientation=orientation)  # type: ignore[arg-type]
    # image path: soft mask forward, probability back
    back = to_source_grid(resample_image(truth.astype(np.float32), plan), plan) >= 0.5
    assert _dice(back, truth) >= 0.97
    assert np.linalg.norm(_centroid(back, source) - _centroid(truth, source)) <= 0.5
    # label path: labels forward, labels back
    labels_back = to_source_grid(resample_labels(truth, plan), plan, mode="nearest")
    assert labels_back.dtype == np.bool_
    assert _dice(labels_back, truth) >= 0.97
    assert np.linalg.norm(_centroid(labels_back, source) - _centroid(truth, source)) <= 0.5


@pytest.mark.parametrize("direction", [IDENTITY, FLIPPED])
def test_network_prediction_lands_on_ct_grid(
    direction: tuple[tuple[float, float, float], ...],
) -> None:
    """A 2-channel probability map drawn on the network grid maps back to the CT in LPS."""
    source = _grid(direction)
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    on_target = _ellipsoid(plan.target).astype(np.float32)
    probs = np.stack([1.0 - on_target, on_target])
    back = to_source_grid(probs, plan)
    assert back.shape == (2, *source.shape)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
    pred = np.argmax(back, axis=0) == 1
    truth = _ellipsoid(source)
    assert _dice(pred, truth) >= 0.97
    assert np.linalg.norm(_centroid(pred, source) - _centroid(truth, source)) <= 0.5


# --- identity and special inputs -------------------------------------------------------------
def test_identity_plan_is_exact_and_copies() -> None:
    source = _grid(FLIPPED)
    plan = plan_resampling(source, source.spacing)
    assert plan.target == source
    rng = np.random.default_rng(0)
    image = rng.normal(size=source.shape).astype(np.float32)
    out = resample_image(image, plan)
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)
    np.testing.assert_array_equal(to_source_grid(image, plan), image)
    labels = rng.integers(0, 4, size=source.shape).astype(np.uint8)
    np.testing.assert_array_equal(resample_labels(labels, plan), labels)


def test_equal_slice_spacing_keeps_slices_exactly() -> None:
    source = Grid((12, 40, 40), (1.0, 2.0, 3.0), (3.0, 0.9, 0.9))
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    image = np.zeros(source.shape, dtype=np.float32)
    image[5] = 7.0
    out = resample_image(image, plan)
    assert out.shape[0] == 12
    np.testing.assert_array_equal(out[5], 7.0)
    assert np.all(out[np.arange(12) != 5] == 0.0)


def test_nearest_ties_do_not_shift_masks() -> None:
    """0.8 mm -> 1 mm puts every fourth target row on a tie; ties must not all go one way."""
    source = Grid((3, 200, 4), (0.0, 0.0, 0.0), (3.0, 0.8, 1.0))
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    shifts = []
    for start in range(40, 60):  # average over the object's phase against both grids
        mask = np.zeros(source.shape, dtype=bool)
        mask[:, start : start + 100] = True
        moved = _centroid(resample_labels(mask, plan), plan.target) - _centroid(mask, source)
        shifts.append(moved[1])
    assert abs(np.mean(shifts)) < 0.02


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.bool_])
def test_nearest_labels_only_contain_label_values(dtype: type) -> None:
    source = _grid()
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    rng = np.random.default_rng(1)
    values = np.array([0, 1], dtype=dtype) if dtype is np.bool_ else np.array([0, 3, 7], dtype)
    labels = rng.choice(values, size=source.shape)
    out = resample_labels(labels, plan)
    assert out.dtype == labels.dtype
    assert out.shape == plan.target.shape
    assert set(np.unique(out).tolist()) <= set(values.tolist())
    back = to_source_grid(out, plan, mode="nearest")
    assert back.dtype == labels.dtype
    assert set(np.unique(back).tolist()) <= set(values.tolist())


def test_big_endian_and_negative_strides_match_native() -> None:
    source = _grid()
    plan = plan_resampling(source, (3.0, 1.0, 1.0))
    rng = np.random.default_rng(2)
    image = rng.integers(-1000, 2000, size=source.shape).astype(np.int16)
    expected = resample_image(image, plan)
    np.testing.assert_array_equal(resample_image(image.astype(">i2"), plan), expected)
    reversed_view = image[::-1].copy()[::-1]  # same values, negative stride along k
    np.testing.assert_array_equal(resample_image(reversed_view, plan), expected)


def test_shape_and_mode_errors() -> None:
    plan = plan_resampling(_grid(), (3.0, 1.0, 1.0))
    with pytest.raises(ConfigurationError):
        resample_image(np.zeros((4, 4, 4), dtype=np.float32), plan)
    with pytest.raises(ConfigurationError):
        to_source_grid(np.zeros(plan.source.shape, dtype=np.float32), plan)
    with pytest.raises(ConfigurationError):
        to_source_grid(np.zeros(plan.target.shape, np.float32), plan, mode="cubic")  # type: ignore[arg-type]


# --- intensities -----------------------------------------------------------------------------
def _hu_row(values: list[float]) -> Volume:
    """One row of voxels on a grid the network's spacing keeps exactly (identity plan)."""
    hu = np.array(values, dtype=np.float32).reshape(1, 1, len(values))
    return Volume(hu, Grid((1, 1, len(values)), (0.0, 0.0, 0.0), (3.0, 1.0, 1.0), IDENTITY))


def test_preprocess_ct_clips_and_scales_hu() -> None:
    volume = _hu_row([-3000, -1000, 0, 500, 1000, 3000])
    before = volume.array.copy()
    image, _ = preprocess_ct(volume, PreprocessConfig(hu_window=(-1000.0, 1000.0)))
    assert image.dtype == np.float32
    np.testing.assert_allclose(image.ravel(), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-7)
    soft, _ = preprocess_ct(volume, PreprocessConfig(hu_window=(-160.0, 240.0)))
    np.testing.assert_allclose(soft.ravel()[2], 0.4, atol=1e-7)
    np.testing.assert_array_equal(volume.array, before)  # input untouched


@pytest.mark.parametrize("window", [(100.0, 100.0), (200.0, -200.0), (0.0,)])
def test_bad_hu_window_is_rejected(window: tuple[float, ...]) -> None:
    with pytest.raises(ConfigurationError):
        PreprocessConfig(hu_window=window)  # type: ignore[arg-type]


def test_preprocess_ct() -> None:
    source = _grid()
    hu = np.where(_ellipsoid(source), 40.0, -1000.0).astype(np.float32)
    image, plan = preprocess_ct(Volume(hu, source))
    assert isinstance(plan, ResamplingPlan)
    assert plan.target.spacing == (3.0, 1.0, 1.0)
    assert image.shape == plan.target.shape
    assert image.dtype == np.float32
    assert image.min() >= 0.0
    assert image.max() == pytest.approx(0.52)
    assert PreprocessConfig().target_spacing == (3.0, 1.0, 1.0)


# --- network-grid values at CT voxels -------------------------------------------------------
OBLIQUE = ((0.98, 0.2, 0.0), (-0.2, 0.98, 0.0), (0.0, 0.0, 1.0))


@pytest.mark.parametrize("direction", [IDENTITY, FLIPPED, PERMUTED, OBLIQUE])
@pytest.mark.parametrize("orientation", ["lps", "source"])
def test_nearest_on_source_is_the_nearest_resampling_at_each_voxel(
    direction: tuple[tuple[float, float, float], ...], orientation: str
) -> None:
    """Labels read at CTV voxels are the values the whole nearest resampling puts there,
    ties included (0.8 mm rows against 1 mm: every fourth row is a tie)."""
    source = Grid((40, 90, 70), (3.1, -7.0, 12.0), (2.5, 0.8, 1.0), _unit(direction))
    plan = plan_resampling(source, (3.0, 1.0, 1.0), orientation=orientation)  # type: ignore[arg-type]
    labels = np.random.default_rng(3).integers(0, 6, plan.target.shape).astype(np.uint8)
    whole = to_source_grid(labels, plan, mode="nearest")
    points = np.argwhere(np.random.default_rng(4).random(source.shape) < 0.05)
    found = NearestOnSource(plan)(labels, points)
    assert found.dtype == np.uint8 and np.array_equal(found, whole[tuple(points.T)])
    assert len(NearestOnSource(plan)(labels, points[:0])) == 0


def _unit(direction: tuple[tuple[float, float, float], ...]) -> tuple[tuple[float, ...], ...]:
    d = np.asarray(direction, dtype=float)
    d /= np.linalg.norm(d, axis=0)
    return tuple(tuple(float(v) for v in row) for row in d)


def test_source_box_holds_every_voxel_the_network_box_reaches() -> None:
    source = _grid()
    plan = plan_resampling(source, (3.0, 2.0, 2.0))
    mask = np.zeros(plan.target.shape, dtype=bool)
    mask[4:6, 10:14, 8:9] = True
    reach = network_box(mask, margin=2)
    assert reach == (slice(2, 8), slice(8, 16), slice(6, 11))
    box = source_box_of(mask, plan)
    assert box is not None and box == source_box_of_network_box(reach, plan)
    touched = to_source_grid(mask.astype(np.float32), plan) > 0
    outside = touched.copy()
    outside[box] = False
    assert touched.any() and not outside.any()
    assert network_box(np.zeros_like(mask)) is None and source_box_of(mask & False, plan) is None


@pytest.mark.parametrize("direction", [IDENTITY, FLIPPED, OBLIQUE])
def test_a_map_thresholded_by_chunks_is_the_whole_resampling_thresholded(
    direction: tuple[tuple[float, float, float], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CTV (foreground >= 0.5) from a few CT slices at a time is the whole map's, and
    the map on demand is the whole resampling inside the box, 0 outside."""
    source = Grid((40, 90, 70), (3.1, -7.0, 12.0), (2.5, 0.8, 1.0), _unit(direction))
    plan = plan_resampling(source, (6.0, 4.0, 4.0), orientation="lps")
    values = np.random.default_rng(5).random(plan.target.shape).astype(np.float32)
    values[:, :, :3] = 0.0
    box = source_box_of(values >= 0.25, plan)
    assert box is not None
    whole = np.zeros(source.shape, dtype=np.float32)
    whole[box] = to_source_grid(values, plan)[box]
    monkeypatch.setattr(source_sampling, "_CHUNK_VOXELS", 3 * 90 * 70)  # chunks of 3 slices
    seen = MapOnSource(values, plan, box)
    assert np.array_equal(seen.at_least(0.5), whole >= 0.5)
    assert np.array_equal(seen.full(), whole) and seen.full() is seen.full()
    assert not MapOnSource(values, plan, None).at_least(0.5).any()
