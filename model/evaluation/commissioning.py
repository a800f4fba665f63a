"""Commissioning statistics: per-structure metrics, bootstrap CIs, paired differences, verdicts.

A department commissions a model on its own cases: for every case, structure and model the
metrics of :func:`structure_metrics` are computed on the CT's own grid; this module turns
them into what a physicist signs:

- per model and structure, the mean of every metric with a percentile-bootstrap CI
  (:func:`model.evaluation.metrics.bootstrap_ci`), and the same per clinical category
  (surgery, N stage, side; :func:`categories_of`);
- candidate minus current as paired differences (per case, then bootstrapped), when a second
  model is given;
- PASS or FAIL per structure against the site's acceptance criteria (:class:`Acceptance`,
  read from a TOML file by :func:`load_acceptance`).

**Which cases count for a structure.** A case is *evaluated* for a structure when the
reference or the prediction contains it. A case where both are empty is an agreement on
absence: it is counted (``agreed_absent``) but left out of the means, so that e.g. the many
N0 cases without nodal regions do not inflate the nodal metrics. A structure the model draws
where the reference has none (``spurious``, e.g. internal mammary nodes for N1 at a site that
treats them only for N2-N3) scores Dice 0, surface Dice 0, infinite distances and an added
path length of 0; one it misses (``missed``) scores the same, except the added path length,
which is the whole reference contour. Infinite values are kept: a mean with one is infinite,
and fails any upper limit.

Masks are ``(k, j, i)`` on one grid with ``spacing = (dk, dj, di)`` in mm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.errors import ConfigurationError
from model.evaluation.commissioning_acceptance import (
    DEFAULT_CRITERIA,
    Acceptance,
    load_acceptance,
    parse_acceptance,
)
from model.evaluation.commissioning_metrics import (
    CATEGORIES,
    CTV,
    CaseResult,
    MetricConfig,
    Statistic,
    StructureResult,
    Verdict,
    case_score,
    categories_of,
    higher_is_better,
    metric_label,
    structure_metrics,
    surface_dice_name,
)
from model.evaluation.metrics import bootstrap_ci

__all__ = [
    "CATEGORIES",
    "CTV",
    "DEFAULT_CRITERIA",
    "Acceptance",
    "Bootstrap",
    "CaseResult",
    "MetricConfig",
    "Statistic",
    "StructureResult",
    "Verdict",
    "case_score",
    "categories_of",
    "higher_is_better",
    "load_acceptance",
    "metric_label",
    "overall_verdict",
    "parse_acceptance",
    "structure_metrics",
    "summarize_commissioning",
    "surface_dice_name",
    "verdict_of",
    "worst_cases",
]


# --- aggregation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap of the mean (:func:`model.evaluation.metrics.bootstrap_ci`)."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def summary(self, values: Sequence[float]) -> dict[str, float | int]:
        """Mean, CI and counts of one metric (NaN left out, infinite kept)."""
        data = np.asarray(values, dtype=np.float64)
        mean, low, high = bootstrap_ci(
            data, n_resamples=self.n_resamples, confidence=self.confidence, seed=self.seed
        )
        return {
            "mean": mean,
            "ci_low": low,
            "ci_high": high,
            "median": float(np.median(data[~np.isnan(data)])) if data.size else math.nan,
            "n": int(np.count_nonzero(~np.isnan(data))),
            "n_infinite": int(np.count_nonzero(np.isinf(data))),
        }


def _counts(results: Sequence[StructureResult]) -> dict[str, int]:
    return {
        "cases": len(results),
        "evaluated": sum(r.evaluated for r in results),
        "reference_present": sum(r.reference_present for r in results),
        "missed": sum(r.reference_present and not r.predicted_present for r in results),
        "spurious": sum(r.predicted_present and not r.reference_present for r in results),
        "agreed_absent": sum(not r.evaluated for r in results),
    }


def _metric_summaries(
    results: Sequence[StructureResult], metrics: Sequence[str], boot: Bootstrap
) -> dict[str, dict[str, float | int]]:
    evaluated = [r for r in results if r.evaluated]
    return {m: boot.summary([r.values[m] for r in evaluated]) for m in metrics}


def _check(
    metric: str, threshold: float, summary: Mapping[str, float | int], statistic: Statistic
) -> dict[str, Any]:
    higher = higher_is_better(metric)
    bound = "ci_low" if higher else "ci_high"
    key = "mean" if statistic == "mean" else bound
    value = float(summary[key])
    passed = (value >= threshold) if higher else (value <= threshold)
    return {
        "metric": metric,
        "statistic": key,
        "value": value,
        "threshold": threshold,
        "comparison": ">=" if higher else "<=",
        "passed": bool(passed and not math.isnan(value)),
    }


def verdict_of(
    summaries: Mapping[str, Mapping[str, float | int]],
    evaluated: int,
    criteria: Mapping[str, float],
    acceptance: Acceptance,
) -> tuple[Verdict, list[dict[str, Any]], str]:
    """PASS / FAIL / NOT_EVALUATED of one structure, its checks, and the reason in words."""
    if evaluated == 0:
        return "NOT_EVALUATED", [], "no case has this structure in the reference or prediction"
    checks = [_check(m, t, summaries[m], acceptance.statistic) for m, t in criteria.items()]
    failed = [c for c in checks if not c["passed"]]
    if evaluated < acceptance.min_cases:
        return "FAIL", checks, f"{evaluated} evaluated cases, fewer than {acceptance.min_cases}"
    if not checks:
        return "FAIL", checks, "no acceptance criterion applies"
    if failed:
        words = ", ".join(
            f"{metric_label(c['metric'])} {c['statistic']} {c['value']:.3g} "
            f"not {c['comparison']} {c['threshold']:g}"
            for c in failed
        )
        return "FAIL", checks, words
    return "PASS", checks, "every criterion met"


def overall_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    """FAIL if a structure fails; PASS if at least one passes and none fails."""
    found = list(verdicts)
    if "FAIL" in found:
        return "FAIL"
    return "PASS" if "PASS" in found else "NOT_EVALUATED"


def _paired(
    cases: Sequence[CaseResult],
    candidate: str,
    current: str,
    structure: str,
    metrics: Sequence[str],
    boot: Bootstrap,
) -> dict[str, Any] | None:
    pairs = []
    for case in cases:
        a, b = case.result(candidate, structure), case.result(current, structure)
        if a is not None and b is not None and (a.evaluated or b.evaluated):
            pairs.append((a, b))
    if not pairs:
        return None
    out: dict[str, Any] = {"cases": len(pairs)}
    for metric in metrics:
        with np.errstate(invalid="ignore"):
            diffs = [a.values[metric] - b.values[metric] for a, b in pairs]
        summary = boot.summary(diffs)
        low, high = float(summary["ci_low"]), float(summary["ci_high"])
        better = higher_is_better(metric)
        if low > 0 or high < 0:
            favours = candidate if (low > 0) == better else current
        else:
            favours = "neither"
        out[metric] = {**summary, "favours": favours}
    return out


def summarize_commissioning(
    cases: Sequence[CaseResult],
    models: Sequence[str],
    structures: Sequence[str],
    acceptance: Acceptance,
    boot: Bootstrap | None = None,
) -> dict[str, Any]:
    """The statistics of the report (JSON-ready; floats may be ``inf`` or ``nan``).

    Parameters
    ----------
    cases
        Every evaluated case.
    models
        Model names, the candidate first; a second is the current model it is compared with.
    structures
        Structure names in report order (:data:`CTV` first).
    acceptance
        The criteria.
    boot
        Bootstrap settings.

    Returns
    -------
    dict
        ``results[model][structure]`` with ``verdict``, ``reason``, ``checks``, ``counts``,
        ``metrics`` (summary per metric) and ``categories[category][level]`` (``counts`` and
        ``metrics``); ``verdicts[model]`` (overall); ``paired[structure]`` (candidate minus
        current, or empty with one model).

    Raises
    ------
    ConfigurationError
        No model, or acceptance criteria for a structure that is not evaluated.
    """
    if not models:
        raise ConfigurationError("commissioning needs at least one model")
    boot = boot or Bootstrap()
    acceptance.check_structures(structures)
    names = acceptance.metrics.names
    results: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, Verdict] = {}
    for model in models:
        per_structure: dict[str, Any] = {}
        for structure in structures:
            rows = [(case, r) for case in cases if (r := case.result(model, structure)) is not None]
            if not rows:
                continue
            plain = [r for _, r in rows]
            counts = _counts(plain)
            summaries = _metric_summaries(plain, names, boot)
            verdict, checks, reason = verdict_of(
                summaries, counts["evaluated"], acceptance.criteria(structure), acceptance
            )
            per_structure[structure] = {
                "verdict": verdict,
                "reason": reason,
                "checks": checks,
                "counts": counts,
                "metrics": summaries,
                "categories": _by_category(rows, names, boot),
            }
        results[model] = per_structure
        verdicts[model] = overall_verdict(s["verdict"] for s in per_structure.values())
    paired: dict[str, Any] = {}
    if len(models) > 1:
        for structure in structures:
            diff = _paired(cases, models[0], models[1], structure, names, boot)
            if diff is not None:
                paired[structure] = diff
    return {
        "metrics": list(names),
        "structures": list(structures),
        "models": list(models),
        "results": results,
        "verdicts": verdicts,
        "paired": paired,
        "bootstrap": {
            "n_resamples": boot.n_resamples,
            "confidence": boot.confidence,
            "seed": boot.seed,
        },
        "acceptance": acceptance.as_dict(),
    }


def _by_category(
    rows: Sequence[tuple[CaseResult, StructureResult]],
    metrics: Sequence[str],
    boot: Bootstrap,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for category in CATEGORIES:
        levels: dict[str, list[StructureResult]] = {}
        for case, result in rows:
            levels.setdefault(case.categories.get(category, "unknown"), []).append(result)
        out[category] = {
            level: {"counts": _counts(group), "metrics": _metric_summaries(group, metrics, boot)}
            for level, group in sorted(levels.items())
        }
    return out


def worst_cases(
    cases: Sequence[CaseResult], model: str, metric: str, n: int = 5
) -> list[tuple[CaseResult, float, str]]:
    """The ``n`` cases with the worst :func:`case_score`: ``(case, value, structure)``."""
    scored = [
        (case, score[0], score[1])
        for case in cases
        if (score := case_score(case, model, metric)) is not None
    ]
    sign: Callable[[float], float] = (lambda v: v) if higher_is_better(metric) else (lambda v: -v)
    return sorted(scored, key=lambda item: sign(item[1]))[:n]
