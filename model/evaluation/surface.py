"""Surface metrics of a predicted contour against a reference: what a clinician has to edit.

Every mask argument is a 3-D array indexed ``(k, j, i)`` = (slice, row, column) on one voxel
grid, read as ``mask != 0``; ``spacing = (dk, dj, di)`` is the voxel spacing in mm (slice
spacing, row spacing, column spacing; see :mod:`model.imaging.geometry`). Slices ``k`` are
axial planes for a CT series: the added path length is measured in them.

Three surface representations are used, each where it is the established one:

* **Boundary faces** (:func:`surface_dice`): the surface of a mask is the set of voxel faces
  that separate a voxel inside from one outside (or from the array edge). A face
  perpendicular to axis ``a`` is a rectangle with the two other spacings as sides, half a
  voxel from the voxel centres: on the boundary itself. The distance of a face to the other
  surface is the exact Euclidean distance (mm) from its centre to the nearest of the other
  mask's faces (as rectangles). Areas weight every face, as in the surface Dice of Nikolov
  et al. (2018), so that anisotropic voxels (3 mm slices, 1 mm pixels) do not weight the
  surface by voxel counts. A voxelised surface is a staircase: its area exceeds that of the
  smooth surface by up to a factor sqrt(3) where it is oblique; the bias is common to
  numerator and denominator.
* **Voxel-centre surfaces** (:func:`mean_surface_distance`, and
  :func:`model.evaluation.metrics.hd95`): the mask voxels removed by a 6-connected erosion,
  with exact distances between voxel centres
  (:func:`model.evaluation.metrics.surface_distances`), the convention of medpy and MONAI.
* **Planar contours** (:func:`added_path_length`): per axial slice, the iso-line at 0.5 of
  the slice's mask (marching squares, :func:`skimage.measure.find_contours`, on the slice
  padded by one empty pixel so that every contour is closed) as polygons in mm. This is the
  line a planning system draws.

Empty masks have explicit values, listed in each function's docstring. In short: two empty
masks agree perfectly (surface Dice 1, distances 0, added path 0); when only one is empty the
surface Dice is 0 and distances are infinite; the added path length is the whole reference
contour when the prediction is empty and 0 when the reference is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree
from skimage.measure import find_contours

from model.errors import ConfigurationError
from model.evaluation.metrics import (
    checked_spacing,
    distances_or_empty_value,
    mask_pair,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Distances within this many mm of a tolerance count as within it (floating-point slack).
TOLERANCE_SLACK_MM = 1e-6
#: Default tolerance (mm) of the added path length (see :func:`added_path_length`).
APL_TOLERANCE_MM = 1.0


# --- validation --------------------------------------------------------------------------------
def _tolerance(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{what} must be a finite tolerance >= 0 mm, got {value}")
    return float(value)


# --- boundary faces ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SurfaceDistances:
    """Directed distances between the boundary faces of two non-empty masks.

    Attributes
    ----------
    pred_to_truth, truth_to_pred
        Distance (mm) from each face of one mask to the nearest face of the other: exact, or,
        when ``decided`` names tolerances, exact wherever it could fall on either side of one
        of them and otherwise the distance to the nearest face centre (an upper bound that
        lies on the same side of every one of those tolerances as the exact distance).
    pred_area, truth_area
        Area (mm²) of each of those faces, in the same order.
    decided
        The tolerances (mm) the distances are valid for; ``None``: exact everywhere.
    """

    pred_to_truth: FloatArray
    truth_to_pred: FloatArray
    pred_area: FloatArray
    truth_area: FloatArray
    decided: tuple[float, ...] | None = None

    def surface_dice(self, tolerance_mm: float) -> float:
        """Share of the total surface area lying within ``tolerance_mm`` of the other surface.

        Raises
        ------
        ConfigurationError
            A tolerance the distances were not computed for (see ``decided``).
        """
        tolerance = _tolerance(tolerance_mm, "tolerance_mm")
        if self.decided is not None and tolerance not in self.decided:
            raise ConfigurationError(
                f"distances were computed for tolerances {self.decided} mm, not {tolerance}"
            )
        limit = tolerance + TOLERANCE_SLACK_MM
        near = float(self.pred_area[self.pred_to_truth <= limit].sum())
        near += float(self.truth_area[self.truth_to_pred <= limit].sum())
        return near / float(self.pred_area.sum() + self.truth_area.sum())


def _union_box(p: BoolArray, t: BoolArray) -> tuple[slice, slice, slice]:
    """The bounding box of ``p | t`` (both non-empty)."""
    cuts: list[slice] = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(p.any(axis=others) | t.any(axis=others))
        cuts.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return cuts[0], cuts[1], cuts[2]


def boundary_faces(
    mask: BoolArray, spacing: tuple[float, float, float]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The faces between a voxel of ``mask`` and one outside it or the array edge.

    Returns their centres (mm, ``(n, 3)`` in ``(k, j, i)`` order from the centre of voxel
    ``(0, 0, 0)``), areas (mm², ``(n,)``) and half-extents (mm, ``(n, 3)``: 0 along the
    face's normal, half the spacing along the two other axes). A face between voxels
    ``t - 1`` and ``t`` along axis ``a`` lies at index ``t - 1/2``.
    """
    centres: list[FloatArray] = []
    areas: list[FloatArray] = []
    halves: list[FloatArray] = []
    for axis in range(3):
        pad = [(1, 1) if a == axis else (0, 0) for a in range(3)]
        change = np.diff(np.pad(mask, pad).view(np.int8), axis=axis) != 0
        index = np.argwhere(change).astype(np.float64)
        index[:, axis] -= 0.5
        centres.append(index * np.asarray(spacing))
        area = math.prod(s for a, s in enumerate(spacing) if a != axis)
        areas.append(np.full(len(index), area))
        half = [0.0 if a == axis else s / 2.0 for a, s in enumerate(spacing)]
        halves.append(np.tile(np.asarray(half), (len(index), 1)))
    return np.concatenate(centres), np.concatenate(areas), np.concatenate(halves)


def _rectangle_distance(points: FloatArray, centres: FloatArray, halves: FloatArray) -> FloatArray:
    """Distances from points ``(n, 3)`` to rectangles ``(n, m, 3)``: ``(n, m)``."""
    gap = np.abs(points[:, None, :] - centres) - halves
    return np.asarray(np.sqrt((np.maximum(gap, 0.0) ** 2).sum(axis=2)), np.float64)


class _Faces:
    """The faces of one surface, as targets of distance queries."""

    def __init__(self, centres: FloatArray, halves: FloatArray) -> None:
        self.centres = centres
        self.halves = halves
        self.tree = cKDTree(centres)
        self.reach = float(np.linalg.norm(halves, axis=1).max())  # largest half-diagonal

    def exact(self, points: FloatArray) -> FloatArray:
        """Exact distance (mm) from each point to the nearest face (rectangle).

        A face lies at least its centre's distance less its half-diagonal ``r`` away, so once
        the best face among the ``k`` nearest centres is ``D`` away and the ``k``-th centre lies
        beyond ``D + r``, no other face can be nearer. ``k`` grows (16, 64, then every face
        within ``D + r``) for the points where that is not yet certain.
        """
        best = np.full(len(points), np.inf)
        todo = np.arange(len(points))
        for k in (16, 64):
            k = min(k, len(self.centres))
            if not len(todo):
                return best
            far, nearest = self.tree.query(points[todo], k=k)
            far = np.asarray(far).reshape(len(todo), k)
            nearest = np.asarray(nearest).reshape(len(todo), k)
            found = _rectangle_distance(
                points[todo], self.centres[nearest], self.halves[nearest]
            ).min(axis=1)
            best[todo] = found
            if k == len(self.centres):
                return best
            todo = todo[far[:, -1] <= found + self.reach]
        balls = self.tree.query_ball_point(points[todo], best[todo] + self.reach)
        for n, within in zip(todo, balls, strict=True):
            rows = np.asarray(within, dtype=np.int64)
            best[n] = _rectangle_distance(
                points[n : n + 1], self.centres[rows][None], self.halves[rows][None]
            ).min()
        return best

    def deciding(self, points: FloatArray, low: float, high: float) -> FloatArray:
        """Distances exact where the nearest face centre lies in ``(low, high + reach]`` (the
        exact distance may then lie on either side of a limit in ``[low, high]``), else the
        distance to the nearest face centre."""
        centre, _ = self.tree.query(points, k=1)
        distance = np.asarray(centre, np.float64)
        unsure = (distance > low) & (distance - self.reach <= high)
        distance[unsure] = self.exact(points[unsure])
        return distance


def face_distances(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    *,
    tolerances_mm: Sequence[float] | None = None,
) -> SurfaceDistances:
    """Distances between the boundary faces of two non-empty masks (see the module docstring).

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on one grid, both non-empty.
    spacing
        ``(dk, dj, di)`` in mm.
    tolerances_mm
        If given, distances are only made exact where that can change on which side of one
        of these tolerances they fall (much faster; enough for :func:`surface_dice`).

    Raises
    ------
    ConfigurationError
        On shape, spacing or tolerance errors, or if either mask is empty.
    """
    p, t = mask_pair(pred, truth)
    sampling = checked_spacing(spacing)
    if not p.any() or not t.any():
        raise ConfigurationError("face distances need two non-empty masks")
    box = _union_box(p, t)
    p_at, p_area, p_half = boundary_faces(np.ascontiguousarray(p[box]), sampling)
    t_at, t_area, t_half = boundary_faces(np.ascontiguousarray(t[box]), sampling)
    p_faces, t_faces = _Faces(p_at, p_half), _Faces(t_at, t_half)
    if tolerances_mm is None:
        return SurfaceDistances(t_faces.exact(p_at), p_faces.exact(t_at), p_area, t_area)
    limits = tuple(_tolerance(float(x), "tolerance_mm") for x in tolerances_mm)
    if not limits:
        raise ConfigurationError("tolerances_mm must name at least one tolerance")
    low, high = min(limits) + TOLERANCE_SLACK_MM, max(limits) + TOLERANCE_SLACK_MM
    return SurfaceDistances(
        t_faces.deciding(p_at, low, high),
        p_faces.deciding(t_at, low, high),
        p_area,
        t_area,
        limits,
    )


def surface_dices(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    tolerances_mm: Sequence[float],
) -> tuple[float, ...]:
    """:func:`surface_dice` at several tolerances, sharing one surface extraction."""
    p, t = mask_pair(pred, truth)
    checked_spacing(spacing)
    limits = tuple(_tolerance(float(x), "tolerance_mm") for x in tolerances_mm)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not (has_p and has_t):
        return tuple(1.0 if has_p == has_t else 0.0 for _ in limits)
    distances = face_distances(p, t, spacing, tolerances_mm=limits)
    return tuple(distances.surface_dice(x) for x in limits)


def surface_dice(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    tolerance_mm: float,
) -> float:
    """Surface Dice at a tolerance (Nikolov et al. 2018, "surface DSC").

    ``(|S_P ∩ B_T(τ)| + |S_T ∩ B_P(τ)|) / (|S_P| + |S_T|)``: the area of each surface that
    lies within ``τ`` of the other surface, over the total area of both, with surfaces made of
    boundary faces (module docstring). A face counts when its distance is ``<= τ`` (plus
    :data:`TOLERANCE_SLACK_MM`).

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on one grid (read as ``!= 0``).
    spacing
        ``(dk, dj, di)`` in mm.
    tolerance_mm
        ``τ`` in mm, finite and ``>= 0``.

    Returns
    -------
    float
        In ``[0, 1]``; **1.0 when both masks are empty**, **0.0 when exactly one is**.

    Raises
    ------
    ConfigurationError
        On shape, spacing or tolerance errors.
    """
    return surface_dices(pred, truth, spacing, (tolerance_mm,))[0]


def mean_surface_distance(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
) -> float:
    """Symmetric mean surface distance (mm) on voxel-centre surfaces.

    The mean of the pooled distances of both directions, from
    :func:`model.evaluation.metrics.surface_distances` (the surfaces and distances of
    :func:`~model.evaluation.metrics.hd95`): ``(Σ_{v∈S_P} d(v, S_T) + Σ_{v∈S_T} d(v, S_P)) /
    (|S_P| + |S_T|)`` with ``S`` the surface voxels and ``|S|`` their count. This is the
    "average symmetric surface distance" of medpy and MONAI
    (``compute_average_surface_distance(symmetric=True)``).

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on one grid (read as ``!= 0``).
    spacing
        ``(dk, dj, di)`` in mm.

    Returns
    -------
    float
        mm; **0.0 when both masks are empty**, **inf when exactly one is** (a missed or
        spurious structure is infinitely far).

    Raises
    ------
    ConfigurationError
        On shape or spacing errors.
    """
    found = distances_or_empty_value(pred, truth, spacing)
    if isinstance(found, float):
        return found
    to_t, to_p = found
    return float(np.concatenate([to_t, to_p]).mean())


# --- planar contours and the added path length -------------------------------------------------
def slice_contours(mask2d: npt.NDArray[np.generic], pixel: tuple[float, float]) -> list[FloatArray]:
    """Closed contours of one slice as ``(n, 2)`` polygons in mm, ``(row, column)`` order.

    The iso-line at 0.5 of the slice padded by one empty pixel (marching squares): it passes
    half-way between inside and outside pixel centres, cuts pixel corners diagonally, and
    every contour is closed (its first point repeated last). Coordinates are measured from
    the centre of pixel ``(0, 0)``.
    """
    padded = np.pad(np.asarray(mask2d) != 0, 1).astype(np.float64)
    scale = np.asarray(pixel, dtype=np.float64)
    lines = find_contours(padded, 0.5)  # type: ignore[no-untyped-call]
    return [(np.asarray(c, np.float64) - 1.0) * scale for c in lines]


def _pieces(
    contours: Sequence[FloatArray], step: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """The contours' segments cut into pieces no longer than ``step``.

    Returns segment starts ``(m, 2)``, segment ends ``(m, 2)``, piece midpoints ``(n, 2)``,
    piece lengths ``(n,)`` and the segment of each piece ``(n,)``.
    """
    starts = np.concatenate([c[:-1] for c in contours])
    ends = np.concatenate([c[1:] for c in contours])
    lengths = np.linalg.norm(ends - starts, axis=1)
    keep = lengths > 0
    starts, ends, lengths = starts[keep], ends[keep], lengths[keep]
    counts = np.maximum(np.ceil(lengths / step).astype(np.int64), 1)
    segment = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    fraction = (np.arange(int(counts.sum())) - first + 0.5) / counts[segment]
    mids = starts[segment] + fraction[:, None] * (ends - starts)[segment]
    return starts, ends, mids, (lengths / counts)[segment], segment


def _distance_to_polylines(
    points: FloatArray, contours: Sequence[FloatArray], step: float
) -> FloatArray:
    """Exact distance (mm) from each point to the nearest segment of ``contours``.

    Candidate segments are those of the 8 nearest samples (spaced at most ``step`` along
    every segment); the exact point-to-segment distance is taken to each candidate.
    """
    starts, ends, samples, _, segment = _pieces(contours, step)
    k = min(8, len(samples))
    _, nearest = cKDTree(samples).query(points, k=k)
    candidates = segment[np.asarray(nearest).reshape(len(points), k)]
    a, b = starts[candidates], ends[candidates]
    ab = b - a
    along = np.einsum("nkd,nkd->nk", points[:, None, :] - a, ab) / np.einsum("nkd,nkd->nk", ab, ab)
    foot = a + np.clip(along, 0.0, 1.0)[..., None] * ab
    return np.asarray(np.linalg.norm(points[:, None, :] - foot, axis=2).min(axis=1), np.float64)


@dataclass(frozen=True)
class PathLength:
    """Per-case added path length and the reference contour length it is part of (mm)."""

    added_mm: float
    reference_mm: float


def path_lengths(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    tolerance_mm: float = APL_TOLERANCE_MM,
) -> PathLength:
    """Added path length and total reference contour length, both in mm (see
    :func:`added_path_length` for the definition)."""
    p, t = mask_pair(pred, truth)
    _, dj, di = checked_spacing(spacing)
    limit = _tolerance(tolerance_mm, "tolerance_mm") + TOLERANCE_SLACK_MM
    step = min(dj, di) / 10.0
    added = total = 0.0
    for k in np.flatnonzero(t.any(axis=(1, 2))):
        reference = slice_contours(t[k], (dj, di))
        _, _, mids, lengths, _ = _pieces(reference, step)
        length = float(lengths.sum())
        total += length
        if not p[k].any():
            added += length
            continue
        distance = _distance_to_polylines(mids, slice_contours(p[k], (dj, di)), step)
        added += float(lengths[distance > limit].sum())
    return PathLength(added, total)


def added_path_length(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    tolerance_mm: float = APL_TOLERANCE_MM,
) -> float:
    """Added path length (Vaassen et al. 2020): the reference contour a clinician must draw.

    Slice by slice along ``k`` (axial for a CT), the reference and the predicted contours are
    the closed marching-squares polygons of :func:`slice_contours` (in-plane spacing
    ``(dj, di)``). Every reference segment is cut into pieces of at most a tenth of the
    smaller pixel size; a piece counts when the exact in-plane distance from its midpoint to
    the nearest predicted segment *on the same slice* exceeds ``tolerance_mm``. The added
    path length is the summed length (mm) of the pieces that count, over all slices.

    Vaassen et al. counted reference contour pixels absent from the automatic contour
    (tolerance zero at pixel level); here the line is measured in mm with sub-pixel polygons
    and a tolerance (default :data:`APL_TOLERANCE_MM` = 1 mm) absorbs one-pixel jitter that a
    clinician would not redraw. Predicted contour that has to be *deleted* does not count,
    nor does a predicted slice where the reference is empty.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on one grid (read as ``!= 0``); ``truth`` is the reference.
    spacing
        ``(dk, dj, di)`` in mm (``dk`` is not used).
    tolerance_mm
        Finite, ``>= 0``.

    Returns
    -------
    float
        mm; **0.0 when the reference is empty** (whatever the prediction), **the whole
        reference contour length when the prediction is empty**.

    Raises
    ------
    ConfigurationError
        On shape, spacing or tolerance errors.
    """
    return path_lengths(pred, truth, spacing, tolerance_mm).added_mm
