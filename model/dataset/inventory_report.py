"""The inventory of an export as JSON (``inventory.json``) and HTML (``inventory.html``).

Both list the problems first (blocking, then warnings), then the summary, the tables of
structures by N stage and by surgery (per treated side), and one row per case. Patients appear
only as the salted labels of :mod:`model.dataset.patients`. Every text that comes from the
export (case ids, ROI names) is escaped in the HTML.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model.dataset.case_inventory import CaseInventory
from model.dataset.inventory import Inventory
from model.dataset.problems import PROBLEM_CODES, Problem, Severity

REPORT_FORMAT = "llmctv-dataset-check/1"
JSON_NAME = "inventory.json"
HTML_NAME = "inventory.html"


def inventory_json(inventory: Inventory) -> dict[str, Any]:
    """The inventory as plain JSON data."""
    used = sorted({p.code for p in inventory.problems})
    return {
        "format": REPORT_FORMAT,
        "created": inventory.created,
        "data": inventory.data,
        "verdict": "blocked" if inventory.blocking else "pass",
        "summary": inventory.summary,
        "problems": [_problem(p) for p in inventory.problems],
        "problem_codes": {
            code: {"severity": PROBLEM_CODES[code][0].value, "meaning": PROBLEM_CODES[code][1]}
            for code in used
        },
        "tables": inventory.tables,
        "structure_map": inventory.structure_map,
        "options": asdict(inventory.options),
        "cases": [_case(c) for c in inventory.cases],
    }


def _problem(p: Problem) -> dict[str, Any]:
    return {
        "severity": p.severity.value,
        "code": p.code,
        "case": p.case,
        "roi": p.roi,
        "detail": p.detail,
    }


def _case(case: CaseInventory) -> dict[str, Any]:
    data = asdict(case)
    data["problems"] = [_problem(p) for p in case.problems]
    data["checked"] = case.checked
    return data


def write_report(inventory: Inventory, out_dir: Path) -> tuple[Path, Path]:
    """Write ``inventory.json`` and ``inventory.html`` into ``out_dir`` (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = inventory_json(inventory)
    json_path = _write(out_dir / JSON_NAME, json.dumps(data, indent=2) + "\n")
    html_path = _write(out_dir / HTML_NAME, render_html(data))
    return json_path, html_path


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- HTML ---------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.blocking { background: #fde2e2; }
.warning { background: #fff5d6; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.4em 0.8em; display: inline-block; }
.pass { background: #dff5df; }
small { color: #666; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for n, row in enumerate(rows):
        cls = f' class="{classes[n]}"' if classes and classes[n] else ""
        out.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _td(value: object, num: bool = False) -> str:
    return f'<td class="num">{_e(value)}</td>' if num else f"<td>{_e(value)}</td>"


def render_html(data: dict[str, Any]) -> str:
    """A readable page of :func:`inventory_json`'s data."""
    summary = data["summary"]
    verdict = data["verdict"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>llmctv dataset check</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Dataset check</h1>",
        f"<p><small>{_e(data['data'])} · {_e(data['created'])} · structure map "
        f"{_e(data['structure_map']['source'])} (sha256 "
        f"{_e(data['structure_map']['sha256'][:12])})</small></p>",
        f"<p class='verdict {'blocking' if verdict == 'blocked' else 'pass'}'>"
        f"{'BLOCKED' if verdict == 'blocked' else 'PASS'}: {summary['blocking']} blocking "
        f"problems, {summary['warnings']} warnings</p>",
        _problems_html(data),
        "<h2>Summary</h2>",
        _summary_html(summary),
        "<h2>Structures by N stage</h2>",
        "<p><small>Per treated side of the checked cases: how many sides have each "
        "structure.</small></p>",
        _category_html(data["tables"], "n_stage", "N stage"),
        "<h2>Structures by surgery</h2>",
        _category_html(data["tables"], "surgery", "surgery"),
        "<h2>Cases</h2>",
        _cases_html(data["cases"]),
        "<h2>Problem codes</h2>",
        _table(
            ["code", "severity", "meaning"],
            [
                [_td(code), _td(v["severity"]), _td(v["meaning"])]
                for code, v in data["problem_codes"].items()
            ],
        ),
        "<p><small>Patients are shown as labels hashed with a salt drawn for this report; "
        "they group cases within this report only.</small></p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _problems_html(data: dict[str, Any]) -> str:
    problems = data["problems"]
    if not problems:
        return "<h2>Problems</h2><p>None.</p>"
    rows = [
        [_td(p["severity"]), _td(p["code"]), _td(p["case"]), _td(p["roi"]), _td(p["detail"])]
        for p in problems
    ]
    classes = [p["severity"] for p in problems]
    head = ["severity", "code", "case", "ROI", "detail"]
    return "<h2>Problems</h2>" + _table(head, rows, classes)


def _summary_html(summary: dict[str, Any]) -> str:
    counts = [
        ("CSV rows", summary["csv_rows"]),
        ("case folders read", summary["cases"]),
        ("cases checked (CT and structures placed)", summary["cases_checked"]),
        ("cases with a blocking problem", summary["cases_blocked"]),
    ]
    out = _table(["", "count"], [[_td(k), _td(v, num=True)] for k, v in counts])
    rows = []
    for name, v in summary["volumes_cc"].items():
        if v["n"]:
            rows.append(
                [
                    _td(name),
                    _td(v["n"], True),
                    _td(v["min"], True),
                    _td(v["median"], True),
                    _td(v["max"], True),
                ]
            )
        else:
            rows.append([_td(name), _td(0, True), _td(""), _td(""), _td("")])
    head = ["structure", "(structure, side) found", "min cc", "median cc", "max cc"]
    return out + _table(head, rows)


def _category_html(tables: dict[str, Any], key: str, label: str) -> str:
    names = tables["structures"]
    nodal = set(tables["nodal"])
    head = [label, "sides", *[f"{n} (nodal)" if n in nodal else n for n in names]]
    if nodal:
        head.append("any nodal")
    rows = []
    for category, row in tables[key].items():
        cells = [_td(category), _td(row["sides"], True)]
        cells += [_td(_share(row["structures"][n], row["sides"]), True) for n in names]
        if nodal:
            cells.append(_td(_share(row["any_nodal"], row["sides"]), True))
        rows.append(cells)
    return _table(head, rows)


def _share(count: int, total: int) -> str:
    return f"{count}/{total}" if total else "-"


def _cases_html(cases: list[dict[str, Any]]) -> str:
    rows, classes = [], []
    for case in cases:
        severities = {p["severity"] for p in case["problems"]}
        classes.append(
            "blocking"
            if Severity.BLOCKING.value in severities
            else ("warning" if severities else "")
        )
        clinical = "; ".join(
            f"{side}: {c['surgery']}, N{c['n_stage']}" for side, c in case["clinical"].items()
        )
        structures = "; ".join(
            f"{s['structure']} {s['side']} {s['volume_cc']:.1f} cc"
            + (f" ({s['outside_body_fraction']:.0%} outside)" if s["outside_body_fraction"] else "")
            for s in case["structures"]
        )
        union = case["union"]
        union_text = f"{union['volume_cc']:.1f} cc" if union else ""
        unmatched = ", ".join(r["name"] for r in case["rois"] if r["kind"] == "unmatched")
        ignored = sum(r["kind"] == "ignored" for r in case["rois"])
        codes = ", ".join(sorted({p["code"] for p in case["problems"]}))
        rows.append(
            [
                _td(case["case_id"]),
                _td(case["patient"]),
                _td(case["split"]),
                _td(clinical),
                _td(structures),
                _td(union_text),
                _td(unmatched),
                _td(ignored, True),
                _td(codes),
            ]
        )
    head = [
        "case",
        "patient",
        "split",
        "clinical (CSV)",
        "structures found",
        "union ROI",
        "unmatched ROIs",
        "ignored ROIs",
        "problems",
    ]
    return _table(head, rows, classes)
