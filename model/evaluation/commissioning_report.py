"""The commissioning report: ``report.json``, ``report.html`` and its figures.

Figures (``figures/``): one box plot per metric (a box per structure and model, evaluated
cases only, non-finite values left out and counted under the box), and the worst cases of the
candidate, each as CT in three planes with the reference (solid), the candidate (dashed) and
the current model (dotted) outlined per structure.

Display orientation comes from the grid's direction cosines (:class:`model.imaging.geometry.
Grid`), never from hand flips: axial views in the radiological convention (patient left on
the image right, anterior up), coronal and sagittal views with the head up, sagittal with
anterior on the left; pixel aspect follows the spacing.

JSON is strict: non-finite numbers (an infinite distance for a missed structure, an undefined
mean) are written as ``null``; the counts (``n_infinite``, ``missed``, ``spurious``) say which.
"""

from __future__ import annotations

import html
import json
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

from model.evaluation.commissioning import CTV, CaseResult, higher_is_better, metric_label
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
        f"{_fixed(snapshot.value, 3)}",
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
def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and tuples as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return json_safe(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def case_rows(cases: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Per case, per model, per structure: metrics, presence and volumes (JSON-ready)."""
    rows = []
    for case in cases:
        models: dict[str, Any] = {}
        for model, structures in case.models.items():
            models[model] = {
                name: {
                    **r.values,
                    "evaluated": r.evaluated,
                    "reference_present": r.reference_present,
                    "predicted_present": r.predicted_present,
                    "reference_cc": r.reference_cc,
                    "predicted_cc": r.predicted_cc,
                    "reference_path_mm": r.reference_path_mm,
                }
                for name, r in structures.items()
            }
        rows.append({"case_id": case.case_id, "categories": case.categories, "models": models})
    return rows


# --- HTML --------------------------------------------------------------------------------------
def _digits(metric: str) -> int:
    return 3 if higher_is_better(metric) else 1


def _fmt_summary(summary: Mapping[str, Any], metric: str) -> str:
    d = _digits(metric)
    mean = summary.get("mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{_fixed(mean, d)} [{_fixed(summary['ci_low'], d)}, {_fixed(summary['ci_high'], d)}]"
    if summary.get("n_infinite"):
        text += f" ({summary['n_infinite']} ∞)"
    return text


def _fixed(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(float(value)):
        return "∞" if value > 0 else "-∞"
    return f"{float(value):.{digits}f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(verdict: str) -> str:
    css = {"PASS": "pass", "FAIL": "fail"}.get(verdict, "none")
    return f'<span class="verdict {css}">{_e(verdict)}</span>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f1f1f1; }
.verdict { font-weight: bold; padding: 0.1em 0.5em; border-radius: 0.3em; }
.pass { background: #d6f5d6; color: #115511; }
.fail { background: #f9d3d3; color: #8a1111; }
.none { background: #eee; color: #555; }
figure { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #444; }
.note { font-size: 0.85em; color: #555; }
"""


def _html(doc: Mapping[str, Any], figures: Mapping[str, Any]) -> str:
    summary = doc["summary"]
    models: list[str] = summary["models"]
    structures: list[str] = summary["structures"]
    metrics: list[str] = summary["metrics"]
    candidate = models[0]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>llmctv commissioning report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Commissioning report</h1>",
        f"<p>Candidate <b>{_e(candidate)}</b>: {_badge(summary['verdicts'][candidate])}</p>",
        f"<p class='note'>Data: <code>{_e(doc['data'])}</code>; {doc['n_cases']} cases evaluated"
        f", {len(doc['skipped'])} skipped; generated {_e(doc['generated_at'])}; "
        f"llmctv {_e(doc['software_version'])}. Structures produced by a model must be "
        "reviewed by a qualified person before clinical use.</p>",
        "<h2>Models</h2>",
        _table(
            ["name", "role", "checkpoint", "hash", "structures", "verdict"],
            [
                [
                    _e(name),
                    _e(info["role"]),
                    f"<code>{_e(info['path'])}</code>",
                    _e(info.get("checkpoint_hash", "")),
                    _e(", ".join(info.get("structures", []))),
                    _badge(summary["verdicts"][name]),
                ]
                for name, info in doc["models"].items()
            ],
            raw=True,
        ),
    ]
    acceptance = summary["acceptance"]
    criteria_rows = [
        [
            structure,
            ", ".join(
                f"{metric_label(m)} {'≥' if higher_is_better(m) else '≤'} {t:g}"
                for m, t in {
                    **acceptance["defaults"],
                    **acceptance["structures"].get(structure, {}),
                }.items()
            ),
        ]
        for structure in structures
    ]
    parts += [
        "<h2>Acceptance criteria</h2>",
        f"<p class='note'>Source: <code>{_e(acceptance['source'])}</code>. Statistic: "
        + (
            "the mean over evaluated cases"
            if acceptance["statistic"] == "mean"
            else "the confidence bound on the unfavourable side"
        )
        + f"; at least {acceptance['min_cases']} evaluated case(s) per structure. "
        f"Surface Dice tolerances {acceptance['surface_dice_tolerances_mm']} mm; added path "
        f"length tolerance {acceptance['apl_tolerance_mm']:g} mm.</p>",
        _table(["structure", "criteria"], criteria_rows),
        "<h2>Verdict per structure</h2>",
    ]
    verdict_rows = []
    for structure in structures:
        for model in models:
            entry = summary["results"][model].get(structure)
            if entry is None:
                continue
            c = entry["counts"]
            verdict_rows.append(
                [
                    _e(structure),
                    _e(model),
                    str(c["evaluated"]),
                    str(c["reference_present"]),
                    str(c["missed"]),
                    str(c["spurious"]),
                    str(c["agreed_absent"]),
                    _badge(entry["verdict"]),
                    _e(entry["reason"]),
                ]
            )
    parts.append(
        _table(
            [
                "structure",
                "model",
                "evaluated",
                "in reference",
                "missed",
                "spurious",
                "agreed absent",
                "verdict",
                "reason",
            ],
            verdict_rows,
            raw=True,
        )
    )
    parts.append(
        "<p class='note'>Evaluated: the reference or the prediction holds the structure. "
        "Means and 95% CIs (percentile bootstrap, "
        f"{summary['bootstrap']['n_resamples']} resamples, seed {summary['bootstrap']['seed']}) "
        "are over evaluated cases; a missed or spurious structure has infinite distances (∞).</p>"
    )
    parts.append("<h2>Metrics per structure</h2>")
    for model in models:
        rows = []
        for structure in structures:
            entry = summary["results"][model].get(structure)
            if entry is None:
                continue
            rows.append(
                [structure, str(entry["counts"]["evaluated"])]
                + [_fmt_summary(entry["metrics"][m], m) for m in metrics]
            )
        parts += [
            f"<h3>{_e(model)}</h3>",
            _table(["structure", "n", *map(metric_label, metrics)], rows),
        ]
    if summary["paired"]:
        rows = []
        for structure, entry in summary["paired"].items():
            rows.append(
                [structure, str(entry["cases"])]
                + [f"{_fmt_summary(entry[m], m)} → {entry[m]['favours']}" for m in metrics]
            )
        parts += [
            f"<h2>Paired differences: {_e(models[0])} minus {_e(models[1])}</h2>",
            "<p class='note'>Per case, then the mean difference with its bootstrap CI, over "
            "cases where the reference or either prediction holds the structure. "
            "'favours' names the model the CI clearly favours (it excludes 0).</p>",
            _table(["structure", "n", *map(metric_label, metrics)], rows),
        ]
    parts.append("<h2>Per clinical category</h2>")
    for category in ("surgery", "n_stage", "side"):
        for model in models:
            rows = []
            for structure in structures:
                entry = summary["results"][model].get(structure)
                if entry is None:
                    continue
                for level, group in entry["categories"][category].items():
                    if not group["counts"]["evaluated"]:
                        continue
                    rows.append(
                        [structure, level, str(group["counts"]["evaluated"])]
                        + [_fmt_summary(group["metrics"][m], m) for m in metrics]
                    )
            parts += [
                f"<h3>{_e(category.replace('_', ' '))}: {_e(model)}</h3>",
                _table(["structure", category, "n", *map(metric_label, metrics)], rows),
            ]
    parts.append("<h2>Distributions</h2>")
    parts.append(
        f"<figure><img src='{_e(figures['box_plots'])}' alt='box plots'>"
        "<figcaption>Every metric over the evaluated cases, per structure and model; "
        "non-finite values (missed or spurious structures) are counted under the boxes."
        "</figcaption></figure>"
    )
    parts.append(f"<h2>Worst cases of {_e(candidate)}</h2>")
    if not doc["worst_cases"]:
        parts.append("<p>No evaluated case.</p>")
    for item in doc["worst_cases"]:
        where = ", ".join(f"{k} {v}" for k, v in item["categories"].items())
        parts.append(
            f"<figure><img src='{_e(item['figure'])}' alt='{_e(item['case_id'])}'>"
            f"<figcaption>{_e(item['case_id'])} ({_e(where)}): "
            f"worst structure {_e(item['structure'])}, {_e(metric_label(item['metric']))} "
            f"{_e(_fixed(item['value'], 3))}. Reference solid, {_e(candidate)} dashed"
            + (f", {_e(models[1])} dotted" if len(models) > 1 else "")
            + ".</figcaption></figure>"
        )
    if doc["skipped"]:
        parts += [
            "<h2>Skipped cases</h2>",
            _table(
                ["case", "code", "detail"],
                [[s["case_id"], s["code"], s["detail"]] for s in doc["skipped"]],
            ),
        ]
    parts += [
        "<h2>Definitions</h2>",
        "<ul>",
        "<li>Dice: 2|P∩R| / (|P|+|R|) on voxels.</li>",
        "<li>Surface Dice at τ (Nikolov et al. 2018): the area of each surface (voxel faces) "
        "within τ of the other surface, over the total area of both.</li>",
        "<li>Mean surface distance: the mean of the distances of both surfaces' boundary "
        "voxels to the other surface (symmetric).</li>",
        "<li>HD95: the 95th percentile of the same pooled distances.</li>",
        "<li>Added path length (Vaassen et al. 2020): per axial slice, the length of the "
        "reference contour farther than "
        f"{acceptance['apl_tolerance_mm']:g} mm from the predicted contour, summed (mm).</li>",
        "</ul>",
        "<p class='note'>Full definitions: docs/commissioning.md.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_commissioning_report(
    out: Path,
    *,
    summary: Mapping[str, Any],
    cases: Sequence[CaseResult],
    snapshots: Sequence[CaseSnapshot],
    models: Mapping[str, Mapping[str, Any]],
    data: str,
    skipped: Sequence[Mapping[str, str]],
    generated_at: str,
    software_version: str,
) -> list[Path]:
    """Write ``report.json``, ``report.html`` and ``figures/*.png`` into ``out``.

    Parameters
    ----------
    out
        The report folder (created).
    summary
        :func:`model.evaluation.commissioning.summarize_commissioning` output.
    cases
        The per-case results (box plots, and the JSON's ``cases``).
    snapshots
        The worst cases, worst first (:func:`take_snapshot`).
    models
        Per model name: ``role``, ``path``, ``checkpoint_hash``, ``structures``.
    data, skipped, generated_at, software_version
        Shown in the report (``skipped``: ``case_id``, ``code``, ``detail``).

    Returns
    -------
    list of Path
        Every file written, ``report.json`` and ``report.html`` first.
    """
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = out / "figures"
    names: list[str] = list(summary["models"])
    written: list[Path] = []
    boxes = render_box_plots(
        cases, names, summary["structures"], summary["metrics"], figures_dir / "box_plots.png"
    )
    written.append(boxes)
    worst = []
    by_id = {case.case_id: case for case in cases}
    for rank, snap in enumerate(snapshots, start=1):
        path = render_snapshot(snap, figures_dir / f"worst_{rank}.png")
        written.append(path)
        case = by_id.get(snap.case_id)
        worst.append(
            {
                "rank": rank,
                "case_id": snap.case_id,
                "categories": case.categories if case else {},
                "structure": snap.structure,
                "metric": snap.metric,
                "value": snap.value,
                "figure": path.relative_to(out).as_posix(),
            }
        )
    doc: dict[str, Any] = {
        "report": "llmctv commissioning report",
        "format": 1,
        "generated_at": generated_at,
        "software_version": software_version,
        "data": data,
        "n_cases": len(cases),
        "models": {name: dict(info) for name, info in models.items()},
        "candidate": names[0],
        "current": names[1] if len(names) > 1 else None,
        "verdict": summary["verdicts"][names[0]],
        "verdicts": {
            model: {
                "overall": summary["verdicts"][model],
                "structures": {s: e["verdict"] for s, e in summary["results"][model].items()},
            }
            for model in names
        },
        "summary": summary,
        "worst_cases": worst,
        "skipped": [dict(s) for s in skipped],
        "figures": {
            "box_plots": boxes.relative_to(out).as_posix(),
            "worst_cases": [w["figure"] for w in worst],
        },
        "cases": case_rows(cases),
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(_html(doc, doc["figures"]), encoding="utf-8")
    return [json_path, html_path, *written]
