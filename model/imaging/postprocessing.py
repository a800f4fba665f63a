"""Postprocessing a physicist expects, on the CT grid: inside the body, one piece per structure.

Coordinates: arrays are voxel-index ``(k, j, i)`` on the CT's :class:`~model.imaging.geometry.Grid`;
sides come from DICOM patient LPS x (mm, +x = the patient's left) through the grid's affine,
relative to the body's centroid, never from array halves.

1. The **body** is the largest connected region above ``body_hu`` after an in-plane opening that
   breaks thin contacts (couch, immobilisation board), with holes filled slice by slice (lungs,
   airways). Nothing of the CTV outside it is kept.
2. Each **structure** is split by side at the body midline; in each (structure, side) only the
   largest connected component is kept (the anatomy has one), and with a structure network only
   a component anchored on the network's main piece of that structure, so islands far from the
   target go. Each pair is processed in its own bounding box. A single-CTV network keeps, per
   side, the components of at least ``keep_fraction`` of its largest one.
3. What was removed is reported in cc (the job shows it as a warning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

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
IndexArray = npt.NDArray[np.intp]
#: Values at CT voxels: a CT-grid array, or a function giving them at voxels ``(n, 3)``
#: (e.g. network-grid labels read through :class:`~model.imaging.source_sampling.NearestOnSource`).
OnVoxels = npt.NDArray[Any] | Callable[[IndexArray], npt.NDArray[Any]]
SIDES = ("L", "R")
#: In-plane resolution (mm) at which the body region is found.
COARSE_MM = 4.0


@dataclass(frozen=True)
class CleaningPolicy:
    """How predictions are cleaned.

    Parameters
    ----------
    body_hu
        Tissue threshold of the body mask (HU).
    contact_break_mm
        Radius of the in-plane opening that separates the couch from the body (mm).
    restrict_to_body
        Remove everything outside the body mask.
    keep_largest
        Keep one component per (structure, side); ``False`` keeps every component.
    keep_fraction
        Single-CTV networks: components of at least this fraction of the side's largest stay.
    min_structure_cc
        A (structure, side) smaller than this after cleaning is dropped (and reported).
    """

    body_hu: float = -400.0
    contact_break_mm: float = 6.0
    restrict_to_body: bool = True
    keep_largest: bool = True
    keep_fraction: float = 0.02
    min_structure_cc: float = 0.5


@dataclass
class CleaningReport:
    """Volumes removed by postprocessing (cc); ``borders_cc`` is what the protocol's borders
    of the superficial CTVs took, by border and ``"structure side"``
    (:mod:`model.imaging.borders`), never a warning."""

    outside_body_cc: float = 0.0
    islands_cc: dict[str, float] = field(default_factory=dict)
    borders_cc: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class CleanedPrediction:
    """The union CTV, the per-(structure, side) masks and what cleaning removed; ``boxes``
    holds an index box ``(k, j, i)`` around each mask (nothing of it outside), so that later
    steps read a structure's box rather than the whole grid."""

    union: BoolArray
    structures: dict[tuple[str, str], BoolArray]
    report: CleaningReport
    boxes: dict[tuple[str, str], tuple[slice, ...]] = field(default_factory=dict)


def _disk(radius: int) -> BoolArray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk: BoolArray = (yy**2 + xx**2) <= radius**2
    return disk[None]


def body_mask(volume: Volume, policy: CleaningPolicy = CleaningPolicy()) -> BoolArray:
    """The patient's body on the CT grid ``(k, j, i)``: couch, air and board excluded.

    The region is found on a grid of about 4 mm in-plane (fast: LUNG1 in a fraction of a
    second); its edge is then taken from the CT itself at full resolution, and what the coarse
    region encloses (lungs, airways) counts as body.
    """
    hu = volume.array
    pixel = float(min(volume.grid.spacing[1:]))
    step = max(1, int(COARSE_MM // pixel))
    coarse = hu[:, ::step, ::step] > policy.body_hu
    disk = _disk(max(1, round(policy.contact_break_mm / (pixel * step))))
    labels, count = label_components(in_plane_opening(coarse, disk), 6)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = in_plane_morphology(labels == int(np.argmax(sizes)), disk, erode=False) & coarse
    region = _fill_holes_per_slice(region)
    ring = _disk(1)
    # Well inside the region: body. Its edge band: body where the CT itself shows tissue.
    inner = in_plane_morphology(region, ring, erode=True)
    band = in_plane_morphology(region, ring, erode=False) & ~inner
    body = upsample_blocks(inner, step, hu.shape)
    _refine_band(body, band, step, hu, policy.body_hu)
    return body


def _fill_holes_per_slice(mask: BoolArray) -> BoolArray:
    """``binary_fill_holes`` of every slice ``(j, i)`` at once: the background is what of the
    complement connects (4-connected, in-plane) to the slice's border; the rest is filled."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(~mask, structure=in_plane)
    outside = np.zeros(count + 1, dtype=bool)  # by label: touches the slice's border
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[edge] = True
    outside[0] = False  # label 0: the mask itself
    filled: BoolArray = ~outside[labels]
    return filled


def _refine_band(
    body: BoolArray, band: BoolArray, step: int, hu: npt.NDArray[np.floating], body_hu: float
) -> None:
    """Set the full-resolution voxels of the coarse ``band`` pixels from the CT: tissue
    (HU above ``body_hu``) is body. Only the band's voxels are read (a few percent).

    When the grid is whole blocks (a 512 matrix and a step of 2, 4 or 8), the band's blocks
    are read and written as ``step x step`` tiles of a ``(k, j, step, i, step)`` view.
    """
    k, jc, ic = np.nonzero(band)
    if len(k) == 0:
        return
    nk, nj, ni = body.shape
    if nj % step == 0 and ni % step == 0 and hu.flags.c_contiguous and body.flags.c_contiguous:
        tiles = (nk, nj // step, step, ni // step, step)
        body.reshape(tiles)[k, jc, :, ic, :] = hu.reshape(tiles)[k, jc, :, ic, :] > body_hu
        return
    offsets = np.arange(step)
    j = (jc[:, None] * step + offsets[None, :])[:, :, None]
    i = (ic[:, None] * step + offsets[None, :])[:, None, :]
    kk = np.broadcast_to(k[:, None, None], (len(k), step, step))
    j = np.broadcast_to(j, kk.shape)
    i = np.broadcast_to(i, kk.shape)
    inside = (j < nj) & (i < ni)
    kk, j, i = kk[inside], j[inside], i[inside]
    body[kk, j, i] = hu[kk, j, i] > body_hu


def midline_x(body: BoolArray, grid: Grid) -> float:
    """LPS x (mm) of the body centroid (exact: the index-to-LPS map is affine)."""
    counts = marginal_counts(body)  # voxels per slice, row and column
    total = int(counts[0].sum())
    if total == 0:
        return float(grid.index_to_lps(np.asarray(body.shape, float) / 2.0)[0])
    centre = [
        float(np.dot(count, np.arange(n))) / total
        for count, n in zip(counts, body.shape, strict=True)
    ]
    return float(grid.index_to_lps(np.array(centre))[0])


def left_of_midline(grid: Grid, mid_x: float, box: tuple[slice, ...]) -> BoolArray:
    """Whether each voxel of the ``box`` of the grid lies on the patient's left of ``mid_x``.

    LPS x of voxel ``(k, j, i)`` is ``a0 i + a1 j + a2 k + a3`` (the first row of the grid's
    affine), evaluated by broadcasting over the box's index ranges.
    """
    a = grid.affine_lps()[0]
    k, j, i = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
    size = tuple(s.stop - s.start for s in box)
    if abs(a[1]) < 1e-9 and abs(a[2]) < 1e-9:  # rows and slices do not move x: columns decide
        columns: BoolArray = np.broadcast_to(np.float32(a[0]) * i + np.float32(a[3]) > mid_x, size)
        return columns
    x = (
        np.float32(a[0]) * i[None, None, :]
        + np.float32(a[1]) * j[None, :, None]
        + np.float32(a[2]) * k[:, None, None]
    )
    left: BoolArray = np.broadcast_to(x + np.float32(a[3]) > mid_x, size)
    return left


def keep_components(
    mask: BoolArray,
    largest_only: bool,
    keep_fraction: float,
    anchors: BoolArray | None = None,
) -> BoolArray:
    """``mask`` with its small connected components (26-connectivity) removed.

    With ``anchors`` (same shape), only components that overlap them are candidates: the
    others are islands and go whatever their size.
    """
    box = mask_box(mask)
    if box is None:
        return mask
    voxels = mask_voxels(mask, box)
    on_anchor = None if anchors is None else anchors[tuple(voxels.T)]
    start = np.array([s.start for s in box])
    labels, keep, _ = _selection(mask[box], voxels - start, largest_only, keep_fraction, on_anchor)
    if labels is None:
        return mask
    out = np.zeros(mask.shape, dtype=bool)
    _write_kept(out[box], labels, keep)
    return out


LabelArray = npt.NDArray[np.integer]


def _selection(
    mask: BoolArray,
    voxels: IndexArray,
    largest_only: bool,
    keep_fraction: float,
    on_anchor: BoolArray | None,
) -> tuple[LabelArray | None, BoolArray, BoolArray | None]:
    """The components of ``mask`` (26-connectivity) that :func:`keep_components` keeps.

    ``voxels`` are the mask's True voxels (``(n, 3)``, :func:`mask_voxels` of it) and
    ``on_anchor`` whether each is an anchor. Returns the components' labels (``None`` when the
    mask is kept whole), whether each label is kept, and whether each voxel is kept
    (``None``: all).
    """
    labels, count = label_components(mask, 26)
    if count <= 1 and on_anchor is None:
        return None, np.ones(1, dtype=bool), None
    # Sizes and anchors from the mask's voxels only, not from every voxel of its box.
    at = labels[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    sizes = np.bincount(at, minlength=count + 1)
    sizes[0] = 0
    if on_anchor is not None:
        anchored = np.zeros(count + 1, dtype=bool)
        anchored[at[on_anchor]] = True
        sizes[~anchored] = 0
    if sizes.max() == 0:
        return labels, np.zeros(count + 1, dtype=bool), np.zeros(len(voxels), dtype=bool)
    if largest_only:
        keep = sizes == sizes.max()
        keep[np.flatnonzero(keep)[1:]] = False
    else:
        keep = sizes >= keep_fraction * sizes.max()
    keep[0] = False
    return labels, keep, keep[at]


def _write_kept(out: BoolArray, labels: LabelArray, keep: BoolArray) -> None:
    """``out[...] = keep[labels]``, written in place; one kept component (always, for the
    largest) is a comparison, cheaper than a lookup per voxel."""
    kept = np.flatnonzero(keep)
    if len(kept) == 1:
        np.equal(labels, kept[0], out=out)
    else:
        out[...] = keep[labels]


def tidy_labels(
    probs: npt.NDArray[np.float32],
    grid: Grid,
    mid_x: float,
    region: tuple[slice, ...] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Structure labels on the network grid, one piece per (structure, side).

    ``probs`` are the class probabilities ``(C, k, j, i)`` (background first) on ``grid``.
    In the foreground (background <= 0.5), the largest connected piece of each (structure,
    side) is a seed; every other voxel of ``region`` (an index box, default the whole grid;
    it always holds the foreground's box) takes the label of its nearest seed, so fragments
    at the border of two structures join their neighbour instead of becoming islands; the
    voxels outside it are 0 (without any seed, every voxel keeps its most probable structure).
    Returns the filled labels (1..S) and the seeds (0 elsewhere).
    """
    foreground = probs[0] <= 0.5
    raw = _first_argmax(probs[1:]) + 1
    seeds = np.zeros(raw.shape, dtype=np.uint8)
    box = mask_box(foreground)  # the seeds are found in the foreground's box only
    if box is not None:
        inside, classes, in_box = foreground[box], raw[box], seeds[box]
        left = left_of_midline(grid, mid_x, box)
        for label in range(1, len(probs)):
            for on_side in (left, ~left):
                part = inside & (classes == label) & on_side
                if part.any():
                    in_box[keep_components(part, True, 1.0)] = label
    if box is None or not seeds.any():
        return raw, seeds
    # Every seed lies in the foreground's box: the nearest seed of a voxel of any box that
    # holds it is found inside that box.
    shape: tuple[int, ...] = tuple(probs.shape[1:])
    whole = tuple(slice(0, size) for size in shape)
    region = tuple(
        slice(min(r.start, b.start), max(r.stop, b.stop))
        for r, b in zip(region or whole, box, strict=True)
    )
    local = seeds[region]
    nearest = ndimage.distance_transform_edt(
        local == 0, return_distances=False, return_indices=True
    )
    filled = np.zeros(seeds.shape, dtype=np.uint8)
    filled[region] = local[tuple(nearest)]
    return filled, seeds


def _first_argmax(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """``np.argmax(values, axis=0)`` as uint8 (the first of equal maxima), class by class:
    whole arrays compared in turn instead of a reduction across the leading axis."""
    best = values[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, len(values)):
        index[values[c] > best] = c
        np.maximum(best, values[c], out=best)  # NaN spreads: then argmax decides
    if np.isnan(best).any():
        found: npt.NDArray[np.uint8] = np.argmax(values, axis=0).astype(np.uint8)
        return found
    return index


def clean_prediction(
    volume: Volume,
    union: BoolArray,
    labels: OnVoxels | None,
    names: tuple[str, ...],
    policy: CleaningPolicy = CleaningPolicy(),
    *,
    body: BoolArray | None = None,
    seeds: OnVoxels | None = None,
    mid_x: float | None = None,
) -> CleanedPrediction:
    """Clean a prediction on the CT grid.

    Parameters
    ----------
    volume
        The CT (HU) and its grid.
    union
        The thresholded foreground (1 - background >= 0.5), ``(k, j, i)``.
    labels
        The structure of each voxel (1..S, from :func:`tidy_labels`) on the CT grid (an array
        or a function of voxels, read at the union's voxels only), or ``None`` for a
        single-CTV network.
    names
        Structure names of labels 1..S (``("ctv",)`` for a single-CTV network).
    body
        The body mask (:func:`body_mask`), when already computed.
    seeds
        The structures' main pieces on the CT grid (:func:`tidy_labels`; as ``labels``,
        boolean); in each (structure,
        side) the largest piece that overlaps them is kept, pieces that overlap none are
        islands.
    mid_x
        LPS x (mm) of the body midline (:func:`midline_x`), when already computed.
    """
    voxel_cc = float(np.prod(volume.grid.spacing)) / 1000.0
    report = CleaningReport()
    body = body_mask(volume, policy) if body is None else body
    structures: dict[tuple[str, str], BoolArray] = {}
    boxes: dict[tuple[str, str], tuple[slice, ...]] = {}
    # np.zeros (calloc) rather than zeros_like (a written fill): pages outside the boxes are
    # never touched, which matters for one full-grid mask per structure on a 512 matrix.
    cleaned = np.zeros(union.shape, dtype=bool)
    points = _in_body(union, body if policy.restrict_to_body else None, report, voxel_cc)
    if len(points) == 0:
        return CleanedPrediction(cleaned, structures, report)
    mid_x = midline_x(body, volume.grid) if mid_x is None else mid_x
    pairs = _side_pairs(points, labels, volume.grid, mid_x)
    largest_only = policy.keep_largest and labels is not None
    kept_total = 0
    for code, (where, voxels) in sorted(pairs.items()):
        # The pair's voxels are labelled in its box; the kept ones are then set by index in
        # its own full-grid mask (calloc: only their pages are touched).
        on_kept = None
        if policy.keep_largest:
            part = np.zeros(tuple(w.stop - w.start for w in where), dtype=bool)
            local = voxels - np.array([w.start for w in where])
            part[tuple(local.T)] = True
            on_anchor = None if seeds is None else _at(seeds, voxels)
            on_kept = _selection(part, local, largest_only, policy.keep_fraction, on_anchor)[2]
        kept_voxels = voxels if on_kept is None else voxels[on_kept]
        if not len(kept_voxels) or float(len(kept_voxels)) * voxel_cc < policy.min_structure_cc:
            continue
        full = np.zeros(union.shape, dtype=bool)
        index = tuple(kept_voxels.T)
        full[index] = True
        cleaned[index] = True
        key = (names[(code - 1) // 2], SIDES[(code - 1) % 2])
        structures[key] = full
        low, high = kept_voxels.min(axis=0), kept_voxels.max(axis=0)  # its own box
        boxes[key] = tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high, strict=True))
        kept_total += len(kept_voxels)
    removed = len(points) - kept_total
    if removed:
        report.islands_cc["islands"] = round(float(removed) * voxel_cc, 2)
    return CleanedPrediction(cleaned, structures, report, boxes)


def _in_body(
    union: BoolArray, body: BoolArray | None, report: CleaningReport, voxel_cc: float
) -> IndexArray:
    """The voxels ``(k, j, i)`` of ``union & body`` (of ``union`` without a body), ``(n, 3)``
    in ``np.argwhere`` order; what lies outside the body is reported. Only the union's box
    is searched (the CTV is a few percent of the CT), the body only at the union's voxels."""
    outer = mask_box(union)
    if outer is None:
        return np.zeros((0, 3), dtype=np.intp)
    points = mask_voxels(union, outer)
    if body is not None:
        in_body = body[points[:, 0], points[:, 1], points[:, 2]]
        outside = len(points) - int(np.count_nonzero(in_body))
        report.outside_body_cc = round(float(outside) * voxel_cc, 2)
        points = points[in_body]
    return points


def _side_pairs(
    points: IndexArray, labels: OnVoxels | None, grid: Grid, mid_x: float
) -> dict[int, tuple[tuple[slice, ...], IndexArray]]:
    """The voxels ``(n, 3)`` of each (structure, side) among ``points`` and their bounding box.

    Pairs are coded ``2 s - 1`` (left) and ``2 s`` (right), ``s`` the structure's label (1..S,
    from ``labels`` on the CT grid; 1 for a single CTV), so that each pair is then processed
    in its own bounding box only. The side of a voxel is its LPS x (through the grid)
    against ``mid_x``.
    """
    x = grid.lps_coordinate(points, 0)
    structure = np.ones(len(points), np.uint8) if labels is None else _at(labels, points)
    voxel_codes = np.where(structure > 0, structure * 2 - (x > mid_x).astype(np.uint8), 0)
    pairs: dict[int, tuple[tuple[slice, ...], IndexArray]] = {}
    for code in np.unique(voxel_codes):
        if code == 0:
            continue
        voxels = points[voxel_codes == code]
        low, high = voxels.min(axis=0), voxels.max(axis=0)
        where = tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high, strict=True))
        pairs[int(code)] = (where, voxels)
    return pairs


def _at(values: OnVoxels, points: IndexArray) -> npt.NDArray[Any]:
    """``values`` at the voxels ``points`` ``(n, 3)``."""
    if callable(values):
        return values(points)
    return values[points[:, 0], points[:, 1], points[:, 2]]


def structures_of_sides(
    per_pass: list[dict[tuple[str, str], BoolArray]], sides: tuple[str, ...]
) -> tuple[dict[tuple[str, str], BoolArray], BoolArray | None]:
    """Merge side-by-side passes: pass ``n`` gives the structures of side ``sides[n]``.

    Returns the kept structures and their union (``None`` if nothing was kept).
    """
    structures = {
        key: mask
        for found, side in zip(per_pass, sides, strict=True)
        for key, mask in found.items()
        if key[1] == side
    }
    union = None
    for mask in structures.values():
        union = mask.copy() if union is None else union | mask
    return structures, union


def added(values: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise sums (timings, removed cc) of several passes."""
    total: dict[str, float] = {}
    for entry in values:
        for key, value in entry.items():
            total[key] = total.get(key, 0.0) + value
    return total
