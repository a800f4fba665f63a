"""Commissioning metrics per case and structure, and the clinical categories of a case.

The metrics of :func:`structure_metrics` on the CT's own grid (``(k, j, i)`` masks,
``spacing = (dk, dj, di)`` mm): Dice, HD95, mean surface distance, surface Dice at the
configured tolerances, added path length; the aggregation and verdicts are in
:mod:`model.evaluation.commissioning`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from model.errors import ConfigurationError
from model.evaluation.metrics import dice, hd95
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
