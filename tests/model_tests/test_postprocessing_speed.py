"""The fast paths of the job (issue 22) give the same results as the plain formulations.

Each fast function is checked against the straightforward numpy/scipy expression it replaced,
voxel for voxel (masks) or bit for bit (floats), on random masks and on a synthetic CT: a body
on a couch with lungs, on grids whose pixel size gives every coarse step and disk radius the
body mask uses, including matrices that are not whole blocks. Arrays are ``(k, j, i)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from model.contouring import consistency, preview
from model.imaging import confidence, plausibility, postprocessing
from model.imaging.geometry import (
    Grid,
    Volume,
    in_plane_morphology,
    in_plane_opening,
    label_components,
    marginal_counts,
    mask_box,
    mask_voxels,
    upsample_blocks,
)

BoolArray = npt.NDArray[np.bool_]
RNG = np.random.default_rng(22)


def _grid(shape: tuple[int, int, int], pixel: float) -> Grid:
    return Grid(shape, (-0.5 * shape[2] * pixel, -0.5 * shape[1] * pixel, 0.0), (3.0, pixel, pixel))


def _thorax(shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    """HU: an elliptic body with two lungs, a couch under it touching it in one place."""
    nk, nj, ni = shape
    jj, ii = np.mgrid[0:nj, 0:ni]
    cj, ci = 0.45 * nj, 0.5 * ni
    body = ((jj - cj) / (0.32 * nj)) ** 2 + ((ii - ci) / (0.42 * ni)) ** 2 <= 1.0
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[:, body] = 40.0
    for side in (-1, 1):
        lung = ((jj - cj) / (0.18 * nj)) ** 2 + ((ii - ci - side * 0.2 * ni) / (0.12 * ni)) ** 2
        hu[2 : nk - 2, lung <= 1.0] = -800.0
    couch = int(0.8 * nj)
    hu[:, couch : couch + 2, int(0.1 * ni) : int(0.9 * ni)] = 200.0
    hu[:, int(0.77 * nj) : couch, int(0.48 * ni) : int(0.52 * ni)] = 40.0  # a thin contact
    hu += RNG.normal(0.0, 60.0, shape).astype(np.float32)
    return hu


def _body_reference(volume: Volume, policy: postprocessing.CleaningPolicy) -> BoolArray:
    """:func:`postprocessing.body_mask` as plain scipy operations and per-voxel indexing."""
    hu = volume.array
    pixel = float(min(volume.grid.spacing[1:]))
    step = max(1, int(postprocessing.COARSE_MM // pixel))
    coarse = hu[:, ::step, ::step] > policy.body_hu
    disk = postprocessing._disk(max(1, round(policy.contact_break_mm / (pixel * step))))
    labels, count = ndimage.label(ndimage.binary_opening(coarse, structure=disk))
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = ndimage.binary_dilation(labels == np.argmax(sizes), structure=disk) & coarse
    region = np.stack([ndimage.binary_fill_holes(s) for s in region])
    ring = postprocessing._disk(1)
    inner = ndimage.binary_erosion(region, structure=ring)
    band = ndimage.binary_dilation(region, structure=ring) & ~inner
    body = np.repeat(np.repeat(inner, step, axis=1), step, axis=2)[:, : hu.shape[1], : hu.shape[2]]
    for k, jc, ic in np.argwhere(band):
        j, i = slice(jc * step, (jc + 1) * step), slice(ic * step, (ic + 1) * step)
        body[k, j, i] = hu[k, j, i] > policy.body_hu
    return np.ascontiguousarray(body)


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 7, 9), (4, 1, 6), (2, 30, 17)])
def test_in_plane_morphology_is_scipys(radius: int, shape: tuple[int, int, int]) -> None:
    disk = postprocessing._disk(radius)
    for density in (0.2, 0.6, 0.95):
        mask = RNG.random(shape) < density
        erosion = ndimage.binary_erosion(mask, structure=disk)
        dilation = ndimage.binary_dilation(mask, structure=disk)
        assert np.array_equal(in_plane_morphology(mask, disk, erode=True), erosion)
        assert np.array_equal(in_plane_morphology(mask, disk, erode=False), dilation)
        opened = ndimage.binary_opening(mask, structure=disk)
        assert np.array_equal(in_plane_opening(mask, disk), opened)


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 8])
def test_upsampling_repeats_each_coarse_pixel(step: int) -> None:
    for shape in [(2, 16, 16), (3, 17, 23), (2, 9, 31)]:
        coarse = RNG.random((shape[0], -(-shape[1] // step), -(-shape[2] // step))) < 0.5
        plain = np.repeat(np.repeat(coarse, step, axis=1), step, axis=2)
        fine = upsample_blocks(coarse, step, shape)
        assert fine.flags.c_contiguous
        assert np.array_equal(fine, plain[:, : shape[1], : shape[2]])


@pytest.mark.parametrize("pixel", [0.7, 0.98, 1.3, 2.0, 2.2, 4.5])
@pytest.mark.parametrize("matrix", [128, 150])
def test_body_mask_and_midline_as_the_plain_formulation(pixel: float, matrix: int) -> None:
    """Every coarse step (1 to 5) and contact disk (radius 1 to 3); whole blocks or not."""
    shape = (8, matrix, matrix + 6)
    volume = Volume(_thorax(shape), _grid(shape, pixel))
    policy = postprocessing.CleaningPolicy()
    body = postprocessing.body_mask(volume, policy)
    reference = _body_reference(volume, policy)
    assert body.flags.c_contiguous and np.array_equal(body, reference)
    total = reference.sum()
    centre = [
        float(np.dot(reference.sum(axis=tuple(a for a in range(3) if a != axis)), np.arange(n)))
        / total
        for axis, n in enumerate(shape)
    ]
    plain_mid = float(volume.grid.index_to_lps(np.array(centre))[0])
    assert postprocessing.midline_x(body, volume.grid) == plain_mid


def test_mask_box_and_marginal_counts() -> None:
    assert mask_box(np.zeros((3, 4, 5), dtype=bool)) is None
    for shape, density in [((3, 4, 5), 0.05), ((300, 3, 8), 0.9), ((20, 30, 40), 0.001)]:
        mask = RNG.random(shape) < density
        mask[min(2, shape[0] - 1), 1, 2] = True
        where = np.argwhere(mask)
        box = mask_box(mask)
        assert box == tuple(
            slice(int(lo), int(hi) + 1)
            for lo, hi in zip(where.min(axis=0), where.max(axis=0), strict=True)
        )
        assert np.array_equal(mask_voxels(mask, box), where)
        assert np.array_equal(mask_voxels(mask), where)
        counts = marginal_counts(mask)  # 300 slices: past the 8-bit counters' 255
        for axis, count in enumerate(counts):
            plain = mask.sum(axis=tuple(a for a in range(3) if a != axis))
            assert count.dtype == np.int64 and np.array_equal(count, plain)


def test_first_argmax_is_numpys_with_ties_and_nan() -> None:
    values = RNG.integers(0, 3, (5, 6, 7, 8)).astype(np.float32)  # many ties
    assert np.array_equal(postprocessing._first_argmax(values), np.argmax(values, axis=0))
    values[3, 1, 2, 3] = np.nan
    assert np.array_equal(postprocessing._first_argmax(values), np.argmax(values, axis=0))


@pytest.mark.parametrize("connectivity", [6, 26])
def test_components_are_scipys_labels_in_the_same_order(connectivity: int) -> None:
    """connected-components-3d gives ndimage.label's partition and numbering (the largest
    of equal pieces is the first in raster order, as before), also past 16-bit labels."""
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    for mask in (
        RNG.random((14, 40, 44)) < 0.3,
        RNG.random((9, 33, 31))[:, ::-1] < 0.5,  # a non-contiguous view
        np.zeros((2, 3, 4), dtype=bool),
        np.array([[[True, False, True]]]),  # line-shaped: connected-components-3d raises
        RNG.random((1, 1, 40000)) < 0.5,  # and large
        RNG.random((60, 70, 80)) < 0.3,  # labelled by connected-components-3d
    ):
        labels, count = label_components(mask, connectivity)  # type: ignore[arg-type]
        plain, plain_count = ndimage.label(mask, structure=structure)
        assert count == plain_count and np.array_equal(labels, plain)
    many = np.zeros((1, 600, 600), dtype=bool)
    many[0, ::2, ::2] = True  # 90 000 isolated voxels: past 16 bits
    labels, count = label_components(many, connectivity)  # type: ignore[arg-type]
    assert (
        count == 90000 and labels.max() == 90000 and np.array_equal(labels, ndimage.label(many)[0])
    )


def test_keep_components_as_the_plain_lookup() -> None:
    mask = RNG.random((12, 30, 30)) < 0.3
    anchors = RNG.random(mask.shape) < 0.01
    structure = np.ones((3, 3, 3), dtype=bool)
    labels, _ = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    anchored = np.isin(np.arange(len(sizes)), labels[anchors]) & (sizes > 0)
    largest = int(np.argmax(np.where(anchored, sizes, 0)))
    kept = postprocessing.keep_components(mask, True, 1.0, anchors)
    assert np.array_equal(kept, labels == largest)
    several = postprocessing.keep_components(mask, False, 0.01)
    assert np.array_equal(several, np.isin(labels, np.flatnonzero(sizes >= 0.01 * sizes.max())))


def test_clean_prediction_reads_only_the_union_box() -> None:
    """The same masks and removed volumes as cleaning the whole grid would give."""
    shape = (10, 64, 70)
    volume = Volume(_thorax(shape), _grid(shape, 3.0))
    body = postprocessing.body_mask(volume)
    union = np.zeros(shape, dtype=bool)
    union[2:8, 10:40, 8:60] = RNG.random((6, 30, 52)) < 0.7
    union[0, 0, 0] = True  # outside the body
    labels = RNG.integers(1, 3, shape).astype(np.uint8)
    cleaned = postprocessing.clean_prediction(volume, union, labels, ("a", "b"), body=body)
    voxel_cc = float(np.prod(volume.grid.spacing)) / 1000.0
    outside = float(np.count_nonzero(union & ~body)) * voxel_cc
    assert cleaned.report.outside_body_cc == round(outside, 2)
    kept = np.zeros(shape, dtype=bool)
    for key, mask in cleaned.structures.items():
        assert not (kept & mask).any()
        kept |= mask
        assert cleaned.boxes[key] == mask_box(mask)  # the mask's own box, for later steps
    assert np.array_equal(cleaned.union, kept)
    islands = float(np.count_nonzero(union & body) - np.count_nonzero(kept)) * voxel_cc
    assert cleaned.report.islands_cc.get("islands", 0.0) == round(islands, 2)


def test_confidence_as_the_whole_grid_formulation() -> None:
    shape = (6, 20, 24)
    grid = _grid(shape, 4.0)
    probs = RNG.dirichlet(np.ones(4), size=shape).astype(np.float32).transpose(3, 0, 1, 2)
    labels = (np.argmax(probs[1:], axis=0) + 1).astype(np.uint8)
    names = ("a", "b", "c")
    found = confidence.structure_confidence(probs, labels, grid, 0.0, names)
    left = postprocessing.left_of_midline(grid, 0.0, tuple(slice(0, n) for n in shape))
    plain = {}
    for side, on_side in (("L", left), ("R", ~left)):
        for label, name in enumerate(names, start=1):
            region = (probs[0] <= 0.5) & on_side & (labels == label)
            if region.any():
                plain[(name, side)] = round(float(probs[label][region].mean()), 4)
    assert found == plain
    single = confidence.structure_confidence(probs, None, grid, 0.0, ("ctv",))
    assert single["ctv", "L"] == round(float(1.0 - probs[0][(probs[0] <= 0.5) & left].mean()), 4)


def test_consistency_midline_and_preview_centre_as_plain_sums() -> None:
    shape = (9, 40, 44)
    grid = _grid(shape, 2.0)
    hu = _thorax(shape)
    for slices in (np.arange(shape[0]), np.array([2, 3, 7]), np.array([], dtype=np.intp)):
        chosen = slices if len(slices) else np.arange(shape[0])
        body = hu[chosen] > consistency.BODY_HU
        total = body.sum()
        index = [
            float(np.dot(body.sum(axis=(1, 2)), chosen)) / total,
            float(np.dot(body.sum(axis=(0, 2)), np.arange(shape[1]))) / total,
            float(np.dot(body.sum(axis=(0, 1)), np.arange(shape[2]))) / total,
        ]
        plain = float(grid.index_to_lps(np.array(index))[0])
        assert consistency.midline_x(hu, grid, slices) == plain
    mask = RNG.random(shape) < 0.02
    centre = tuple(int(np.argmax(mask.sum(axis=a))) for a in ((1, 2), (0, 2), (0, 1)))
    assert preview._centre(mask) == centre


def test_lung_hull_cache_changes_nothing() -> None:
    shape = (10, 60, 64)
    volume = Volume(_thorax(shape), _grid(shape, 4.0))
    body = postprocessing.body_mask(volume)
    mid = postprocessing.midline_x(body, volume.grid)
    marks = plausibility.find_landmarks(volume, body, mid)
    points = np.argwhere(RNG.random(shape) < 0.05)
    hulls: dict[tuple[str, int], object] = {}
    first = plausibility._in_lung_hull(points, marks, hulls)  # type: ignore[arg-type]
    again = plausibility._in_lung_hull(points, marks, hulls)  # type: ignore[arg-type]
    assert np.array_equal(first, plausibility._in_lung_hull(points, marks))
    assert np.array_equal(first, again) and first.any()


def test_a_hull_of_each_rows_ends_is_the_hull_of_all_pixels() -> None:
    mask = ndimage.binary_opening(RNG.random((60, 64)) < 0.3, iterations=1)
    mask[20:30, 5:9] = True
    fast = plausibility._hull(mask)
    full = ConvexHull(np.argwhere(mask).astype(np.float64)).equations
    points = np.argwhere(np.ones((60, 64), dtype=bool)).astype(np.float64)
    assert fast is not None
    for inset in (0.0, 0.5, 2.5):
        inside_fast = ((points @ fast[:, :2].T + fast[:, 2]) <= -inset).all(axis=1)
        inside_full = ((points @ full[:, :2].T + full[:, 2]) <= -inset).all(axis=1)
        assert np.array_equal(inside_fast, inside_full) and inside_fast.any()


@pytest.mark.parametrize("oblique", [False, True])
def test_left_fraction_as_per_voxel_x(oblique: bool) -> None:
    shape = (7, 30, 34)
    c, s = np.cos(0.2), np.sin(0.2)
    identity = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    direction = ((c, s, 0.0), (-s, c, 0.0), (0.0, 0.0, 1.0)) if oblique else identity
    grid = Grid(shape, (-40.3, -30.0, 5.0), (3.0, 2.0, 2.5), direction)
    mask = RNG.random(shape) < 0.2
    x = grid.lps_coordinate(np.argwhere(mask), 0)
    for mid in (float(np.median(x)), float(x[0]), -1e3):
        assert consistency._left_fraction(grid, mask, mid) == float((x > mid).mean())


def test_tidy_labels_as_the_whole_grid_formulation() -> None:
    shape = (8, 24, 26)
    grid = _grid(shape, 4.0)
    probs = RNG.dirichlet(np.ones(4) * 0.3, size=shape).astype(np.float32).transpose(3, 0, 1, 2)
    probs[0, :, :, :3] = 1.0  # background columns: a foreground box smaller than the grid
    foreground = probs[0] <= 0.5
    raw = np.argmax(probs[1:], axis=0).astype(np.uint8) + 1
    left = postprocessing.left_of_midline(grid, 0.0, tuple(slice(0, n) for n in shape))
    seeds = np.zeros(shape, dtype=np.uint8)
    for label in range(1, 4):
        for on_side in (left, ~left):
            part = foreground & (raw == label) & on_side
            if part.any():
                seeds[postprocessing.keep_components(part, True, 1.0)] = label
    nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)[1]
    filled, found = postprocessing.tidy_labels(probs, grid, 0.0)
    assert np.array_equal(found, seeds) and np.array_equal(filled, seeds[tuple(nearest)])
    # Filled in a region only (the CTV's reach): the same labels there, 0 elsewhere; a
    # region smaller than the foreground's box still covers it.
    for region in ((slice(1, 7), slice(2, 20), slice(3, 26)), (slice(3, 4),) * 3):
        part, found = postprocessing.tidy_labels(probs, grid, 0.0, region=region)
        box = mask_box(foreground)
        assert box is not None
        hull = tuple(
            slice(min(r.start, b.start), max(r.stop, b.stop))
            for r, b in zip(region, box, strict=True)
        )
        covered = np.zeros(shape, dtype=bool)
        covered[hull] = True
        assert np.array_equal(found, seeds)
        assert np.array_equal(part[covered], filled[covered]) and not part[~covered].any()


def test_bone_pieces_as_in_the_whole_box() -> None:
    shape = (12, 40, 44)
    hu = RNG.normal(0.0, 200.0, shape).astype(np.float32)
    hu[3:9, 10:14, 20:36] = 900.0  # a bone (18 mm along z, 16 mm across)
    hu[9, 30, 5] = 900.0  # a clip-sized speck
    volume = Volume(hu, _grid(shape, 1.0))
    points = np.argwhere(RNG.random(shape) < 0.6)
    bright = hu[tuple(points.T)] > plausibility.BONE_HU
    grid = np.zeros(shape, dtype=bool)
    grid[tuple(points[bright].T)] = True
    labels, count = ndimage.label(grid, structure=np.ones((3, 3, 3), dtype=bool))
    spacing = volume.grid.spacing
    sizes = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0
    bone = np.zeros(count + 1, dtype=bool)
    for index in range(1, count + 1):
        k, j, i = np.nonzero(labels == index)
        lengths = [(a.max() - a.min() + 1) * mm for a, mm in zip((k, j, i), spacing, strict=True)]
        bone[index] = sizes[index] >= plausibility.CLIP_CC and max(lengths) > 12.0
    plain = np.zeros(len(points), dtype=bool)
    plain[bright] = bone[labels[tuple(points[bright].T)]]
    assert np.array_equal(plausibility._in_bone(points, volume), plain) and plain.any()
