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

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from model.imaging.geometry import Grid, Volume

BoolArray = npt.NDArray[np.bool_]
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
    """Volumes removed by postprocessing (cc)."""

    outside_body_cc: float = 0.0
    islands_cc: dict[str, float] = field(default_factory=dict)


@dataclass
class CleanedPrediction:
    """The union CTV, the per-(structure, side) masks and what cleaning removed."""

    union: BoolArray
    structures: dict[tuple[str, str], BoolArray]
    report: CleaningReport


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
    labels, count = ndimage.label(ndimage.binary_opening(coarse, structure=disk))
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = ndimage.binary_dilation(labels == int(np.argmax(sizes)), structure=disk) & coarse
    region = _fill_holes_per_slice(region)
    ring = _disk(1)
    # Well inside the region: body. Its edge band: body where the CT itself shows tissue.
    inner = ndimage.binary_erosion(region, structure=ring)
    band = ndimage.binary_dilation(region, structure=ring) & ~inner
    body = _upsample(inner, step, hu.shape)
    _refine_band(body, band, step, hu, policy.body_hu)
    return body


def _fill_holes_per_slice(mask: BoolArray) -> BoolArray:
    """``binary_fill_holes`` of every slice ``(j, i)`` at once: the background is what of the
    complement connects (4-connected, in-plane) to the slice's border; the rest is filled."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, _ = ndimage.label(~mask, structure=in_plane)
    edges = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    outside = np.unique(np.concatenate([e.ravel() for e in edges]))
    filled: BoolArray = ~np.isin(labels, outside[outside > 0])
    return filled


def _upsample(mask: BoolArray, step: int, shape: tuple[int, ...]) -> BoolArray:
    """Each pixel of a ``[:, ::step, ::step]`` mask as its ``step x step`` block, at ``shape``
    (one pass: a broadcast view reshaped, then cropped)."""
    if step == 1:
        return mask.copy()
    k, nj, ni = mask.shape
    blocks = np.broadcast_to(mask[:, :, None, :, None], (k, nj, step, ni, step))
    full = blocks.reshape(k, nj * step, ni * step)
    return np.ascontiguousarray(full[:, : shape[1], : shape[2]])


def _refine_band(
    body: BoolArray, band: BoolArray, step: int, hu: npt.NDArray[np.floating], body_hu: float
) -> None:
    """Set the full-resolution voxels of the coarse ``band`` pixels from the CT: tissue
    (HU above ``body_hu``) is body. Only the band's voxels are read (a few percent)."""
    k, jc, ic = np.nonzero(band)
    if len(k) == 0:
        return
    offsets = np.arange(step)
    j = (jc[:, None] * step + offsets[None, :])[:, :, None]
    i = (ic[:, None] * step + offsets[None, :])[:, None, :]
    kk = np.broadcast_to(k[:, None, None], (len(k), step, step))
    j = np.broadcast_to(j, kk.shape)
    i = np.broadcast_to(i, kk.shape)
    inside = (j < body.shape[1]) & (i < body.shape[2])
    kk, j, i = kk[inside], j[inside], i[inside]
    body[kk, j, i] = hu[kk, j, i] > body_hu


def midline_x(body: BoolArray, grid: Grid) -> float:
    """LPS x (mm) of the body centroid (exact: the index-to-LPS map is affine)."""
    total = int(np.count_nonzero(body))
    if total == 0:
        return float(grid.index_to_lps(np.asarray(body.shape, float) / 2.0)[0])
    centre = [
        float(np.dot(body.sum(axis=tuple(a for a in range(3) if a != axis)), np.arange(n))) / total
        for axis, n in enumerate(body.shape)
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


def _bbox(mask: BoolArray) -> tuple[slice, ...] | None:
    spans = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if len(hit) == 0:
            return None
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)


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
    box = _bbox(mask)
    if box is None:
        return mask
    labels, count = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1 and anchors is None:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if anchors is not None:
        anchored = np.zeros(count + 1, dtype=bool)
        anchored[np.unique(labels[anchors[box]])] = True
        sizes[~anchored] = 0
    out = np.zeros(mask.shape, dtype=bool)
    if sizes.max() == 0:
        return out
    if largest_only:
        keep = sizes == sizes.max()
        keep[np.flatnonzero(keep)[1:]] = False
    else:
        keep = sizes >= keep_fraction * sizes.max()
    keep[0] = False
    out[box] = keep[labels]
    return out


def tidy_labels(
    probs: npt.NDArray[np.float32], grid: Grid, mid_x: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Structure labels on the network grid, one piece per (structure, side).

    ``probs`` are the class probabilities ``(C, k, j, i)`` (background first) on ``grid``.
    In the foreground (background <= 0.5), the largest connected piece of each (structure,
    side) is a seed; every other voxel of the grid takes the label of its nearest seed, so
    fragments at the border of two structures join their neighbour instead of becoming
    islands. Returns the filled labels (1..S) and the seeds (0 elsewhere).
    """
    foreground = probs[0] <= 0.5
    raw = np.argmax(probs[1:], axis=0).astype(np.uint8) + 1
    full = tuple(slice(0, n) for n in raw.shape)
    left = left_of_midline(grid, mid_x, full)
    seeds = np.zeros(raw.shape, dtype=np.uint8)
    for label in range(1, len(probs)):
        for on_side in (left, ~left):
            part = foreground & (raw == label) & on_side
            if part.any():
                seeds[keep_components(part, True, 1.0)] = label
    if not seeds.any():
        return raw, seeds
    nearest = ndimage.distance_transform_edt(
        seeds == 0, return_distances=False, return_indices=True
    )
    filled: npt.NDArray[np.uint8] = seeds[tuple(nearest)]
    return filled, seeds


def clean_prediction(
    volume: Volume,
    union: BoolArray,
    labels: npt.NDArray[np.uint8] | None,
    names: tuple[str, ...],
    policy: CleaningPolicy = CleaningPolicy(),
    *,
    body: BoolArray | None = None,
    seeds: BoolArray | None = None,
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
        The structure of each voxel (1..S, from :func:`tidy_labels`) on the CT grid, or
        ``None`` for a single-CTV network.
    names
        Structure names of labels 1..S (``("ctv",)`` for a single-CTV network).
    body
        The body mask (:func:`body_mask`), when already computed.
    seeds
        The structures' main pieces on the CT grid (:func:`tidy_labels`); in each (structure,
        side) the largest piece that overlaps them is kept, pieces that overlap none are
        islands.
    mid_x
        LPS x (mm) of the body midline (:func:`midline_x`), when already computed.
    """
    voxel_cc = float(np.prod(volume.grid.spacing)) / 1000.0
    report = CleaningReport()
    body = body_mask(volume, policy) if body is None else body
    if policy.restrict_to_body:
        report.outside_body_cc = round(float(np.count_nonzero(union & ~body)) * voxel_cc, 2)
        union = union & body
    structures: dict[tuple[str, str], BoolArray] = {}
    # np.zeros (calloc) rather than zeros_like (a written fill): pages outside the boxes are
    # never touched, which matters for one full-grid mask per structure on a 512 matrix.
    cleaned = np.zeros(union.shape, dtype=bool)
    box = _bbox(union)
    if box is None:
        return CleanedPrediction(cleaned, structures, report)
    inside = union[box]
    mid_x = midline_x(body, volume.grid) if mid_x is None else mid_x
    codes, boxes = _side_codes(
        inside, None if labels is None else labels[box], volume.grid, mid_x, box
    )
    largest_only = policy.keep_largest and labels is not None
    for code, sub in sorted(boxes.items()):
        part = codes[sub] == code
        kept = part
        where = tuple(
            slice(b.start + a.start, b.start + a.stop) for b, a in zip(box, sub, strict=True)
        )
        if policy.keep_largest:
            anchors = None if seeds is None else seeds[where]
            kept = keep_components(part, largest_only, policy.keep_fraction, anchors)
        if float(np.count_nonzero(kept)) * voxel_cc < policy.min_structure_cc:
            continue
        full = np.zeros(union.shape, dtype=bool)
        full[where] = kept
        cleaned[where] |= kept
        structures[(names[(code - 1) // 2], SIDES[(code - 1) % 2])] = full
    removed = np.count_nonzero(union) - np.count_nonzero(cleaned)
    if removed:
        report.islands_cc["islands"] = round(float(removed) * voxel_cc, 2)
    return CleanedPrediction(cleaned, structures, report)


def _side_codes(
    inside: BoolArray,
    labels: npt.NDArray[np.uint8] | None,
    grid: Grid,
    mid_x: float,
    box: tuple[slice, ...],
) -> tuple[npt.NDArray[np.uint8], dict[int, tuple[slice, ...]]]:
    """One code per (structure, side) in ``box``: ``2 s - 1`` left, ``2 s`` right, 0 outside,
    and the bounding box of each code (box-relative index slices).

    ``s`` is the structure's label (1..S; 1 for a single CTV). One array for every pair, so
    that each pair is then processed in its own bounding box only. The side of a voxel is its
    LPS x (through the grid, at its box-relative index plus the box's start) against
    ``mid_x``; only the CTV's voxels are evaluated.
    """
    k, j, i = np.unravel_index(np.flatnonzero(inside), inside.shape)
    starts = [s.start for s in box]
    x = grid.lps_coordinate(np.column_stack([k + starts[0], j + starts[1], i + starts[2]]), 0)
    structure = np.ones(len(k), np.uint8) if labels is None else labels[k, j, i]
    voxel_codes = np.where(structure > 0, structure * 2 - (x > mid_x).astype(np.uint8), 0)
    codes = np.zeros(inside.shape, dtype=np.uint8)
    codes[k, j, i] = voxel_codes
    boxes: dict[int, tuple[slice, ...]] = {}
    for code in np.unique(voxel_codes):
        if code == 0:
            continue
        at = voxel_codes == code
        boxes[int(code)] = tuple(
            slice(int(axis[at].min()), int(axis[at].max()) + 1) for axis in (k, j, i)
        )
    return codes, boxes


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
