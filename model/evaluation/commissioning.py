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
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from model.errors import ConfigurationError
from model.evaluation.metrics import bootstrap_ci, dice, hd95
from model.evaluation.surface import (
    APL_TOLERANCE_MM,
    mean_surface_distance,
    path_lengths,
    surface_dices,
)
from model.text.clinical import ClinicalRecord

Verdict = Literal["PASS", "FAIL", "NOT_EVALUATED"]
Statistic = Literal["mean", "ci"]

#: The whole target (union of the structures), evaluated besides the structures.
CTV = "ctv"
#: The clinical categories the metrics are broken down by (:func:`categories_of`).
CATEGORIES = ("surgery", "n_stage", "side")
#: Criteria when no site file is given: surface Dice at 3 mm >= 0.90 for every structure.
DEFAULT_CRITERIA: dict[str, float] = {"surface_dice_3mm": 0.90}
_N_ORDER = ("0", "1mi", "1", "2", "3")


# --- metrics -----------------------------------------------------------------------------------
def surface_dice_name(tolerance_mm: float) -> str:
    """``surface_dice_2mm`` for 2.0, ``surface_dice_2.5mm`` for 2.5."""
    return f"surface_dice_{tolerance_mm:g}mm"


@dataclass(frozen=True)
class MetricConfig:
    """Which tolerances the surface Dice and the added path length use (mm)."""

    surface_dice_tolerances_mm: tuple[float, ...] = (2.0, 3.0)
    apl_tolerance_mm: float = APL_TOLERANCE_MM

    def __post_init__(self) -> None:
        tolerances = (*self.surface_dice_tolerances_mm, self.apl_tolerance_mm)
        if not self.surface_dice_tolerances_mm or not all(
            math.isfinite(t) and t >= 0 for t in tolerances
        ):
            raise ConfigurationError(
                f"tolerances must be finite mm >= 0 (at least one surface Dice tolerance), "
                f"got {self.surface_dice_tolerances_mm} and {self.apl_tolerance_mm}"
            )
        names = [surface_dice_name(t) for t in self.surface_dice_tolerances_mm]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"surface Dice tolerances repeat: {self.surface_dice_tolerances_mm}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """Every metric's key, in report order."""
        sdsc = tuple(surface_dice_name(t) for t in self.surface_dice_tolerances_mm)
        return ("dice", *sdsc, "msd_mm", "hd95_mm", "apl_mm")


def higher_is_better(metric: str) -> bool:
    """Dice and surface Dice: higher is better; distances and path lengths: lower."""
    return metric == "dice" or metric.startswith("surface_dice_")


METRIC_LABELS: dict[str, str] = {
    "dice": "Dice",
    "msd_mm": "mean surface distance (mm)",
    "hd95_mm": "HD95 (mm)",
    "apl_mm": "added path length (mm)",
}


def metric_label(metric: str) -> str:
    """A heading for a metric key, e.g. ``surface Dice 3 mm``."""
    if metric.startswith("surface_dice_"):
        return f"surface Dice {metric.removeprefix('surface_dice_').removesuffix('mm')} mm"
    return METRIC_LABELS.get(metric, metric)


@dataclass(frozen=True)
class StructureResult:
    """One structure of one case for one model."""

    values: dict[str, float]
    reference_present: bool
    predicted_present: bool
    reference_cc: float
    predicted_cc: float
    reference_path_mm: float

    @property
    def evaluated(self) -> bool:
        """Whether the case counts for this structure (reference or prediction non-empty)."""
        return self.reference_present or self.predicted_present


def structure_metrics(
    pred: npt.NDArray[np.generic],
    truth: npt.NDArray[np.generic],
    spacing: Sequence[float],
    config: MetricConfig | None = None,
) -> StructureResult:
    """Every metric of one structure on one case.

    Parameters
    ----------
    pred, truth
        ``(k, j, i)`` masks on one grid (read as ``!= 0``); ``truth`` is the reference.
    spacing
        ``(dk, dj, di)`` in mm.
    config
        Tolerances (default :class:`MetricConfig`).

    Returns
    -------
    StructureResult
        ``values`` holds ``dice``, ``surface_dice_<t>mm`` per tolerance, ``msd_mm``,
        ``hd95_mm`` and ``apl_mm`` (the empty-mask conventions of
        :mod:`model.evaluation.surface` and :mod:`model.evaluation.metrics`).

    Raises
    ------
    ConfigurationError
        On shape or spacing errors.
    """
    config = config or MetricConfig()
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    sdsc = surface_dices(p, t, spacing, config.surface_dice_tolerances_mm)
    paths = path_lengths(p, t, spacing, config.apl_tolerance_mm)
    values = {
        "dice": float(dice(p, t)),
        **{
            surface_dice_name(tol): v
            for tol, v in zip(config.surface_dice_tolerances_mm, sdsc, strict=True)
        },
        "msd_mm": mean_surface_distance(p, t, spacing),
        "hd95_mm": hd95(p, t, spacing),
        "apl_mm": paths.added_mm,
    }
    voxel_cc = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    return StructureResult(
        values=values,
        reference_present=bool(t.any()),
        predicted_present=bool(p.any()),
        reference_cc=float(np.count_nonzero(t)) * voxel_cc,
        predicted_cc=float(np.count_nonzero(p)) * voxel_cc,
        reference_path_mm=paths.reference_mm,
    )


# --- cases and categories ----------------------------------------------------------------------
def _n_group(n_stage: str) -> str:
    return "1mi" if n_stage == "1mi" else n_stage[:1]


def categories_of(record: ClinicalRecord) -> dict[str, str]:
    """The case's clinical categories.

    ``surgery``: ``breast_conserving`` / ``total_mastectomy`` (``mixed`` when two sides
    differ); ``n_stage``: ``N0``, ``N1mi``, ``N1``, ``N2`` or ``N3`` without a/b/c suffix (the
    higher of two sides); ``side``: ``left`` / ``right`` / ``bilateral``.
    """
    surgeries = {d.surgery.value for d in record.diagnoses}
    stages = [_n_group(d.n_stage) for d in record.diagnoses]
    return {
        "surgery": surgeries.pop() if len(surgeries) == 1 else "mixed",
        "n_stage": "N" + max(stages, key=_N_ORDER.index),
        "side": record.diagnoses[0].side.value if len(record.diagnoses) == 1 else "bilateral",
    }


@dataclass
class CaseResult:
    """One case: its categories and, per model, per structure, its :class:`StructureResult`."""

    case_id: str
    categories: dict[str, str]
    models: dict[str, dict[str, StructureResult]] = field(default_factory=dict)

    def result(self, model: str, structure: str) -> StructureResult | None:
        """The structure's result for ``model``; ``None`` if the model does not draw it."""
        return self.models.get(model, {}).get(structure)


def case_score(case: CaseResult, model: str, metric: str) -> tuple[float, str] | None:
    """The case's worst value of ``metric`` over the structures it is evaluated for, and
    that structure (``None`` when it is evaluated for none)."""
    worst: tuple[float, str] | None = None
    sign = 1.0 if higher_is_better(metric) else -1.0
    for structure, result in case.models.get(model, {}).items():
        if not result.evaluated:
            continue
        value = result.values[metric]
        if math.isnan(value):
            continue
        if worst is None or sign * value < sign * worst[0]:
            worst = (value, structure)
    return worst


# --- acceptance --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Acceptance:
    """The site's acceptance criteria.

    Attributes
    ----------
    defaults
        ``metric -> threshold`` for every structure.
    structures
        ``structure -> {metric -> threshold}``, overriding (or adding to) the defaults.
    statistic
        ``"mean"``: the mean must meet each threshold; ``"ci"``: the confidence bound on the
        unfavourable side must (the lower bound of Dice, the upper bound of HD95).
    min_cases
        A structure evaluated on fewer cases fails.
    metrics
        The tolerances of the metrics (the ``[metrics]`` table).
    source
        Where the criteria came from (a path, or ``"default"``).
    """

    defaults: dict[str, float]
    structures: dict[str, dict[str, float]] = field(default_factory=dict)
    statistic: Statistic = "mean"
    min_cases: int = 1
    metrics: MetricConfig = field(default_factory=MetricConfig)
    source: str = "default"

    def criteria(self, structure: str) -> dict[str, float]:
        """``metric -> threshold`` that apply to ``structure``."""
        return {**self.defaults, **self.structures.get(structure, {})}

    def check_structures(self, known: Iterable[str]) -> None:
        """Refuse criteria for a structure that is not evaluated (a typo would pass silently).

        Raises
        ------
        ConfigurationError
            An unknown structure name in the criteria.
        """
        unknown = sorted(set(self.structures) - set(known))
        if unknown:
            raise ConfigurationError(
                f"acceptance criteria name structures that are not evaluated: {unknown} "
                f"(evaluated: {sorted(known)})"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "source": self.source,
            "statistic": self.statistic,
            "min_cases": self.min_cases,
            "defaults": dict(self.defaults),
            "structures": {k: dict(v) for k, v in self.structures.items()},
            "surface_dice_tolerances_mm": list(self.metrics.surface_dice_tolerances_mm),
            "apl_tolerance_mm": self.metrics.apl_tolerance_mm,
        }


def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _metric_table(table: Mapping[str, Any], metrics: MetricConfig, where: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in table.items():
        if name not in metrics.names:
            raise ConfigurationError(
                f"{where}: unknown metric {name!r} (known: {', '.join(metrics.names)})"
            )
        out[name] = _threshold(value, f"{where}.{name}")
    return out


def parse_acceptance(doc: Mapping[str, Any], source: str = "<memory>") -> Acceptance:
    """Criteria from a parsed TOML document (see :func:`load_acceptance` for the format).

    Raises
    ------
    ConfigurationError
        Unknown tables, keys or metrics, or values of the wrong type.
    """
    unknown = sorted(set(doc) - {"acceptance", "metrics"})
    if unknown:
        raise ConfigurationError(f"{source}: unknown tables {unknown} (acceptance, metrics)")
    metrics_doc = doc.get("metrics", {})
    if not isinstance(metrics_doc, Mapping):
        raise ConfigurationError(f"{source}: [metrics] must be a table")
    extra = sorted(set(metrics_doc) - {"surface_dice_tolerances_mm", "apl_tolerance_mm"})
    if extra:
        raise ConfigurationError(f"{source}: unknown [metrics] keys {extra}")
    tolerances = metrics_doc.get("surface_dice_tolerances_mm", [2.0, 3.0])
    if not isinstance(tolerances, list):
        raise ConfigurationError(f"{source}: surface_dice_tolerances_mm must be a list of mm")
    metrics = MetricConfig(
        surface_dice_tolerances_mm=tuple(
            _threshold(t, "surface_dice_tolerances_mm") for t in tolerances
        ),
        apl_tolerance_mm=_threshold(
            metrics_doc.get("apl_tolerance_mm", APL_TOLERANCE_MM), "apl_tolerance_mm"
        ),
    )
    table = doc.get("acceptance")
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{source}: an [acceptance] table is required")
    statistic = table.get("statistic", "mean")
    if statistic not in ("mean", "ci"):
        raise ConfigurationError(f"{source}: statistic must be 'mean' or 'ci', got {statistic!r}")
    min_cases = table.get("min_cases", 1)
    if isinstance(min_cases, bool) or not isinstance(min_cases, int) or min_cases < 1:
        raise ConfigurationError(f"{source}: min_cases must be an integer >= 1")
    scalars = {
        k: v
        for k, v in table.items()
        if not isinstance(v, Mapping) and k not in ("statistic", "min_cases")
    }
    defaults = _metric_table(scalars, metrics, "[acceptance]")
    structures = {
        name: _metric_table(sub, metrics, f"[acceptance.{name}]")
        for name, sub in table.items()
        if isinstance(sub, Mapping)
    }
    if not defaults and not any(structures.values()):
        raise ConfigurationError(f"{source}: [acceptance] names no criterion")
    return Acceptance(
        defaults=defaults,
        structures=structures,
        statistic=statistic,
        min_cases=min_cases,
        metrics=metrics,
        source=source,
    )


def load_acceptance(path: Path | None) -> Acceptance:
    """The site's criteria from a TOML file, or :data:`DEFAULT_CRITERIA` without one.

    Format::

        [acceptance]
        statistic = "mean"        # or "ci": the unfavourable CI bound must meet the threshold
        min_cases = 5             # fewer evaluated cases: FAIL (default 1)
        surface_dice_3mm = 0.90   # every structure: a lower limit (Dice, surface Dice)
        hd95_mm = 15.0            # an upper limit (distances, added path length)

        [acceptance.imn]          # one structure: overrides or adds to the defaults
        surface_dice_3mm = 0.80

        [metrics]                 # optional
        surface_dice_tolerances_mm = [2.0, 3.0]
        apl_tolerance_mm = 1.0

    Raises
    ------
    ConfigurationError
        An unreadable file or one that breaks the format.
    """
    if path is None:
        return Acceptance(defaults=dict(DEFAULT_CRITERIA))
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the acceptance file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    return parse_acceptance(doc, str(path))


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
