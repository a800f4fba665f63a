"""The site's acceptance criteria for commissioning: a TOML file of thresholds per metric,
by default and per structure (:func:`load_acceptance`); see ``docs/commissioning.md``."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import ConfigurationError
from model.evaluation.commissioning_metrics import (
    MetricConfig,
    Statistic,
)
from model.evaluation.surface import (
    APL_TOLERANCE_MM,
)

#: Criteria when no site file is given: surface Dice at 3 mm >= 0.90 for every structure.
DEFAULT_CRITERIA: dict[str, float] = {"surface_dice_3mm": 0.90}


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
