"""Postprocessing a physicist expects, on the CT grid: inside the body, one piece per structure.

Coordinates: arrays are voxel-index ``(k, j, i)`` on the CT's :class:`~model.imaging.geometry.Grid`;
sides come from DICOM patient LPS x (mm, +x = the patient's left) through the grid's affine,
relative to the body's centroid, never from array halves.

1. The **body** is the largest connected region above ``body_hu`` after an in-plane opening that
   breaks thin contacts (couch, immobilisation board), with holes filled slice by slice (lungs,
   airways). Nothing of the CTV outside it is kept.
2. Each **structure** is split by side at the body midline; in each (structure, side) only the
   largest connected component is kept (the anatomy has one), so islands far from the target
   go. A single-CTV network keeps, per side, the components of at least ``keep_fraction`` of
   its largest one.
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

    @property
    def total_cc(self) -> float:
        """Everything removed."""
        return self.outside_body_cc + sum(self.islands_cc.values())


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
    tissue = hu > policy.body_hu
    coarse = tissue[:, ::step, ::step]
    disk = _disk(max(1, round(policy.contact_break_mm / (pixel * step))))
    labels, count = ndimage.label(ndimage.binary_opening(coarse, structure=disk))
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = ndimage.binary_dilation(labels == int(np.argmax(sizes)), structure=disk) & coarse
    for k in range(region.shape[0]):
        region[k] = ndimage.binary_fill_holes(region[k])
    ring = _disk(1)
    outer = _upsample(ndimage.binary_dilation(region, structure=ring), step, hu.shape)
    inner = _upsample(ndimage.binary_erosion(region, structure=ring), step, hu.shape)
    body: BoolArray = outer & (tissue | inner)
    return body


def _upsample(mask: BoolArray, step: int, shape: tuple[int, ...]) -> BoolArray:
    """Repeat a ``[:, ::step, ::step]`` mask back to ``shape``."""
    if step == 1:
        return mask
    full = np.repeat(np.repeat(mask, step, axis=1), step, axis=2)
    return np.ascontiguousarray(full[:, : shape[1], : shape[2]])


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


def keep_components(mask: BoolArray, largest_only: bool, keep_fraction: float) -> BoolArray:
    """``mask`` with its small connected components (26-connectivity) removed."""
    box = _bbox(mask)
    if box is None:
        return mask
    labels, count = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if largest_only:
        keep = sizes == sizes.max()
        keep[np.flatnonzero(keep)[1:]] = False
    else:
        keep = sizes >= keep_fraction * sizes.max()
    keep[0] = False
    out = np.zeros_like(mask)
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
        The structures' main pieces on the CT grid (:func:`tidy_labels`); connected parts of the
        CTV that touch none of them are islands.
    """
    voxel_cc = float(np.prod(volume.grid.spacing)) / 1000.0
    report = CleaningReport()
    body = body_mask(volume, policy) if body is None else body
    if policy.restrict_to_body:
        report.outside_body_cc = round(float(np.count_nonzero(union & ~body)) * voxel_cc, 2)
        union = union & body
    structures: dict[tuple[str, str], BoolArray] = {}
    cleaned = np.zeros_like(union)
    box = _bbox(union)
    if box is None:
        return CleanedPrediction(cleaned, structures, report)
    inside = union[box]
    if seeds is not None and policy.keep_largest:
        inside = _touching(inside, seeds[box])
    left = left_of_midline(volume.grid, midline_x(body, volume.grid), box)
    sub_labels = None if labels is None else labels[box]
    largest_only = policy.keep_largest and labels is not None
    for index, name in enumerate(names, start=1):
        region = inside if sub_labels is None else inside & (sub_labels == index)
        for side, on_side in zip(SIDES, (left, ~left), strict=True):
            part = region & on_side
            kept = part
            if policy.keep_largest and part.any():
                kept = keep_components(part, largest_only, policy.keep_fraction)
            if float(np.count_nonzero(kept)) * voxel_cc < policy.min_structure_cc:
                kept = np.zeros_like(kept)
            if kept.any():
                full = np.zeros_like(union)
                full[box] = kept
                cleaned[box] |= kept
                structures[(name, side)] = full
    removed = np.count_nonzero(union) - np.count_nonzero(cleaned)
    if removed:
        report.islands_cc["islands"] = round(float(removed) * voxel_cc, 2)
    return CleanedPrediction(cleaned, structures, report)


def _touching(mask: BoolArray, seeds: BoolArray) -> BoolArray:
    """The connected components (26-connectivity) of ``mask`` that overlap ``seeds``."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return mask
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[seeds & mask])] = True
    keep[0] = False
    touching: BoolArray = keep[labels]
    return touching
