"""PNG figures of the experiment report (matplotlib, Agg backend; no display needed).

Coordinates: CT and masks are ``(k, j, i)`` arrays on an axial LPS grid
(:mod:`model.imaging.geometry`). Axial panels show row ``j`` downward (anterior at the top) and
column ``i`` to the right, i.e. the patient's LEFT (+x) on the viewer's right, the
radiological convention; coronal panels show slice ``k`` upward (head at the top).
Every figure is labelled "synthetic phantom".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes

if TYPE_CHECKING:
    from model.lab.phantoms import PhantomCase

Mask = npt.NDArray[np.bool_]
HU_WINDOW = (-400.0, 400.0)
SYNTHETIC_LABEL = "SYNTHETIC PHANTOM (not patient data)"
_GT_STYLE = {"colors": "lime", "linestyles": "dashed", "linewidths": 1.0}
_PRED_STYLE = {"colors": "red", "linestyles": "solid", "linewidths": 1.2}


def _busiest(mask: Mask, axis: int) -> int:
    """Index along ``axis`` (0 = k, 1 = j) with the most voxels of ``mask`` (middle if empty)."""
    other = tuple(a for a in range(3) if a != axis)
    counts = mask.sum(axis=other)
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def slice_indices(truth_a: Mask, truth_b: Mask) -> tuple[int, int]:
    """Axial ``k`` and coronal ``j`` where the two ground truths differ most.

    Falls back to their union when they are identical, so a perturbation is shown where
    it changes the target (the other breast, or the nodal region).
    """
    changed = truth_a ^ truth_b
    basis = changed if changed.any() else truth_a | truth_b
    return _busiest(basis, 0), _busiest(basis, 1)


def _contour(ax: Axes, plane: Mask, style: Mapping[str, Any]) -> None:
    """Draw the 0.5 iso-line of ``plane`` unless it is constant (matplotlib would warn)."""
    if plane.any() and not plane.all():
        ax.contour(plane.astype(np.float32), levels=[0.5], **style)


def _panel(
    ax: Axes,
    ct: npt.NDArray[Any],
    truth: npt.NDArray[np.bool_],
    pred: npt.NDArray[np.bool_],
    aspect: float,
    title: str,
) -> None:
    """One plane: CT in grey, ground truth dashed green, prediction red."""
    ax.imshow(ct, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], aspect=aspect)
    _contour(ax, truth, _GT_STYLE)
    _contour(ax, pred, _PRED_STYLE)
    ax.set_title("\n".join(textwrap.wrap(title, 34)), fontsize=7)
    ax.text(0.01, 0.5, "R", color="yellow", fontsize=7, transform=ax.transAxes)
    ax.text(0.95, 0.5, "L", color="yellow", fontsize=7, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _planes(volume: npt.NDArray[Any], k: int, j: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Axial plane ``(j, i)`` at ``k`` and coronal plane ``(k, i)`` at ``j``, head up."""
    return volume[k], volume[:, j, :][::-1]


def _model_row(
    axes: Sequence[Axes],
    case: PhantomCase,
    perturbed: PhantomCase,
    masks: Mapping[str, Mask],
    where: tuple[int, int],
    model: str,
) -> None:
    """Axial and coronal panels, original then perturbed note, for one model."""
    dk, dj, di = case.grid.spacing
    ct_ax, ct_cor = _planes(case.hu, *where)
    versions = (("original", case), ("perturbed", perturbed))
    for col, (view, aspect) in enumerate(((0, dj / di), (1, dk / di))):
        for offset, (key, version) in enumerate(versions):
            truth = _planes(version.masks["CTV"], *where)[view]
            pred = _planes(masks[key], *where)[view]
            plane = "axial" if view == 0 else "coronal"
            title = f"{model} | {plane} | {key}: {version.clinical.prompt_text()}"
            ct = ct_ax if view == 0 else ct_cor
            _panel(axes[2 * col + offset], ct, truth, pred, aspect, title)


def save_overlays(
    case: PhantomCase,
    kind: str,
    per_model: Mapping[str, tuple[PhantomCase, Mapping[str, Mask]]],
    path: Path,
) -> Path:
    """One PNG: per model, axial and coronal slices with the original and perturbed note.

    Parameters
    ----------
    case
        The case with its original note (CT, grid and ground truth).
    kind
        The perturbation shown (``laterality_flip`` or ``n_switch``).
    per_model
        Model name -> (the perturbed case on the same CT, ``{"original": mask,
        "perturbed": mask}``), masks ``(k, j, i)`` on the case's grid.
    path
        PNG to write (folders are created).

    Returns
    -------
    Path
        ``path``.
    """
    first = next(iter(per_model.values()))[0]
    where = slice_indices(case.masks["CTV"], first.masks["CTV"])
    fig, grid = plt.subplots(len(per_model), 4, figsize=(12, 3.4 * len(per_model)), squeeze=False)
    for row, (model, (perturbed, masks)) in zip(grid, per_model.items(), strict=True):
        _model_row(row, case, perturbed, masks, where, model)
    fig.suptitle(
        f"{SYNTHETIC_LABEL} {case.case_id}: {kind}; same CT for both notes "
        f"(axial k={where[0]}, coronal j={where[1]}); green dashed = ground truth, "
        "red = prediction; R/L = patient's right/left",
        fontsize=8,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _err(a: float, b: float) -> float:
    """Error-bar length ``a - b``; 0 where undefined or infinite."""
    d = float(a) - float(b)
    return d if math.isfinite(d) else 0.0


def _bars(ax: Axes, labels: Sequence[str], stats: Sequence[Mapping[str, Any]], title: str) -> None:
    """Bar chart of means with 95 % CI error bars (NaN shown as an empty bar)."""
    means = [0.0 if math.isnan(s["mean"]) else float(s["mean"]) for s in stats]
    low = [_err(m, s["ci_low"]) for m, s in zip(means, stats, strict=True)]
    high = [_err(s["ci_high"], m) for m, s in zip(means, stats, strict=True)]
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=[low, high], capsize=3, color="steelblue")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=8)


def save_summary_figure(
    panels: Sequence[tuple[str, Sequence[str], Sequence[Mapping[str, Any]], float | None]],
    path: Path,
) -> Path:
    """Bar panels ``(title, labels, CI summaries, target line or None)`` in one PNG."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, layout="constrained"
    )
    for ax, (title, labels, stats, target) in zip(axes[0], panels, strict=True):
        _bars(ax, labels, stats, title)
        if target is not None:
            ax.axhline(target, color="red", linestyle="--", linewidth=1)
    fig.suptitle(f"{SYNTHETIC_LABEL}: means with 95 % bootstrap CIs", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
