"""The paper's experiments on synthetic phantoms: Table 1, Fig. 5, Tables 3/4a, targets.

:func:`write_experiment_report` assembles ``report.md``, ``report.json`` and PNG figures from
evaluated results; :mod:`model.lab.experiment_runs` (``llmctv experiments``) evaluates the models.

Coordinates: metrics and masks are on each CT's own grid, ``(k, j, i)`` in DICOM LPS mm
(:mod:`model.imaging.geometry`); HD95 is in mm.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from model.evaluation.report import HD95_NOTE, summarize_models
from model.lab.experiment_markdown import SYNTHETIC_STATEMENT, ci_text, render_markdown
from model.lab.perturbation import NODAL_RATIO_TARGET, SIDE_TARGET, ci_summary
from model.lab.phantoms import LATERALITY_FLIP, N_SWITCH, SPEC_VERSION
from model.text.clinical import ClinicalRecord, read_clinical_csv

__all__ = [
    "EXTRA_TITLES",
    "SYNTHETIC_STATEMENT",
    "text_dependent_breakdown",
    "training_summary",
    "write_experiment_report",
]

log = logging.getLogger(__name__)

DICE_TARGET = 0.85
MULTIMODAL, VISION = "multimodal", "vision-only"
GROUPS: dict[str, Callable[[ClinicalRecord], bool]] = {
    "N+ (N1-N3)": lambda r: any(d.node_positive for d in r.diagnoses),
    "N0 / N1mi": lambda r: not any(d.node_positive for d in r.diagnoses),
    "left": lambda r: [d.side.value for d in r.diagnoses] == ["left"],
    "right": lambda r: [d.side.value for d in r.diagnoses] == ["right"],
    "bilateral": lambda r: len(r.diagnoses) == 2,
}
_GAP = "Vision-only clearly below multimodal on"
EXTRA_TITLES = ("Table 3: data efficiency", "Table 4a: tuning modes")


# --- text-dependent breakdown ----------------------------------------------------------------
def _paired(
    rows: Mapping[str, Sequence[Mapping[str, Any]]], a: str, b: str, ids: set[str], seed: int
) -> dict[str, float | int]:
    """CI of the per-case Dice difference ``a - b`` over the cases ``ids`` both evaluated."""
    da = {r["case_id"]: r["dice"] for r in rows[a] if r["case_id"] in ids}
    db = {r["case_id"]: r["dice"] for r in rows[b] if r["case_id"] in ids}
    return ci_summary([da[c] - db[c] for c in sorted(set(da) & set(db))], seed)


def text_dependent_breakdown(
    results: Mapping[str, Any],
    records: Mapping[str, ClinicalRecord] | None = None,
    kinds: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Dice per model for N+ vs N0/N1mi and left vs right cases, where vision-only must fail.

    Parameters
    ----------
    results
        Output of :func:`model.workflows.evaluate_cases`.
    records
        ``case_id -> record``; read from ``<results["data"]>/clinical.csv`` when omitted.
    kinds
        ``model -> "multimodal" | "vision-only"``; each multimodal/vision-only pair gets the
        paired per-case Dice difference (multimodal minus vision-only) per group.
    seed
        Bootstrap seed.

    Returns
    -------
    dict
        ``groups``: ``{group: {model: CI summary of Dice}}``; ``paired``:
        ``{group: {"A - B": CI summary of the difference}}``.
    """
    if records is None:
        records = read_clinical_csv(Path(results["data"]) / "clinical.csv")
    rows = results["models"]
    kinds = kinds or {}
    pairs = [
        (a, b) for a in rows for b in rows if kinds.get(a) == MULTIMODAL and kinds.get(b) == VISION
    ]
    groups: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for group, belongs in GROUPS.items():
        ids = {c for c, r in records.items() if belongs(r)}
        groups[group] = {
            m: ci_summary([r["dice"] for r in rs if r["case_id"] in ids], seed)
            for m, rs in rows.items()
        }
        paired[group] = {f"{a} - {b}": _paired(rows, a, b, ids, seed) for a, b in pairs}
    return {"groups": groups, "paired": paired}


# --- targets ---------------------------------------------------------------------------------
def _target(name: str, measured: str, ok: bool | None, criterion: str) -> dict[str, Any]:
    status = "NOT MEASURED" if ok is None else ("PASS" if ok else "MISS")
    return {"target": name, "measured": measured, "status": status, "criterion": criterion}


def _missing(name: str, needs: str) -> dict[str, Any]:
    """A NOT MEASURED line for a target that no given model could be measured for."""
    return _target(name, f"not measured: the inputs hold no {needs}", None, f"needs {needs}")


def _dice_targets(table1: Mapping[str, Any], kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for split, entries in table1.items():
        for model, entry in entries.items():
            if kinds.get(model) != MULTIMODAL:
                continue
            s = entry["summary"].get("dice", {"n": 0, "mean": math.nan})
            ok = None if s["n"] == 0 else s["mean"] >= DICE_TARGET
            name = f"Multimodal Dice >= {DICE_TARGET} ({model}, {split})"
            out.append(_target(name, ci_text(s), ok, "mean Dice over cases"))
    return out


def _gap_targets(
    breakdown: Mapping[str, Any], perturbation: Mapping[str, Any], seed: int
) -> list[dict[str, Any]]:
    """Vision-only clearly below multimodal: 95 % CI of the paired Dice gap above 0."""
    crit = "95 % bootstrap CI of the paired per-case Dice difference lies above 0"
    out = []
    for split, bd in breakdown.items():
        for pair, s in bd["paired"]["N+ (N1-N3)"].items():
            ok = None if s["n"] < 2 else s["ci_low"] > 0
            out.append(_target(f"{_GAP} N+ cases ({pair}, {split})", ci_text(s), ok, crit))
    rows = perturbation.get("cases", [])
    kinds = perturbation.get("models", {})
    for a in (m for m, k in kinds.items() if k == MULTIMODAL):
        for b in (m for m, k in kinds.items() if k == VISION):
            diffs = _perturbed_dice_gap(rows, a, b)
            s = ci_summary(diffs, seed)
            ok = None if s["n"] < 2 else s["ci_low"] > 0
            name = f"{_GAP} perturbed notes, Dice vs their recomputed truth ({a} - {b})"
            out.append(_target(name, ci_text(s), ok, crit))
    return out


def _perturbed_dice_gap(rows: Sequence[Mapping[str, Any]], a: str, b: str) -> list[float]:
    """Per (split, case, kind): Dice of ``a`` minus Dice of ``b`` against the perturbed truth."""

    def key(r: Mapping[str, Any]) -> tuple[str, str, str]:
        return (r["split"], r["case_id"], r["kind"])

    def score(r: Mapping[str, Any]) -> float:
        if r["kind"] == LATERALITY_FLIP:
            return float(r["dice_perturbed"])
        positive = r["perturbed_note"] == r["node_positive_note"]
        return float(r["dice_node_positive"] if positive else r["dice_node_negative"])

    mine = {key(r): score(r) for r in rows if r["model"] == a}
    theirs = {key(r): score(r) for r in rows if r["model"] == b}
    return [mine[k] - theirs[k] for k in sorted(set(mine) & set(theirs))]


def _perturbation_targets(perturbation: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    specs = (
        (
            LATERALITY_FLIP,
            "side_fraction_flipped",
            f">= {SIDE_TARGET:.0%} of CTV voxels on the newly named side after a laterality flip",
            SIDE_TARGET,
            True,
        ),
        (
            N_SWITCH,
            "nodal_ratio",
            f"N+ -> N0 shrinks the nodal-region volume to < "
            f"{NODAL_RATIO_TARGET:.0%} of its N+ value",
            NODAL_RATIO_TARGET,
            False,
        ),
    )
    for model, kind_of in perturbation.get("models", {}).items():
        if kind_of != MULTIMODAL:
            continue
        for kind, measure, text, limit, at_least in specs:
            entry = perturbation["summary"][model][kind]
            s = entry[measure]
            ok = None if s["n"] == 0 else (s["mean"] >= limit if at_least else s["mean"] < limit)
            met = f"; cases meeting it: {entry['cases_meeting']}/{entry['n_cases']}"
            crit = "mean over cases (undefined cases are left out of the mean, counted as misses)"
            out.append(_target(f"{text} ({model})", ci_text(s) + met, ok, crit))
    return out


# --- report ----------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _figures(out_dir: Path, perturbation: Mapping[str, Any]) -> list[str]:
    """Overlay PNGs relative to ``out_dir`` (copied into ``out_dir/figures`` if elsewhere)."""
    rel = []
    for name in perturbation.get("overlays", []):
        src = Path(name).resolve()
        if not src.is_relative_to(out_dir.resolve()):
            dst = out_dir / "figures" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            src = dst.resolve()
        rel.append(str(src.relative_to(out_dir.resolve())))
    return rel


def _summary_figure(out_dir: Path, table1: Mapping[str, Any], pert: Mapping[str, Any]) -> str:
    from model.lab.figures import save_summary_figure

    d_labels = [f"{m}/{s}" for s, e in table1.items() for m in e]
    d_stats = [e[m]["summary"].get("dice", ci_summary([])) for e in table1.values() for m in e]
    models = list(pert.get("models", {}))
    summ = pert.get("summary", {})
    panels = [
        ("Table 1: Dice", d_labels, d_stats, DICE_TARGET),
        (
            "Fig. 5: side fraction after flip",
            models,
            [summ[m][LATERALITY_FLIP]["side_fraction_flipped"] for m in models],
            SIDE_TARGET,
        ),
        (
            "Fig. 5: nodal volume ratio N0/N+",
            models,
            [summ[m][N_SWITCH]["nodal_ratio"] for m in models],
            NODAL_RATIO_TARGET,
        ),
    ]
    save_summary_figure(panels, out_dir / "figures" / "summary.png")
    return "figures/summary.png"


def _rows_ran(table: Mapping[str, Any] | None) -> str:
    """``"ran: a, b"`` listing the rows (checkpoints) of an optional table, or ``"not run"``."""
    if not table:
        return "not run"
    rows = sorted({m for split in table.values() for m in split.get("models", split)})
    return "ran: " + ", ".join(rows)


def training_summary(config: Mapping[str, Any]) -> str:
    """One line on how a checkpoint was trained, from its ``config.json`` document."""
    t = config.get("training", {})
    steps = t.get("steps_per_epoch", 0) * t.get("epoch", 0)
    split = config.get("split", {})
    net = config.get("network", {})
    n_train = len(split.get("train", []))
    parts = [
        f"{steps} steps x batch {t.get('batch_size', '?')}" if steps else "steps unknown",
        f"lr {t.get('lr', '?')}",
        f"{n_train} training cases" if n_train else "",
        f"tuning {net.get('tuning', '?')}" if net.get("multimodal", True) else "vision-only",
    ]
    if t.get("pair_fraction"):
        parts.append(f"paired notes {t['pair_fraction']:.0%}")
    if "init_from" in config:
        parts.append(f"warm start from {config['init_from']['checkpoint']}")
    return ", ".join(p for p in parts if p)


def write_experiment_report(
    out_dir: Path,
    table1: Mapping[str, Mapping[str, Any]],
    perturbation: Mapping[str, Any],
    extra_tables: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    *,
    records: Mapping[str, Mapping[str, ClinicalRecord]] | None = None,
    extra_text: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``report.md``, ``report.json`` and ``figures/*.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        Report folder (created).
    table1
        ``{split: evaluate_cases output}`` (e.g. ``internal``, ``external``).
    perturbation
        Output of :func:`model.lab.perturbation.perturbation_study` (or ``merge_studies``); its
        ``models`` entry tells which model is multimodal and which vision-only.
    extra_tables
        ``{title: {split: evaluate_cases output}}``, e.g. ``"Table 3: data efficiency"``
        with one model per training fraction; absent titles are reported as not run.
    records
        ``{split: {case_id: record}}``; read from each split's ``clinical.csv`` if omitted.
    extra_text
        ``{title: {"perturbation": study, "training": {row: summary line}}}``: how well each
        row of an extra table follows the text (Fig. 5 measures, all splits merged) and how
        it was trained.
    seed
        Bootstrap seed.

    Returns
    -------
    list[Path]
        ``[report.json, report.md]``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = dict(perturbation.get("models", {}))
    t1 = {s: summarize_models(dict(r), seed) for s, r in table1.items()}
    breakdown = {
        s: text_dependent_breakdown(r, (records or {}).get(s), kinds, seed)
        for s, r in table1.items()
    }
    extras = {
        title: {s: summarize_models(dict(r), seed) for s, r in per_split.items()}
        for title, per_split in (extra_tables or {}).items()
    }
    gap = _missing("Vision-only below multimodal", "multimodal + vision-only pair")
    targets = [
        *(_dice_targets(t1, kinds) or [_missing("Multimodal Dice", "multimodal model")]),
        *(_gap_targets(breakdown, perturbation, seed) or [gap]),
        *(_perturbation_targets(perturbation) or [_missing("Fig. 5", "multimodal model")]),
    ]
    figures = [_summary_figure(out_dir, t1, perturbation), *_figures(out_dir, perturbation)]
    ran = {
        "Table 1": "ran" if t1 else "not run",
        "Fig. 5": "ran" if perturbation.get("cases") else "not run",
    }
    ran.update({t: _rows_ran(extras.get(t)) for t in (*EXTRA_TITLES, *extras)})
    doc = {
        "synthetic_data": SYNTHETIC_STATEMENT,
        "spec_version": SPEC_VERSION,
        "model_kinds": kinds,
        "table1": t1,
        "skipped": {s: r.get("skipped", []) for s, r in table1.items()},
        "text_dependent": breakdown,
        "perturbation": {**perturbation, "overlays": figures[1:]},
        "targets": targets,
        "extra_tables": extras,
        "extra_text_following": {
            t: {"summary": e["perturbation"]["summary"], "training": e.get("training", {})}
            for t, e in (extra_text or {}).items()
        },
        "ran": ran,
        "figures": figures,
        "hd95_definition": HD95_NOTE,
        "bootstrap_seed": seed,
    }
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")
    md = render_markdown(
        t1, breakdown, perturbation, targets, extras, ran, figures, table1, extra_text or {}
    )
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    log.info("experiment report written: %d targets, %d figures", len(targets), len(figures))
    return [json_path, md_path]
