"""Tests of model.evaluation.metrics: overlap, HD95 in mm, bootstrap confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from model.errors import ConfigurationError
from model.evaluation.metrics import (
    CaseMetrics,
    bootstrap_ci,
    dice,
    evaluate_case,
    hd95,
    iou,
    summarize,
    surface_distances,
)

SPACING = (2.5, 0.8, 1.3)  # (dk, dj, di) mm


def _cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int) -> npt.NDArray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def _sphere(shape: tuple[int, int, int], centre_mm: npt.ArrayLike, radius_mm: float) -> npt.NDArray:
    """A ball defined in mm on the anisotropic SPACING grid."""
    k, j, i = np.indices(shape, dtype=float)
    pos = np.stack([k * SPACING[0], j * SPACING[1], i * SPACING[2]], axis=-1)
    return np.asarray(np.linalg.norm(pos - np.asarray(centre_mm), axis=-1) <= radius_mm)


def _blob(seed: int, shape: tuple[int, int, int] = (24, 60, 48)) -> npt.NDArray:
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma=(1.5, 4.0, 3.0))
    return np.asarray(smooth > np.quantile(smooth, 0.7))


def _monai_hd95(pred: npt.NDArray, truth: npt.NDArray) -> float:
    value = compute_hausdorff_distance(
        torch.from_numpy(pred[None, None].astype(np.float32)),
        torch.from_numpy(truth[None, None].astype(np.float32)),
        include_background=True,
        percentile=95,
        spacing=list(SPACING),
    )
    return float(value.item())


# --- overlap -----------------------------------------------------------------------------------
def test_offset_cubes_have_exact_dice_and_iou() -> None:
    a = _cube((30, 30, 30), (10, 10, 10), 10)
    b = _cube((30, 30, 30), (10, 10, 13), 10)  # 700 of 1000 voxels shared
    assert dice(a, b) == pytest.approx(2 * 700 / 2000, abs=1e-12)
    assert iou(a, b) == pytest.approx(700 / 1300, abs=1e-12)
    assert dice(a.astype(np.uint8) * 3, b.astype(np.int16)) == pytest.approx(0.7)


def test_identical_masks() -> None:
    a = _sphere((20, 50, 40), (25.0, 20.0, 26.0), 12.0)
    assert dice(a, a) == 1.0
    assert iou(a, a) == 1.0
    assert hd95(a, a, SPACING) == 0.0


def test_empty_masks() -> None:
    empty = np.zeros((10, 10, 10), dtype=bool)
    full = _cube((10, 10, 10), (2, 2, 2), 4)
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert hd95(empty, empty, SPACING) == 0.0
    assert dice(empty, full) == 0.0
    assert iou(full, empty) == 0.0
    assert hd95(empty, full, SPACING) == math.inf
    assert hd95(full, empty, SPACING) == math.inf
    with pytest.raises(ConfigurationError):
        surface_distances(empty, full, SPACING)


def test_shape_and_argument_errors() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ConfigurationError):
        dice(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(ConfigurationError):
        iou(a[0], a[0])
    with pytest.raises(ConfigurationError):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigurationError):
        hd95(a, a, SPACING, pooling="mean")  # type: ignore[arg-type]


# --- HD95 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_sphere_hd95_is_in_mm(axis: int) -> None:
    """A ball moved by 3 voxels: surface distances run from 0 to the shift d (|cos| of the
    polar angle is uniform on a sphere, so HD95 is about 0.95 d), in mm of that axis."""
    shape = (40, 90, 70)
    truth = _sphere(shape, (50.0, 36.0, 45.0), 20.0)
    pred = np.roll(truth, 3, axis=axis)
    shift_mm = 3 * SPACING[axis]
    value = hd95(pred, truth, SPACING)
    assert 0.85 * shift_mm <= value <= shift_mm + 1e-9
    assert hd95(truth, pred, SPACING) == pytest.approx(value)


def test_cube_shift_distances() -> None:
    """Two cubes 3 columns apart: every distance is a multiple of di or 0, the max is 3 di."""
    a = _cube((20, 20, 30), (5, 5, 5), 8)
    b = _cube((20, 20, 30), (5, 5, 8), 8)
    to_b, to_a = surface_distances(a, b, SPACING)
    assert to_b.max() == pytest.approx(3 * SPACING[2])
    assert to_a.max() == pytest.approx(3 * SPACING[2])
    assert hd95(a, b, SPACING) == pytest.approx(3 * SPACING[2])


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hd95_matches_monai(seed: int) -> None:
    pred, truth = _blob(2 * seed), _blob(2 * seed + 1)  # blobs touch the array border
    monai = _monai_hd95(pred, truth)
    # MONAI takes the larger directed 95th percentile: same surfaces, same distances
    assert hd95(pred, truth, SPACING, pooling="max") == pytest.approx(monai, rel=1e-4)
    # the pooled (default) definition differs by at most a voxel diagonal
    diagonal = math.sqrt(sum(s * s for s in SPACING))
    assert abs(hd95(pred, truth, SPACING) - monai) <= diagonal


def test_crop_does_not_change_distances() -> None:
    pred, truth = _blob(10), _blob(11)
    big_pred = np.pad(pred, ((3, 5), (7, 2), (0, 9)))
    big_truth = np.pad(truth, ((3, 5), (7, 2), (0, 9)))
    assert hd95(big_pred, big_truth, SPACING) == pytest.approx(hd95(pred, truth, SPACING))


# --- bootstrap -----------------------------------------------------------------------------------
def test_bootstrap_is_deterministic_and_contains_the_mean() -> None:
    values = np.random.default_rng(5).normal(0.8, 0.1, size=40)
    first = bootstrap_ci(values, seed=3)
    assert first == bootstrap_ci(list(values), seed=3)
    assert first != bootstrap_ci(values, seed=4)
    mean, low, high = first
    assert mean == pytest.approx(values.mean())
    assert low < mean < high


def test_bootstrap_interval_shrinks_with_more_cases() -> None:
    rng = np.random.default_rng(6)
    _, low_small, high_small = bootstrap_ci(rng.normal(size=20))
    _, low_big, high_big = bootstrap_ci(rng.normal(size=2000))
    assert high_big - low_big < (high_small - low_small) / 4


def test_bootstrap_non_finite_values() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert bootstrap_ci([*values, math.nan]) == bootstrap_ci(values)
    mean, low, high = bootstrap_ci([*values, math.inf])
    assert mean == math.inf
    assert high == math.inf
    assert math.isfinite(low)  # some resamples of 6 cases miss the failed one
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan, math.nan]))
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)


@pytest.mark.parametrize(("n", "confidence"), [(0, 0.95), (100, 1.0), (100, 0.0)])
def test_bootstrap_rejects_bad_arguments(n: int, confidence: float) -> None:
    with pytest.raises(ConfigurationError):
        bootstrap_ci([1.0, 2.0], n_resamples=n, confidence=confidence)


# --- per case and per data set -------------------------------------------------------------------
def test_evaluate_case_and_summarize() -> None:
    truth = _sphere((30, 70, 50), (37.0, 28.0, 32.0), 15.0)
    cases = [evaluate_case(np.roll(truth, s, axis=2), truth, SPACING) for s in range(4)]
    assert cases[0] == CaseMetrics(dice=1.0, iou=1.0, hd95_mm=0.0)
    assert cases[3].hd95_cm == pytest.approx(cases[3].hd95_mm / 10)
    cases.append(evaluate_case(np.zeros_like(truth), truth, SPACING))
    summary = summarize(cases, seed=1)
    assert set(summary) == {"dice", "iou", "hd95_mm", "hd95_cm"}
    assert summary["dice"]["n"] == 5
    assert summary["dice"]["mean"] == pytest.approx(np.mean([c.dice for c in cases]))
    assert summary["dice"]["ci_low"] <= summary["dice"]["mean"] <= summary["dice"]["ci_high"]
    assert summary["hd95_mm"]["n_infinite"] == 1
    assert summary["hd95_mm"]["mean"] == math.inf
    finite = summarize(cases[:4])
    assert finite["hd95_cm"]["mean"] == pytest.approx(finite["hd95_mm"]["mean"] / 10)
