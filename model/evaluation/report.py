"""Evaluation reports: per-case metrics and Table-1-style summaries (JSON + Markdown).

HD95 here is the true 95th-percentile symmetric Hausdorff distance in mm on the CT's own voxel
spacing; the paper's reference code reported the maximum Hausdorff distance in voxels x 0.1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from model.evaluation.metrics import CaseMetrics, MetricSummary, summarize

HD95_NOTE = (
    "HD95 is the 95th percentile of the pooled symmetric surface distances, in mm on the CT's "
    "own voxel spacing (the paper's reference code computed the maximum Hausdorff distance in "
    "voxel units x 0.1). Confidence intervals: percentile bootstrap of the mean, 1000 "
    "resamples, seeded."
)


def _fmt(s: MetricSummary, digits: int = 3) -> str:
    if math.isnan(s["mean"]):
        return "n/a"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def summarize_models(results: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Per model: ``{"summary": {metric: MetricSummary}, "cases": [...]}``."""
    out: dict[str, Any] = {}
    for name, rows in results["models"].items():
        metrics = [CaseMetrics(r["dice"], r["iou"], r["hd95_mm"]) for r in rows]
        out[name] = {"summary": summarize(metrics, seed=seed) if metrics else {}, "cases": rows}
    return out


def markdown_table(summaries: dict[str, Any], title: str) -> str:
    """A Markdown table of Dice, IoU and HD95 (mm) with 95 % CIs, one row per model."""
    lines = [
        f"### {title}",
        "",
        "| model | cases | Dice [95% CI] | IoU [95% CI] | HD95 mm [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for name, entry in summaries.items():
        s = entry["summary"]
        if not s:
            lines.append(f"| {name} | 0 | | | |")
            continue
        lines.append(
            f"| {name} | {s['dice']['n']} | {_fmt(s['dice'])} | {_fmt(s['iou'])} | "
            f"{_fmt(s['hd95_mm'], 1)} |"
        )
    return "\n".join(lines)


def write_evaluation_report(results: dict[str, Any], out_dir: Path, seed: int = 0) -> list[Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize_models(results, seed)
    doc = {
        "data": results["data"],
        "skipped": results["skipped"],
        "models": summaries,
        "hd95_definition": HD95_NOTE,
        "bootstrap_seed": seed,
    }
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(doc, indent=2, default=float))
    md = [
        "# Evaluation report",
        "",
        f"Data: `{results['data']}`",
        "",
        markdown_table(summaries, "Segmentation accuracy"),
        "",
        HD95_NOTE,
        "",
    ]
    if results["skipped"]:
        md += ["## Skipped cases", ""]
        md += [f"- {s['case_id']}: [{s['code']}] {s['detail']}" for s in results["skipped"]]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    return [json_path, md_path]
