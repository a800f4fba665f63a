"""``llmctv experiments``: evaluate the models on phantom cohorts and write the report.

``llmctv experiments --model NAME=CKPT ... --internal DIR --external DIR --out DIR`` evaluates
every model on the internal (held-out site A) and external (site B) cohorts, runs the
text-perturbation study (:mod:`model.lab.perturbation`), and writes ``report.md``,
``report.json`` and PNG figures into ``--out`` (:mod:`model.lab.experiments`). Table 3/4a rows
(``--data-efficiency``, ``--tuning-modes``) can be evaluated into ``--cache`` as their
checkpoints appear (``--rows-only``) and are then reused.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from model.errors import ConfigurationError
from model.lab.experiments import EXTRA_TITLES, training_summary, write_experiment_report
from model.lab.result_cache import ResultCache

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add the ``experiments`` sub-command to ``subparsers``; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "experiments",
        help="Table 1, Fig. 5 text perturbation, Tables 3/4a on phantom cohorts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", metavar="NAME=CHECKPOINT", help="Table 1, Fig. 5")
    p.add_argument("--internal", type=Path, default=None, help="held-out site-A phantom cohort")
    p.add_argument("--external", type=Path, default=None, help="site-B phantom cohort")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--text-encoder", default=None, help="override the checkpoints' encoder")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--max-overlays", type=int, default=2, help="overlay PNGs per kind and split")
    p.add_argument(
        "--data-efficiency", action="append", metavar="LABEL=CHECKPOINT", help="Table 3 rows"
    )
    p.add_argument("--tuning-modes", action="append", metavar="LABEL=CHECKPOINT", help="Table 4a")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep Table 3/4a row results here and reuse them (keyed by weights and cohort)",
    )
    p.add_argument(
        "--rows-only",
        action="store_true",
        help="only evaluate the Table 3/4a rows into --cache (as their checkpoints appear)",
    )
    p.set_defaults(func=run)
    return p


def _predictors(specs: Mapping[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    from model.inference import Predictor

    return {
        n: Predictor.from_checkpoint(p, text_encoder=args.text_encoder, device=args.device)
        for n, p in specs.items()
    }


def _evaluate_all(predictors: Mapping[str, Any], splits: Mapping[str, Path]) -> dict[str, Any]:
    """``{split: evaluate_cases output}`` for ``predictors`` (target ROI ``CTV``)."""
    from model.dicom.rtstruct.reader import RoiRule
    from model.workflows import evaluate_cases

    rule = RoiRule(include=(r"^ctv$",))
    return {s: evaluate_cases(dict(predictors), d, rule) for s, d in splits.items()}


def _split_results(
    checkpoint: Path,
    split: str,
    cohort: Path,
    predictors: Callable[[], dict[str, Any]],
    args: argparse.Namespace,
    cache: ResultCache,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model's ``evaluate_cases`` output and perturbation study on one cohort (cached)."""
    from model.lab.perturbation import perturbation_study

    table = cache.get_or_compute(
        cache.key(checkpoint, cohort, "table", args.text_encoder),
        lambda: _evaluate_all(predictors(), {split: cohort})[split],
    )
    study = cache.get_or_compute(
        cache.key(checkpoint, cohort, "perturbation", args.text_encoder),
        lambda: perturbation_study(predictors(), cohort, split=split, seed=args.seed),
    )
    return table, study


def _row_results(
    name: str,
    checkpoint: Path,
    splits: Mapping[str, Path],
    args: argparse.Namespace,
    cache: ResultCache,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One table row: ``{split: evaluate_cases output}`` and its perturbation studies.

    Results come from ``cache`` when there; the model is loaded only when something is missing.
    """
    from model.lab.perturbation import assemble

    loaded: dict[str, Any] = {}

    def predictors() -> dict[str, Any]:
        if not loaded:
            loaded.update(_predictors({name: checkpoint}, args))
        return loaded

    tables, studies = {}, []
    for split, cohort in splits.items():
        table, study = _split_results(checkpoint, split, cohort, predictors, args, cache)
        tables[split] = {**table, "models": {name: next(iter(table["models"].values()))}}
        kind = next(iter(study["models"].values()))
        rows = [{**r, "model": name} for r in study["cases"]]
        studies.append(assemble(rows, {name: kind}, study["cohorts"], [], seed=args.seed))
    return tables, studies


def _extra_tables(
    args: argparse.Namespace, splits: Mapping[str, Path], cache: ResultCache
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tables 3 and 4a (accuracy per split) and each row's text following and training."""
    from model.lab.perturbation import merge_studies
    from model.network.checkpoint import read_config
    from model.workflows import parse_models

    extras: dict[str, Any] = {}
    extra_text: dict[str, Any] = {}
    for title, option in zip(EXTRA_TITLES, (args.data_efficiency, args.tuning_modes), strict=True):
        if not option:
            continue
        rows = parse_models(option, title)
        per_split: dict[str, Any] = {}
        studies: list[dict[str, Any]] = []
        for name, path in rows.items():
            tables, row_studies = _row_results(name, path, splits, args, cache)
            studies += row_studies
            for split, table in tables.items():
                entry = per_split.setdefault(split, {**table, "models": {}})
                entry["models"].update(table["models"])
        extras[title] = per_split
        extra_text[title] = {
            "perturbation": merge_studies(studies, args.seed),
            "training": {n: training_summary(read_config(p)) for n, p in rows.items()},
        }
        log.info("%s: %d rows", title, len(rows))
    return extras, extra_text


def run(args: argparse.Namespace) -> int:
    """Run every requested experiment and write the report; errors propagate (exit 2)."""
    from model.lab.perturbation import merge_studies, perturbation_study
    from model.workflows import parse_models

    splits = {s: d for s, d in (("internal", args.internal), ("external", args.external)) if d}
    if not splits:
        raise ConfigurationError("give --internal and/or --external")
    if args.max_overlays < 0:
        raise ConfigurationError(f"--max-overlays must be >= 0, got {args.max_overlays}")
    if args.rows_only:
        if args.cache is None:
            raise ConfigurationError("--rows-only needs --cache (where the rows are kept)")
        extras, _ = _extra_tables(args, splits, ResultCache(args.cache))
        print(f"cached the rows of {len(extras)} table(s) in {args.cache}")
        return 0
    if not args.model:
        raise ConfigurationError("give at least one --model NAME=CHECKPOINT")
    models = parse_models(args.model, "--model")
    predictors = _predictors(models, args)
    table1 = _evaluate_all(predictors, splits)
    studies = [
        perturbation_study(
            predictors,
            d,
            split=s,
            seed=args.seed,
            overlay_dir=args.out / "figures",
            max_overlays=args.max_overlays,
        )
        for s, d in splits.items()
    ]
    cache = ResultCache(args.cache)
    extras, extra_text = _extra_tables(args, splits, cache)
    paths = write_experiment_report(
        args.out,
        table1,
        merge_studies(studies, args.seed),
        extras,
        extra_text=extra_text,
        seed=args.seed,
    )
    for path in paths:
        print(path)
    return 0
