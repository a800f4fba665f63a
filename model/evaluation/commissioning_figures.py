"""Figures of the commissioning report: box plots per metric and the worst cases in three planes.

Box plots: a box per structure and model, evaluated cases only, non-finite values left out and
counted under the box. Worst cases: CT in three planes with the reference (solid), the
candidate (dashed) and the current model (dotted) outlined per structure.

Display orientation comes from the grid's direction cosines (:class:`model.imaging.geometry.
Grid`), never from hand flips: axial views in the radiological convention (patient left on
the image right, anterior up), coronal and sagittal views with the head up, sagittal with
anterior on the left; pixel aspect follows the spacing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from model.evaluation.commissioning_metrics import CTV, CaseResult, higher_is_better, metric_label
from model.imaging.geometry import Grid

WINDOW_HU = (-160.0, 240.0)  # soft tissue: level 40, width 400
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")
LineStyle = Literal["solid", "dashed", "dotted"]
LINE_STYLES: tuple[LineStyle, ...] = ("solid", "dashed", "dotted")  # reference, candidate, current
BoolArray = npt.NDArray[np.bool_]


# --- worst-case snapshots ----------------------------------------------------------------------
@dataclass(frozen=True)
class Plane:
    """One displayed plane: CT (HU), outlines, and how to show it."""

    title: str
    ct: npt.NDArray[np.float32]
    aspect: float  # pixel height / width
    flip_x: bool  # column 0 on the right
    rows_up: bool  # row 0 at the bottom
    outlines: tuple[tuple[int, str, BoolArray], ...]  # (source index, structure, mask)


@dataclass(frozen=True)
class CaseSnapshot:
    """What the report shows of one bad case (three planes), kept instead of its volumes."""

    case_id: str
    structure: str
    metric: str
    value: float
    sources: tuple[str, ...]  # "reference", then the models
    structures: tuple[str, ...]
    planes: tuple[Plane, ...]


def _densest(mask: BoolArray) -> tuple[int, int, int]:
    """The slice, row and column index whose planes hold the most of ``mask``."""
    if not mask.any():
        return (mask.shape[0] // 2, mask.shape[1] // 2, mask.shape[2] // 2)
    return (
        int(np.argmax(mask.sum(axis=(1, 2)))),
        int(np.argmax(mask.sum(axis=(0, 2)))),
        int(np.argmax(mask.sum(axis=(0, 1)))),
    )


def take_snapshot(
    case_id: str,
    hu: npt.NDArray[np.floating],
    grid: Grid,
    reference: Mapping[str, BoolArray],
    predictions: Mapping[str, Mapping[str, BoolArray]],
    *,
    structure: str,
    metric: str,
    value: float,
) -> CaseSnapshot:
    """Three planes through the part of the case where ``structure`` is.

    Each plane is the one holding the most of that structure (reference and predictions
    together). The CTV is outlined only for a source that has no other structure (it is
    their union).

    Parameters
    ----------
    case_id
        Shown in the report (the data set's folder name).
    hu
        CT ``(k, j, i)`` in HU on ``grid``.
    grid
        The CT grid: its direction cosines orient the display.
    reference
        Reference masks per structure.
    predictions
        Per model (candidate first), predicted masks per structure.
    structure, metric, value
        The case's worst structure and its value (the caption).
    """
    focus = np.zeros(grid.shape, dtype=bool)
    if structure in reference:
        focus |= reference[structure]
    for masks in predictions.values():
        if structure in masks:
            focus |= masks[structure]
    k, j, i = _densest(focus)
    direction = grid.direction_matrix  # columns: LPS of the i, j, k axes
    sx, sy, sz = float(direction[0, 0]), float(direction[1, 1]), float(direction[2, 2])
    dk, dj, di = grid.spacing
    # The CTV is the union of the structures: outlined only for a source without structures.
    sources: list[Mapping[str, BoolArray]] = [
        {n: m for n, m in masks.items() if n != CTV or len(masks) == 1}
        for masks in (reference, *predictions.values())
    ]
    names = tuple(dict.fromkeys(s for masks in sources for s in masks))
    planes = []
    for axis, at, aspect, flip_x, rows_up, title in (
        (0, k, dj / di, sx < 0, sy < 0, f"axial (slice {k})"),
        (1, j, dk / di, sx < 0, sz > 0, "coronal"),
        (2, i, dk / dj, sy < 0, sz > 0, "sagittal"),
    ):
        outlines = tuple(
            (n, name, np.take(mask, at, axis=axis).copy())
            for n, masks in enumerate(sources)
            for name, mask in masks.items()
            if np.take(mask, at, axis=axis).any()
        )
        ct = np.take(hu, at, axis=axis).astype(np.float32)
        planes.append(Plane(title, ct, aspect, flip_x, rows_up, outlines))
    return CaseSnapshot(
        case_id,
        structure,
        metric,
        value,
        ("reference", *predictions),
        names,
        tuple(planes),
    )


def _draw_plane(ax: Axes, plane: Plane, structures: Sequence[str]) -> None:
    origin: Literal["upper", "lower"] = "lower" if plane.rows_up else "upper"
    ax.imshow(
        plane.ct,
        cmap="gray",
        vmin=WINDOW_HU[0],
        vmax=WINDOW_HU[1],
        origin=origin,
        aspect=plane.aspect,
        interpolation="nearest",
    )
    for source, name, mask in plane.outlines:
        colour = COLOURS[structures.index(name) % len(COLOURS)]
        style = LINE_STYLES[min(source, len(LINE_STYLES) - 1)]
        # Row r is drawn at y = r for either origin, as for imshow above.
        ax.contour(
            mask.astype(np.float32),
            levels=[0.5],
            colors=colour,
            linestyles=style,
            linewidths=1.1,
        )
    if plane.flip_x:
        ax.invert_xaxis()
    ax.set_title(plane.title, fontsize=9)
    ax.set_axis_off()


def render_snapshot(snapshot: CaseSnapshot, path: Path) -> Path:
    """Write one worst case as a PNG (three planes, legend of structures and sources)."""
    fig = Figure(figsize=(12, 4.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(snapshot.planes))
    for ax, plane in zip(np.atleast_1d(axes), snapshot.planes, strict=True):
        _draw_plane(ax, plane, snapshot.structures)
    handles = [
        Line2D([0], [0], color=COLOURS[n % len(COLOURS)], lw=2)
        for n, _ in enumerate(snapshot.structures)
    ]
    handles += [
        Line2D([0], [0], color="black", lw=1.5, linestyle=LINE_STYLES[min(n, 2)])
        for n, _ in enumerate(snapshot.sources)
    ]
    labels = [*snapshot.structures, *snapshot.sources]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=8)
    fig.suptitle(
        f"{snapshot.case_id}: {snapshot.structure}, {metric_label(snapshot.metric)} "
        f"{fixed_digits(snapshot.value, 3)}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0.0, 0.08, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --- box plots ---------------------------------------------------------------------------------
def _evaluated_values(
    cases: Sequence[CaseResult], model: str, structure: str, metric: str
) -> list[float]:
    values = []
    for case in cases:
        result = case.result(model, structure)
        if result is not None and result.evaluated:
            values.append(result.values[metric])
    return values


def _box_panel(
    ax: Axes,
    cases: Sequence[CaseResult],
    models: Sequence[str],
    structures: Sequence[str],
    metric: str,
) -> None:
    width = 0.8 / len(models)
    for n, model in enumerate(models):
        positions, data, dropped = [], [], []
        for s, structure in enumerate(structures):
            values = np.asarray(_evaluated_values(cases, model, structure, metric), np.float64)
            finite = values[np.isfinite(values)]
            positions.append(s + (n - (len(models) - 1) / 2) * width)
            data.append(finite if finite.size else np.asarray([np.nan]))
            dropped.append(int(values.size - finite.size))
        parts = ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=True,
            medianprops={"color": "black"},
        )
        for box in parts["boxes"]:
            box.set_facecolor(COLOURS[(n + 2) % len(COLOURS)])
            box.set_alpha(0.55)
        for x, count in zip(positions, dropped, strict=True):
            if count:
                ax.annotate(
                    f"+{count} ∞",
                    (x, 0.0),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="#b00000",
                )
    ax.set_xticks(range(len(structures)))
    ax.set_xticklabels(list(structures), fontsize=8, rotation=30)
    ax.set_xlim(-0.6, len(structures) - 0.4)
    arrow = "higher is better" if higher_is_better(metric) else "lower is better"
    ax.set_title(f"{metric_label(metric)} ({arrow})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def render_box_plots(
    cases: Sequence[CaseResult],
    models: Sequence[str],
    structures: Sequence[str],
    metrics: Sequence[str],
    path: Path,
) -> Path:
    """One panel per metric, a box per structure and model over the evaluated cases (PNG).

    Non-finite values (missed or spurious structures) are left out of the boxes and counted
    under them (``+n ∞``).
    """
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    panel_width = max(4.0, 0.55 * len(structures) * len(models) + 1.5)
    fig = Figure(figsize=(panel_width * columns, 3.6 * rows + 0.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        _box_panel(ax, cases, models, structures, metric)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    handles = [
        Line2D([0], [0], color=COLOURS[(n + 2) % len(COLOURS)], lw=6, alpha=0.55)
        for n in range(len(models))
    ]
    fig.legend(handles, list(models), loc="lower center", ncol=len(models), fontsize=8)
    fig.suptitle("Evaluated cases per structure", fontsize=10)
    fig.tight_layout(rect=(0.0, 0.05, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --- JSON --------------------------------------------------------------------------------------


def fixed_digits(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals; ``n/a`` for none, ``∞`` for an infinite distance."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(float(value)):
        return "∞" if value > 0 else "-∞"
    return f"{float(value):.{digits}f}"
