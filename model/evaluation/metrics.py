"""Segmentation metrics and their bootstrap confidence intervals (paper section 4.4).

Every mask argument is a 3-D array indexed ``(k, j, i)`` = (slice, row, column) on one
voxel grid, with ``spacing = (dk, dj, di)`` in mm (see :mod:`model.imaging.geometry`). Masks of any
dtype are read as ``mask != 0``.

Distances are true surface distances in **millimetres**. The paper's reference code reported
"HD" as the *maximum* Hausdorff distance in voxel units times 0.1; :func:`hd95` is the 95th
percentile of surface distances in mm (divide by 10 for the paper's cm tables,
:func:`summarize` does both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from model.errors import ConfigurationError

Pooling = Literal["pooled", "max"]
_FACES = ndimage.generate_binary_structure(3, 1)  # 6-connected erosion, as MONAI and medpy


class MetricSummary(TypedDict):
    """Mean and percentile-bootstrap CI of one metric over cases (JSON-ready)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int  # cases used (NaN values are left out)
    n_infinite: int  # of which infinite (e.g. HD95 with an empty prediction)


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one case: Dice, IoU (Jaccard) and HD95 in mm."""

    dice: float
    iou: float
    hd95_mm: float

    @property
    def hd95_cm(self) -> float:
        """HD95 in cm, the unit of the paper's tables."""
        return self.hd95_mm / 10.0


# --- validation --------------------------------------------------------------------------------
def mask_pair(
    pred: npt.NDArray[np.generic], truth: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Two ``(k, j, i)`` masks of one shape, as bool (``!= 0``).

    Raises
    ------
    ConfigurationError
        Not 3-D, or not of one shape.
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.ndim != 3 or p.shape != t.shape:
        raise ConfigurationError(
            f"pred and truth must be 3-D (k, j, i) masks of one shape, got {p.shape}, {t.shape}"
        )
    return (p if p.dtype == np.bool_ else p != 0), (t if t.dtype == np.bool_ else t != 0)


def checked_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``(dk, dj, di)`` in mm: three finite positive values (else ConfigurationError)."""
    if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ConfigurationError(f"spacing must be three positive mm values, got {spacing}")
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


# --- overlap -----------------------------------------------------------------------------------
def dice(pred: npt.NDArray[np.generic], truth: npt.NDArray[np.generic]) -> float:
    """Dice similarity coefficient ``2|P∩T| / (|P| + |T|)``.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on the same grid (read as ``!= 0``).

    Returns
    -------
    float
        In ``[0, 1]``; **1.0 when both masks are empty** (perfect agreement on absence).

    Raises
    ------
    ConfigurationError
        If the masks are not 3-D or differ in shape.
    """
    p, t = mask_pair(pred, truth)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(p & t) / total


def iou(pred: npt.NDArray[np.generic], truth: npt.NDArray[np.generic]) -> float:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|``; **1.0 when both are empty**.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on the same grid (read as ``!= 0``).

    Raises
    ------
    ConfigurationError
        If the masks are not 3-D or differ in shape.
    """
    p, t = mask_pair(pred, truth)
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else np.count_nonzero(p & t) / union


# --- surface distances -------------------------------------------------------------------------
def _union_crop(
    p: npt.NDArray[np.bool_], t: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Both masks cut to their union's bounding box, then padded by one empty voxel."""
    sub_p, sub_t = p, t
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(sub_p.any(axis=others) | sub_t.any(axis=others))
        cut = [slice(None)] * 3
        cut[axis] = slice(int(hits[0]), int(hits[-1]) + 1)
        sub_p, sub_t = sub_p[tuple(cut)], sub_t[tuple(cut)]
    return np.pad(sub_p, 1), np.pad(sub_t, 1)


def _surface(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Voxels of ``mask`` with at least one face neighbour outside it."""
    return np.asarray(mask & ~ndimage.binary_erosion(mask, structure=_FACES))


def distances_or_empty_value(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | float:
    """:func:`surface_distances` of two masks, or the value of a distance metric when a mask
    is empty: 0.0 when both are, infinity when only one is (a structure missed or spurious).

    Raises
    ------
    ConfigurationError
        On shape or spacing errors.
    """
    p, t = mask_pair(pred, truth)
    checked_spacing(spacing)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not (has_p and has_t):
        return 0.0 if has_p == has_t else math.inf
    return surface_distances(p, t, spacing)


def surface_distances(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface.

    Surfaces are the mask voxels removed by a 6-connected binary erosion; distances are
    exact Euclidean distances between voxel centres, from
    :func:`scipy.ndimage.distance_transform_edt` with ``sampling=spacing``, computed on the
    union bounding box plus a one-voxel margin.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on the same grid, both non-empty.
    spacing
        ``(dk, dj, di)`` in mm.

    Returns
    -------
    tuple of numpy.ndarray
        ``(pred surface -> truth surface, truth surface -> pred surface)``, float64 mm.

    Raises
    ------
    ConfigurationError
        On shape or spacing errors, or if either mask is empty.
    """
    p, t = mask_pair(pred, truth)
    sampling = checked_spacing(spacing)
    if not p.any() or not t.any():
        raise ConfigurationError("surface distances need two non-empty masks")
    surf_p, surf_t = (_surface(m) for m in _union_crop(p, t))
    to_t = ndimage.distance_transform_edt(~surf_t, sampling=sampling)
    to_p = ndimage.distance_transform_edt(~surf_p, sampling=sampling)
    return np.asarray(to_t[surf_p], np.float64), np.asarray(to_p[surf_t], np.float64)


def hd95(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    *,
    pooling: Pooling = "pooled",
) -> float:
    """95th-percentile Hausdorff distance in **mm** (not voxels, not the maximum).

    With ``pooling="pooled"`` (default; the common definition, e.g. medpy's ``hd95``) the
    distances of both directions (pred surface -> truth surface and truth -> pred) are pooled
    and their 95th percentile taken. ``pooling="max"`` takes the larger of the two directed
    95th percentiles, which is what MONAI's
    ``compute_hausdorff_distance(percentile=95)`` does. Percentiles interpolate linearly.
    The paper's reference code instead reported the maximum Hausdorff distance in voxels
    x 0.1; this is the true HD95 in mm.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on the same grid (read as ``!= 0``).
    spacing
        ``(dk, dj, di)`` voxel spacing in mm.
    pooling
        ``"pooled"`` or ``"max"``, see above.

    Returns
    -------
    float
        HD95 in mm; ``0.0`` if both masks are empty, ``inf`` if exactly one is empty (a
        missed or spurious target is infinitely far; :func:`bootstrap_ci` keeps such cases).

    Raises
    ------
    ConfigurationError
        On shape, spacing or ``pooling`` errors.
    """
    if pooling not in ("pooled", "max"):
        raise ConfigurationError(f"pooling must be 'pooled' or 'max', got {pooling!r}")
    found = distances_or_empty_value(pred, truth, spacing)
    if isinstance(found, float):
        return found
    to_t, to_p = found
    if pooling == "pooled":
        return float(np.percentile(np.concatenate([to_t, to_p]), 95.0))
    return float(max(np.percentile(to_t, 95.0), np.percentile(to_p, 95.0)))


# --- bootstrap ---------------------------------------------------------------------------------
def _quantile_sorted(values: npt.NDArray[np.float64], q: float) -> float:
    """Linear-interpolation quantile of sorted values that tolerates ``inf``."""
    pos = q * (len(values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    weight = pos - low
    if weight == 0.0 or values[low] == values[high]:
        return float(values[low])
    return float(values[low] + weight * (values[high] - values[low]))


def bootstrap_ci(
    values: Sequence[float] | npt.NDArray[np.floating],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean (paper section 4.4).

    ``n_resamples`` samples of ``len(values)`` cases are drawn with replacement from a
    ``numpy.random.default_rng(seed)``; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (linear interpolation) of their means. The result is a
    pure function of ``values`` and ``seed``.

    Non-finite values: ``NaN`` means "undefined" and is dropped before anything is computed.
    ``inf`` (e.g. HD95 of a case with an empty prediction) is *kept* so that failures do not
    vanish from the average: the mean is then ``inf``, and a bound is ``inf`` whenever that
    quantile of the resampled means is.

    Parameters
    ----------
    values
        One value per case.
    n_resamples
        Number of bootstrap resamples (the paper uses 1000).
    confidence
        Two-sided confidence level in ``(0, 1)``.
    seed
        Seed of the random generator.

    Returns
    -------
    tuple of float
        ``(mean, low, high)`` with ``mean`` the plain sample mean; ``(nan, nan, nan)`` when no
        value is left after dropping NaN.

    Raises
    ------
    ConfigurationError
        If ``n_resamples < 1`` or ``confidence`` is not in ``(0, 1)``.
    """
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ConfigurationError(
            f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}"
        )
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[~np.isnan(data)]
    if data.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, data.size, size=(n_resamples, data.size))
    with np.errstate(invalid="ignore"):
        means = np.sort(data[draws].mean(axis=1))
    alpha = (1.0 - confidence) / 2.0
    low, high = _quantile_sorted(means, alpha), _quantile_sorted(means, 1.0 - alpha)
    return float(data.mean()), low, high


# --- per case and per data set -----------------------------------------------------------------
def evaluate_case(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
) -> CaseMetrics:
    """Dice, IoU and pooled HD95 (mm) of one case.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on the same grid (read as ``!= 0``).
    spacing
        ``(dk, dj, di)`` voxel spacing in mm.

    Raises
    ------
    ConfigurationError
        On shape or spacing errors.
    """
    p, t = mask_pair(pred, truth)
    return CaseMetrics(dice=dice(p, t), iou=iou(p, t), hd95_mm=hd95(p, t, spacing))


def summarize(
    cases: Sequence[CaseMetrics],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, MetricSummary]:
    """Mean and bootstrap CI of every metric over cases.

    Parameters
    ----------
    cases
        Per-case metrics, e.g. from :func:`evaluate_case`.
    n_resamples, confidence, seed
        Passed to :func:`bootstrap_ci` (the same seed for every metric).

    Returns
    -------
    dict
        Keys ``"dice"``, ``"iou"``, ``"hd95_mm"`` and ``"hd95_cm"`` (paper-style tables),
        each a :class:`MetricSummary`.
    """
    columns = {
        "dice": [c.dice for c in cases],
        "iou": [c.iou for c in cases],
        "hd95_mm": [c.hd95_mm for c in cases],
        "hd95_cm": [c.hd95_cm for c in cases],
    }
    summary: dict[str, MetricSummary] = {}
    for name, column in columns.items():
        data = np.asarray(column, dtype=np.float64)
        mean, low, high = bootstrap_ci(
            data, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        summary[name] = MetricSummary(
            mean=mean,
            ci_low=low,
            ci_high=high,
            n=int(np.count_nonzero(~np.isnan(data))),
            n_infinite=int(np.count_nonzero(np.isinf(data))),
        )
    return summary
