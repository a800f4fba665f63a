"""``llmctv commission``: run one or two models over a department's cases; write the report.

The data set is the folder ``llmctv train`` and ``llmctv evaluate`` read (``clinical.csv`` and
one folder of CT + RTSTRUCT per case, :mod:`model.training.dataset`). Every model contours
every case on the CT's own grid (:class:`model.inference.Predictor`); per structure the
metrics of :mod:`model.evaluation.commissioning` are computed against the reference
RTSTRUCT, summarised with bootstrap CIs, compared (candidate minus current) and judged
against the site's acceptance criteria; :mod:`model.evaluation.commissioning_report` writes
``report.json``, ``report.html`` and ``figures/``.

The first ``--model`` is the candidate; a second one is the current (e.g. shipped) model.

Which ROIs are the reference: ``--structure-map`` (the site's map of ``llmctv dataset
check``) or ``--structure`` patterns; else what the candidate checkpoint records (the
structure map it was trained with, or ``roi_rule`` for the CTV and ``structure_rules`` per
structure, written by ``llmctv train``). The reference of a structure is its class in the label map
that training uses (:func:`model.training.dataset.load_case`: where two structures' ROIs
overlap the first listed wins); the CTV is every labelled voxel. A structure network is
measured on every reference structure, also one it has no class for (it is then missed
wherever the reference has it: the clinician draws it all); a single-CTV network on the CTV
only.

Logs carry counts and timings only, never case ids; the report names the cases (the data
set's folder names).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.dataset.prescription import NOTE_RULE, SITE_RULE
from model.dataset.stage_rule import StageRule
from model.dataset.structure_map import load_structure_map
from model.dataset.structure_targets import map_from_meta
from model.dicom.rtstruct.reader import RoiRule
from model.errors import ConfigurationError, DatasetError, LlmctvError
from model.evaluation.commissioning import (
    CTV,
    Bootstrap,
    CaseResult,
    MetricConfig,
    case_score,
    categories_of,
    load_acceptance,
    structure_metrics,
    summarize_commissioning,
    surface_dice_name,
)
from model.evaluation.commissioning_figures import CaseSnapshot, take_snapshot
from model.evaluation.commissioning_report import write_commissioning_report
from model.inference import Prediction, Predictor
from model.network.checkpoint import read_config
from model.network.structures import PHANTOM_ROI_PATTERNS
from model.training.dataset import TargetRule, iter_cases, load_case
from model.workflows import MIRROR_TTA_HELP, WindowOptions, parse_models

log = logging.getLogger(__name__)
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class CommissionOptions:
    """``llmctv commission``: the models, the data, the criteria and where the report goes.

    ``roi_include``/``structures``/``structure_map`` not given: the candidate checkpoint's
    own ROI rules (its structure map, or its ROI-name patterns).
    """

    models: Mapping[str, Path]
    data: Path
    out: Path
    csv: Path | None = None
    acceptance: Path | None = None
    roi_include: tuple[str, ...] = ()
    roi_exclude: tuple[str, ...] = ()
    structures: tuple[tuple[str, tuple[str, ...]], ...] = ()
    structure_map: Path | None = None
    bootstrap: int = 1000
    seed: int = 0
    worst: int = 5
    text_encoder: str | None = None
    window: WindowOptions = field(default_factory=WindowOptions)
    stage_rule: bool = True  # apply each checkpoint's N-stage rule (as served)


@dataclass(frozen=True)
class CommissionResult:
    """What :func:`commission` wrote and decided."""

    verdict: str
    verdicts: dict[str, dict[str, str]]
    files: list[Path]


def reference_rule(
    meta: Mapping[str, Any],
    roi_include: Sequence[str] = (),
    roi_exclude: Sequence[str] = (),
    structures: Sequence[tuple[str, Sequence[str]]] = (),
    structure_map: Path | None = None,
) -> TargetRule:
    """The ROIs of the reference, the first that applies of: a structure map file; ROI-name
    patterns per structure; the structure map the candidate was trained with; the ROI-name
    patterns it was trained with (``structure_rules``, ``roi_rule``); ``^ctv$``.

    Raises
    ------
    ConfigurationError
        Both a structure map and patterns; a structure network whose checkpoint records no
        ROI rule for one of its structures, with nothing given; an invalid structure map.
    """
    if structure_map is not None and structures:
        raise ConfigurationError("--structure-map and --structure exclude each other")
    if structure_map is not None:
        return TargetRule.from_structure_map(load_structure_map(structure_map))
    stored = meta.get("roi_rule") or {}
    include = tuple(roi_include) or tuple(stored.get("include") or (r"^ctv$",))
    exclude = tuple(roi_exclude) or tuple(stored.get("exclude") or ())
    union = RoiRule(include=include, exclude=exclude)
    if structures:
        return TargetRule(
            union=union,
            structures=tuple((name, RoiRule(include=tuple(p))) for name, p in structures),
        )
    trained_map = map_from_meta(dict(meta))
    if trained_map is not None:
        return TargetRule.from_structure_map(trained_map)
    names = tuple((meta.get("network") or {}).get("structures") or ())
    rules = meta.get("structure_rules") or {}
    missing = [name for name in names if not rules.get(name)]
    if missing:
        raise ConfigurationError(
            f"the candidate checkpoint records no ROI rule for {missing}; pass --structure-map "
            "or --structure NAME=REGEX for each of its structures"
        )
    return TargetRule(
        union=union,
        structures=tuple((name, RoiRule(include=tuple(rules[name]))) for name in names),
    )


def _reference_masks(label: npt.NDArray[np.generic], target: TargetRule) -> dict[str, BoolArray]:
    if not target.structures:
        return {CTV: np.asarray(label) != 0}
    masks = {CTV: np.asarray(label) > 0}
    for index, (name, _) in enumerate(target.structures, start=1):
        masks[name] = np.asarray(label) == index
    return masks


def predicted_masks(prediction: Prediction, structures: Sequence[str]) -> dict[str, BoolArray]:
    """The CTV and each of ``structures`` (both sides together; empty where the prediction
    has none of it)."""
    masks = {CTV: np.asarray(prediction.mask, dtype=bool)}
    for name in structures:
        masks[name] = np.zeros(prediction.mask.shape, dtype=bool)
    for (name, _side), mask in prediction.structures.items():
        if name in structures:
            masks[name] |= mask
    return masks


class _Worst:
    """The ``size`` worst cases seen so far, with their snapshots (taken only when kept)."""

    def __init__(self, size: int, higher_is_better: bool) -> None:
        self.size = size
        self.sign = 1.0 if higher_is_better else -1.0
        # A min-heap on (badness, -order): its root is the least bad kept case (the later
        # one among equals), the one a worse case replaces.
        self.heap: list[tuple[float, int, CaseSnapshot]] = []

    def wants(self, value: float) -> bool:
        """Whether a case with ``value`` would be kept."""
        badness = -self.sign * value
        return self.size > 0 and (len(self.heap) < self.size or badness > self.heap[0][0])

    def add(self, value: float, order: int, snapshot: CaseSnapshot) -> None:
        """Keep a case (call after :meth:`wants`)."""
        item = (-self.sign * value, -order, snapshot)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
        else:
            heapq.heapreplace(self.heap, item)

    def ordered(self) -> list[CaseSnapshot]:
        """Worst first (earlier cases first among equals)."""
        return [s for _, _, s in sorted(self.heap, key=lambda t: (-t[0], -t[1]))]


def evaluate_models(
    predictors: Mapping[str, Predictor],
    data_dir: Path,
    target: TargetRule,
    *,
    csv_path: Path | None = None,
    metrics: MetricConfig | None = None,
    worst: int = 5,
    progress: Callable[[int, int], None] | None = None,
    rule_removals: dict[str, dict[str, int]] | None = None,
) -> tuple[list[CaseResult], list[CaseSnapshot], list[dict[str, str]], dict[str, float]]:
    """Contour every case with every model and measure every structure.

    Parameters
    ----------
    predictors
        Model name -> predictor, the candidate first.
    data_dir, csv_path
        The data set (``csv_path`` default ``data_dir/clinical.csv``).
    target
        The reference ROIs (:func:`reference_rule`).
    metrics
        Tolerances of the metrics.
    worst
        How many of the candidate's worst cases to keep snapshots of.
    progress
        Called with ``(done, total)`` after each case.
    rule_removals
        When given, counts per model and rule (``"site rule"``: the version's N-stage rule,
        ``"note rule"``: the rest of what a record does not call for;
        :mod:`model.dataset.prescription`) the (case, structure, side) it removed.

    Returns
    -------
    tuple
        Case results; snapshots of the worst cases, worst first; skipped cases
        (``case_id``, ``code``, ``detail``); inference seconds per model.

    Raises
    ------
    DatasetError
        No case could be evaluated.
    """
    metrics = metrics or MetricConfig()
    names = list(predictors)
    structures = [name for name, _ in target.structures]
    worst_metric = surface_dice_name(max(metrics.surface_dice_tolerances_mm))
    keeper = _Worst(worst, higher_is_better=True)
    cases: list[CaseResult] = []
    skipped: list[dict[str, str]] = []
    seconds = dict.fromkeys(names, 0.0)
    listed = iter_cases(data_dir, csv_path)
    for order, (case_id, folder, record) in enumerate(listed):
        try:
            case = load_case(folder, record, target)
        except LlmctvError as exc:
            skipped.append({"case_id": case_id, "code": exc.code, "detail": exc.detail})
            log.info("commission: case %d/%d skipped [%s]", order + 1, len(listed), exc.code)
            continue
        volume = case.ct.volume
        reference = _reference_masks(case.mask, target)
        result = CaseResult(case_id, categories_of(record))
        predicted: dict[str, dict[str, BoolArray]] = {}
        for name, predictor in predictors.items():
            started = time.perf_counter()
            prediction = predictor.predict_record(volume, record)
            seconds[name] += time.perf_counter() - started
            if rule_removals is not None:
                counts = rule_removals.setdefault(name, {})
                for why in prediction.rule_removed_cc:
                    kind = why.split(":", 1)[0]
                    counts[kind] = counts.get(kind, 0) + 1
            # A structure network is measured on every reference structure (one it has no
            # class for is missed wherever the reference has it); a CTV network on the CTV.
            drawn = structures if predictor.network.config.structures else []
            masks = predicted_masks(prediction, drawn)
            predicted[name] = masks
            result.models[name] = {
                s: structure_metrics(mask, reference[s], volume.grid.spacing, metrics)
                for s, mask in masks.items()
                if s in reference
            }
        cases.append(result)
        score = case_score(result, names[0], worst_metric)
        if score is not None and keeper.wants(score[0]):
            snapshot = take_snapshot(
                case_id,
                volume.array,
                volume.grid,
                reference,
                predicted,
                structure=score[1],
                metric=worst_metric,
                value=score[0],
            )
            keeper.add(score[0], order, snapshot)
        if progress is not None:
            progress(order + 1, len(listed))
        log.info("commission: case %d/%d measured", order + 1, len(listed))
    if not cases:
        raise DatasetError(f"no case of {data_dir} could be evaluated ({len(skipped)} skipped)")
    return cases, keeper.ordered(), skipped, seconds


def commission(options: CommissionOptions) -> CommissionResult:
    """``llmctv commission``: load the models, evaluate the data set, write the report.

    Raises
    ------
    ConfigurationError
        No model or more than two, bad options or acceptance file.
    LlmctvError
        Unreadable checkpoints or data set (their own codes).
    """
    from model import __version__

    if not 1 <= len(options.models) <= 2:
        raise ConfigurationError(
            "--model takes the candidate and at most one current model (NAME=DIR)"
        )
    if options.bootstrap < 1 or options.worst < 0:
        raise ConfigurationError("--bootstrap must be >= 1 and --worst >= 0")
    acceptance = load_acceptance(options.acceptance)
    names = list(options.models)
    metas = {name: read_config(path) for name, path in options.models.items()}
    target = reference_rule(
        metas[names[0]],
        options.roi_include,
        options.roi_exclude,
        options.structures,
        options.structure_map,
    )
    structures = [CTV, *(name for name, _ in target.structures)]
    acceptance.check_structures(structures)
    predictors = {
        name: Predictor.from_checkpoint(
            path, text_encoder=options.text_encoder, **options.window.predictor_options()
        )
        for name, path in options.models.items()
    }
    if not options.stage_rule:  # the networks alone, as trained
        for predictor in predictors.values():
            predictor.prescription = None
    started = time.perf_counter()
    removals: dict[str, dict[str, int]] = {}
    cases, snapshots, skipped, seconds = evaluate_models(
        predictors,
        options.data,
        target,
        csv_path=options.csv,
        metrics=acceptance.metrics,
        worst=options.worst,
        rule_removals=removals,
    )
    summary = summarize_commissioning(
        cases,
        names,
        structures,
        acceptance,
        Bootstrap(n_resamples=options.bootstrap, seed=options.seed),
    )
    models_info = {
        name: {
            "role": "candidate" if n == 0 else "current",
            "path": str(options.models[name]),
            "checkpoint_hash": predictors[name].checkpoint_hash,
            "structures": list(predictors[name].network.config.structure_names),
            "text_encoder": metas[name].get("text_encoder_name"),
            "inference_seconds": round(seconds[name], 2),
            "mirror_tta": predictors[name].mirrors,
            "stage_rule": _rule_text(_stage_rule_of(predictors[name])),
            "stage_rule_removed": removals.get(name, {}).get(SITE_RULE, 0),
            "note_rule": predictors[name].prescription is not None,
            "note_rule_removed": removals.get(name, {}).get(NOTE_RULE, 0),
        }
        for n, name in enumerate(names)
    }
    files = write_commissioning_report(
        options.out,
        summary=summary,
        cases=cases,
        snapshots=snapshots,
        models=models_info,
        data=str(options.data),
        skipped=skipped,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        software_version=__version__,
    )
    log.info(
        "commission: %d cases, %d skipped, %.0f s; candidate %s",
        len(cases),
        len(skipped),
        time.perf_counter() - started,
        summary["verdicts"][names[0]],
    )
    verdicts = {
        model: {s: e["verdict"] for s, e in summary["results"][model].items()} for model in names
    }
    return CommissionResult(summary["verdicts"][names[0]], verdicts, files)


# --- command line ------------------------------------------------------------------------------
def structure_options(specs: Sequence[str] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``--structure`` values: ``phantom`` (the phantom spec's five) or ``NAME=REGEX[,REGEX]``.

    Raises
    ------
    ConfigurationError
        A malformed or repeated entry.
    """
    found: dict[str, tuple[str, ...]] = {}
    for spec in specs or ():
        if spec == "phantom":
            found.update(PHANTOM_ROI_PATTERNS)
            continue
        name, sep, patterns = spec.partition("=")
        if not sep or not name or not patterns or name in found or name == CTV:
            raise ConfigurationError(f"--structure takes distinct NAME=REGEX, got {spec!r}")
        found[name] = tuple(p for p in patterns.split(",") if p)
    return tuple(found.items())


def options_from_args(args: argparse.Namespace) -> CommissionOptions:
    """The parsed command line as :class:`CommissionOptions`."""
    return CommissionOptions(
        models=parse_models(args.model),
        data=args.data,
        out=args.out,
        csv=args.csv,
        acceptance=args.acceptance,
        roi_include=tuple(args.roi_include or ()),
        roi_exclude=tuple(args.roi_exclude or ()),
        structures=structure_options(args.structure),
        structure_map=args.structure_map,
        bootstrap=args.bootstrap,
        seed=args.seed,
        worst=args.worst,
        text_encoder=args.text_encoder,
        stage_rule=not args.without_stage_rule,
        window=WindowOptions.from_args(args),
    )


def cmd_commission(args: argparse.Namespace) -> int:
    """Run the commissioning and print the verdicts and the report's path."""
    result = commission(options_from_args(args))
    for model, structures in result.verdicts.items():
        listed = ", ".join(f"{s} {v}" for s, v in structures.items())
        print(f"{model}: {listed}")
    print(f"verdict of the candidate: {result.verdict}")
    for path in result.files[:2]:
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``commission`` to the ``llmctv`` sub-commands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "commission",
        help="commissioning report: per-structure metrics with CIs, acceptance verdicts",
        description="Run one or two models over a department's cases (the candidate first) "
        "and write the commissioning report: HTML, JSON and figures (docs/commissioning.md).",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="checkpoint folder; the first is the candidate, an optional second the current "
        "model it is compared with",
    )
    p.add_argument("--data", type=Path, required=True, help="data set folder (clinical.csv)")
    p.add_argument(
        "--csv", type=Path, default=None, help="clinical CSV (default DATA/clinical.csv)"
    )
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument(
        "--acceptance",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help="site acceptance criteria (default: surface Dice 3 mm >= 0.90 per structure)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--worst", type=int, default=5, help="worst cases shown with overlays")
    p.add_argument(
        "--without-stage-rule",
        action="store_true",
        help="measure the networks alone: keep what the note does not call for, and do not "
        "apply a checkpoint's N-stage rule",
    )
    p.add_argument(
        "--roi-include",
        nargs="+",
        default=None,
        help="reference CTV ROI-name regexes (default: the candidate checkpoint's)",
    )
    p.add_argument("--roi-exclude", nargs="*", default=None)
    p.add_argument(
        "--structure",
        action="append",
        default=None,
        metavar="NAME=REGEX",
        help="reference ROIs of a structure (repeat; 'phantom' = the phantom spec's five); "
        "default: the candidate checkpoint's",
    )
    p.add_argument(
        "--structure-map",
        type=Path,
        default=None,
        metavar="MAP.toml",
        help="the site's structure map (llmctv dataset check) choosing the reference ROIs; "
        "default: the map the candidate was trained with, if any",
    )
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--device", default="auto")
    # the window options of llmctv predict / evaluate (model.cli.add_window_arguments, which
    # this layer may not import)
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0-1)")
    p.add_argument("--sw-batch-size", type=int, default=2, help="windows per forward batch")
    p.add_argument("--mirror-tta", action="store_true", help=MIRROR_TTA_HELP)
    p.set_defaults(func=cmd_commission)
    return p


def _stage_rule_of(predictor: Predictor) -> StageRule | None:
    """The N-stage rule a predictor applies (none when it applies no prescription)."""
    return None if predictor.prescription is None else predictor.prescription.stage_rule


def _rule_text(rule: StageRule | None) -> list[str]:
    """``["imn: N2-N3"]``: the structures a version's N-stage rule draws for some stages only."""
    if rule is None:
        return []
    return [f"{name}: N" + "-N".join(stages) for name, stages in rule.stages]
