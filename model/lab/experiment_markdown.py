"""Markdown of the experiment report (:func:`model.lab.experiments.write_experiment_report`).

Numbers come in as JSON-ready summaries (means and 95 % bootstrap CIs); distances are mm on
each CT's own grid, sides are LPS (+x = the patient's left).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.evaluation.report import HD95_NOTE, markdown_table
from model.lab.phantoms import LATERALITY_FLIP, N_SWITCH, SPEC_VERSION

SYNTHETIC_STATEMENT = (
    f"**All data in this report are SYNTHETIC.** Every CT, contour and clinical note comes from "
    f"the llmctv breast-phantom generator (`shared/specs/breast-phantom.md`, spec "
    f"v{SPEC_VERSION}): geometric solids with CT-like HU values and noise, and a ground-truth "
    "CTV computed by a fixed rule from the note (side, surgery, N stage). No patient data were "
    "used. The numbers show whether the software and the model learn to follow the text on a "
    "task built to need it; they are not evidence of clinical accuracy, and the paper's "
    "numbers on real patients are not comparable (no inter-observer variability, no real "
    "anatomy, a deterministic rule)."
)


def ci_text(s: Mapping[str, Any], digits: int = 3) -> str:
    """``mean [low, high] (n=...)`` of a CI summary, or ``n/a`` when nothing is defined."""
    if s["n"] == 0 or math.isnan(s["mean"]):
        return "n/a (no defined value)"
    mean, low, high = (f"{s[k]:.{digits}f}" for k in ("mean", "ci_low", "ci_high"))
    return f"{mean} [{low}, {high}] (n={s['n']})"


def _breakdown_md(split: str, bd: Mapping[str, Any]) -> list[str]:
    models = sorted({m for g in bd["groups"].values() for m in g})
    pairs = sorted({p for g in bd["paired"].values() for p in g})
    head = ["group", *(f"{m} Dice" for m in models), *(f"{p} (paired)" for p in pairs)]
    lines = [f"### {split}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, per_model in bd["groups"].items():
        cells = [ci_text(per_model[m]) for m in models]
        cells += [ci_text(bd["paired"][group][p]) for p in pairs]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _fig5_md(perturbation: Mapping[str, Any]) -> list[str]:
    lat = [
        "| model | type | cases | side fraction, original note | side fraction after flip "
        "| cases >= 0.95 | Dice vs flipped truth |",
        "|---|---|---|---|---|---|---|",
    ]
    nsw = [
        "| model | type | cases | nodal cc with N+ note | nodal cc with N0/N1mi note | ratio "
        "N0/N+ | cases < 0.05 | ratio of the ground truths | Dice (N+ note) | Dice (N0 note) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, kind_of in perturbation.get("models", {}).items():
        a, b = (
            perturbation["summary"][model][LATERALITY_FLIP],
            perturbation["summary"][model][N_SWITCH],
        )
        lat.append(
            f"| {model} | {kind_of} | {a['n_cases']} | {ci_text(a['side_fraction_original'])} | "
            f"{ci_text(a['side_fraction_flipped'])} | {a['cases_meeting']}/{a['n_cases']} | "
            f"{ci_text(a['dice_perturbed'])} |"
        )
        nsw.append(
            f"| {model} | {kind_of} | {b['n_cases']} | {ci_text(b['nodal_cc_node_positive'], 1)} "
            f"| {ci_text(b['nodal_cc_node_negative'], 1)} | {ci_text(b['nodal_ratio'])} | "
            f"{b['cases_meeting']}/{b['n_cases']} | {ci_text(b['nodal_ratio_truth'])} | "
            f"{ci_text(b['dice_node_positive'])} | "
            f"{ci_text(b['dice_node_negative'])} |"
        )
    return ["### Laterality flip", "", *lat, "", "### N-stage switch", "", *nsw, ""]


def _num(value: float) -> str:
    """Three decimals, or ``undefined`` for NaN (empty prediction / no N+ nodal volume)."""
    return "undefined" if math.isnan(value) else f"{value:.3f}"


def _per_case_md(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| split | case | model | kind | original note | perturbed note | measure | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == LATERALITY_FLIP:
            measure = f"side fraction after flip {_num(r['side_fraction_flipped'])}"
        else:
            measure = f"nodal ratio {_num(r['nodal_ratio'])}"
        ok = "met" if r["meets_target"] else "missed"
        lines.append(
            f"| {r['split']} | {r['case_id']} | {r['model']} | {r['kind']} | "
            f"{r['original_note']} | {r['perturbed_note']} | {measure} | {ok} |"
        )
    return lines


def _extra_md(
    title: str, per_split: Mapping[str, Any], text: Mapping[str, Any] | None
) -> list[str]:
    lines = [f"## {title}", ""]
    for split, entries in per_split.items():
        lines += [markdown_table(entries, f"{title} — {split}"), ""]
    if not text:
        return lines
    summary, training = text["perturbation"]["summary"], text.get("training", {})
    lines += [
        f"### {title} — does the model follow the text? (Fig. 5 measures, all splits)",
        "",
        "| row | side fraction after flip | flips >= 0.95 | nodal ratio N0/N+ | switches < 0.05 "
        "| trained |",
        "|---|---|---|---|---|---|",
    ]
    for row, per_kind in summary.items():
        a, b = per_kind[LATERALITY_FLIP], per_kind[N_SWITCH]
        lines.append(
            f"| {row} | {ci_text(a['side_fraction_flipped'])} | "
            f"{a['cases_meeting']}/{a['n_cases']} | {ci_text(b['nodal_ratio'])} | "
            f"{b['cases_meeting']}/{b['n_cases']} | {training.get(row, '')} |"
        )
    return [*lines, ""]


def render_markdown(
    t1: Mapping[str, Any],
    breakdown: Mapping[str, Any],
    perturbation: Mapping[str, Any],
    targets: Sequence[Mapping[str, Any]],
    extras: Mapping[str, Any],
    ran: Mapping[str, str],
    figures: Sequence[str],
    table1: Mapping[str, Mapping[str, Any]],
    extra_text: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """The report's Markdown lines, from the summaries :func:`write_experiment_report` built.

    Parameters
    ----------
    t1
        ``{split: summarize_models output}`` (Table 1).
    breakdown
        ``{split: text_dependent_breakdown output}``.
    perturbation
        The perturbation-study document (sides in LPS, volumes in cc).
    targets
        Target rows (``target``, ``measured``, ``status``, ``criterion``).
    extras
        ``{title: {split: summarize_models output}}`` (Tables 3 and 4a when run).
    ran
        Experiment name -> ``"ran"``, ``"ran: rows"`` or ``"not run"``.
    figures
        PNG paths relative to the report folder.
    table1
        The raw ``{split: evaluate_cases output}`` (data folder, skipped cases).
    extra_text
        ``{title: {"perturbation": study, "training": {row: line}}}`` for the extra tables.
    """
    md = [
        "# Experiment report: LLM-driven CTV contouring on synthetic phantoms",
        "",
        f"> {SYNTHETIC_STATEMENT}",
        "",
    ]
    kinds = perturbation.get("models", {})
    md += ["Models: " + ", ".join(f"`{m}` ({k})" for m, k in kinds.items()), ""]
    md += ["## Table 1: segmentation accuracy", ""]
    for split, entries in t1.items():
        md += [markdown_table(entries, f"{split} (`{table1[split].get('data', '')}`)"), ""]
        md += [f"- skipped: {s['case_id']} [{s['code']}]" for s in table1[split].get("skipped", [])]
    md += [
        HD95_NOTE,
        "",
        "## Where the text matters: Dice by N stage and side",
        "",
        "Vision-only cannot see the N stage (nothing on the CT marks the nodes); "
        "paired columns are multimodal minus vision-only on the same cases.",
        "",
    ]
    for split, bd in breakdown.items():
        md += _breakdown_md(split, bd)
    md += [
        "## Fig. 5: text perturbation on the same CT",
        "",
        f"Side of a voxel: LPS x of its centre relative to the midline = "
        f"{perturbation.get('midline', '')}. Nodal region: union of the ground-truth "
        "CTV_LN_* masks of the node-positive version of the case; the breast or chest-wall CTV "
        "can overlap it, so the ground truth of the N0 note keeps a small volume there "
        "(its ratio is shown as the floor a perfect model would reach).",
        "",
    ]
    md += _fig5_md(perturbation)
    md += [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    md += [
        "## Targets",
        "",
        "Each phantom target with its measured value (mean [95 % CI]) and PASS, MISS or "
        "NOT MEASURED, as measured: a MISS is not adjusted away.",
        "",
    ]
    md += [
        f"- **{t['status']}** — {t['target']}: {t['measured']} (criterion: {t['criterion']})"
        for t in targets
    ] + [""]
    for title, per_split in extras.items():
        md += _extra_md(title, per_split, (extra_text or {}).get(title))
    md += ["## Which experiments ran", ""]
    md += [f"- {name}: {status}" for name, status in ran.items()] + [""]
    md += [
        "## Appendix: per-case perturbation results",
        "",
        *_per_case_md(perturbation.get("cases", [])),
    ]
    return md
