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
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation.commissioning_figures import (
    CaseSnapshot,
    fixed_digits,
    render_box_plots,
    render_snapshot,
)
from model.evaluation.commissioning_metrics import CaseResult, higher_is_better, metric_label


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
    low, high = fixed_digits(summary["ci_low"], d), fixed_digits(summary["ci_high"], d)
    text = f"{fixed_digits(mean, d)} [{low}, {high}]"
    if summary.get("n_infinite"):
        text += f" ({summary['n_infinite']} ∞)"
    return text


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
            [
                "name",
                "role",
                "checkpoint",
                "hash",
                "structures",
                "N-stage rule",
                "note rule",
                "TTA",
                "verdict",
            ],
            [
                [
                    _e(name),
                    _e(info["role"]),
                    f"<code>{_e(info['path'])}</code>",
                    _e(info.get("checkpoint_hash", "")),
                    _e(", ".join(info.get("structures", []))),
                    _e(_rule_cell(info)),
                    _e(_note_rule_cell(info)),
                    "mirror" if info.get("mirror_tta") else "none",
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
            f"{_e(fixed_digits(item['value'], 3))}. Reference solid, {_e(candidate)} dashed"
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
        Per model name: ``role``, ``path``, ``checkpoint_hash``, ``structures`` (and
        ``mirror_tta``, ``stage_rule``, ``note_rule``, ... when known).
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


def _note_rule_cell(info: dict[str, Any]) -> str:
    """Whether what a record does not call for was removed, and how often (``-``: unknown)."""
    if "note_rule" not in info:
        return "-"
    if not info["note_rule"]:
        return "off (the network alone)"
    return f"on (removed {info.get('note_rule_removed', 0)} structure(s))"


def _rule_cell(info: dict[str, Any]) -> str:
    """The version's N-stage rule and how often it removed a structure (``-``: none)."""
    rule = info.get("stage_rule") or []
    if not rule:
        return "-"
    return f"{'; '.join(rule)} (removed {info.get('stage_rule_removed', 0)} structure(s))"
