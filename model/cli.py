"""The ``llmctv`` command: ``params``, ``train``, ``evaluate``, ``predict``, ``phantoms``.

Each sub-command parses its options here and calls library code; nothing heavy is imported
until a sub-command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import ConfigurationError, LlmctvError
from model.lab.phantoms_cli import register_phantoms

if TYPE_CHECKING:
    from model.network.config import NetworkChoice
    from model.workflows import DataOptions

log = logging.getLogger("llmctv")


# --- params ---------------------------------------------------------------------------------------
def _add_network_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, help="paper | cpu | tiny")
    p.add_argument("--text-dim", type=int, default=None, help="override the text width D")
    p.add_argument(
        "--tuning",
        default=None,
        choices=["multi_prompt", "single_prompt", "lora", "none"],
        help="text-side tuning mode (paper Table 4a)",
    )
    p.add_argument("--vision-only", action="store_true", help="the baseline without text")


def network_choice(args: argparse.Namespace) -> NetworkChoice:
    """``--preset``, ``--text-dim``, ``--tuning``, ``--vision-only`` as a typed choice."""
    from model.network.config import NetworkChoice

    return NetworkChoice(
        preset=args.preset,
        text_dim=getattr(args, "text_dim", None),
        tuning=args.tuning,
        vision_only=bool(args.vision_only),
    )


def option_overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, object]:
    """The settings named in ``names`` that were given on the command line."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _data_options(args: argparse.Namespace) -> DataOptions:
    from model.workflows import DataOptions

    return DataOptions(
        data=args.data,
        csv=args.csv,
        roi_include=tuple(args.roi_include),
        roi_exclude=tuple(args.roi_exclude or ()),
        structures=structure_patterns(getattr(args, "structure", None)),
        structure_map=getattr(args, "structure_map", None),
    )


def structure_patterns(specs: Sequence[str] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``--structure`` values: ``phantom`` (the spec's five sub-volumes) or ``NAME=REGEX[,..]``.

    Raises
    ------
    LlmctvError
        A malformed or repeated entry (ConfigurationError).
    """
    from model.network.structures import PHANTOM_ROI_PATTERNS

    found: dict[str, tuple[str, ...]] = {}
    for spec in specs or ():
        if spec == "phantom":
            found.update(PHANTOM_ROI_PATTERNS)
            continue
        name, sep, patterns = spec.partition("=")
        if not sep or not name or not patterns or name in found:
            raise ConfigurationError(f"--structure takes distinct NAME=REGEX, got {spec!r}")
        found[name] = tuple(p for p in patterns.split(",") if p)
    return tuple(found.items())


def cmd_params(args: argparse.Namespace) -> int:
    """Trainable parameter counts, built on the meta device (no weights loaded)."""
    from model.network.parameter_count import parameter_report

    report = parameter_report(network_choice(args).config())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report["millions"].items():
            print(f"{key:>12}: {value:8.3f} M")
    return 0


# --- train, evaluate, predict ---------------------------------------------------------------
def _oversample(options: list[str]) -> tuple[tuple[str, float], ...]:
    """``["RB-=3"]`` -> ``(("RB-", 3.0),)``; the weight follows the last ``=``."""
    pairs = []
    for option in options:
        pattern, sep, weight = option.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = float("nan")
        if not sep or not pattern or not value > 0:
            raise ConfigurationError(
                f"--oversample wants REGEX=WEIGHT (WEIGHT > 0), got {option!r}"
            )
        pairs.append((pattern, value))
    return tuple(pairs)


def cmd_train(args: argparse.Namespace) -> int:
    """Build the cache from DICOM, then train (one process, or one rank under torchrun)."""
    from model.training.augmentation import AugmentConfig
    from model.training.heads import parse_class_map
    from model.training.trainer import TrainConfig
    from model.workflows import TrainOptions, train_from_dicom

    options = TrainOptions(
        data=_data_options(args),
        out=args.out,
        network=network_choice(args),
        spacing=(args.spacing[0], args.spacing[1], args.spacing[2]),
        cache=args.cache,
        text_encoder=args.text_encoder,
        train=TrainConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            val_fraction=args.val_fraction,
            seed=args.seed,
            device=args.device,
            pair_fraction=args.pair_fraction,
            note_augment=args.note_augment,
            oversample=_oversample(args.oversample),
            augment=AugmentConfig(
                geometry=args.augment_geometry,
                elastic=args.augment_elastic,
                intensity=args.augment_intensity,
                mirror=args.mirror,
            ),
            workers=args.workers,
            max_minutes=args.max_minutes,
            checkpoint_steps=args.checkpoint_steps,
        ),
        train_fraction=args.train_fraction,
        init_from=args.init_from,
        resume=args.resume,
        class_map=parse_class_map(args.class_map),
        ddp=args.ddp,
        convention_variants=args.convention_variants,
        partial_labels=args.partial_labels,
        teacher_labels=args.teacher_labels,
    )
    result = train_from_dicom(options)
    if not result.main:  # another rank of a torchrun job: rank 0 reports
        return 0
    if result.stopped:
        print(
            f"stopped ({result.stopped}) after {result.steps} steps; "
            f"continue with --resume from {Path(args.out) / 'last'}"
        )
    print(
        f"best validation Dice {result.best_dice:.4f} at epoch {result.best_epoch}; "
        f"{result.seconds:.0f} s; {result.samples_per_second:.2f} crops/s; "
        f"checkpoint {Path(args.out) / 'best'}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate checkpoints on a DICOM data set; write the report."""
    from model.workflows import WindowOptions, evaluate_from_dicom, parse_models

    paths = evaluate_from_dicom(
        _data_options(args),
        parse_models(args.model),
        args.out,
        text_encoder=args.text_encoder,
        window=WindowOptions.from_args(args),
        seed=args.seed,
    )
    for path in paths:
        print(path)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Contour one CT; write a NIfTI mask on the input grid."""
    from model.workflows import WindowOptions, predict_one

    out = predict_one(
        args.checkpoint,
        args.ct,
        args.clinical,
        args.out,
        rtstruct=args.rtstruct,
        text_encoder=args.text_encoder,
        window=WindowOptions.from_args(args),
    )
    print(out)
    return 0


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="data set folder (see README)")
    p.add_argument(
        "--csv", type=Path, default=None, help="clinical CSV (default DATA/clinical.csv)"
    )
    p.add_argument("--roi-include", nargs="+", default=[r"^ctv$"], help="ROI name regexes")
    p.add_argument("--roi-exclude", nargs="*", default=[], help="ROI name regexes to exclude")
    p.add_argument(
        "--structure",
        action="append",
        default=None,
        metavar="NAME=REGEX",
        help="train one output structure per ROI-name pattern (repeat); 'phantom' = the five "
        "sub-volumes of the phantom spec (breast, chest_wall, axilla, scf, imn)",
    )
    p.add_argument(
        "--structure-map",
        type=Path,
        default=None,
        metavar="MAP",
        help="the site's structure map (TOML, as for 'dataset check'): one output structure "
        "per structure of the map, its ROIs chosen by the map (sides, several ROIs per "
        "structure; the union ROI and ignored ROIs never count); replaces --roi-include, "
        "not with --structure. Evaluate: the reference CTV is the union of the map's structures",
    )


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    """``--overlap``, ``--sw-batch-size`` and ``--mirror-tta``
    (:class:`~model.workflows.WindowOptions`)."""
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0-1)")
    p.add_argument("--sw-batch-size", type=int, default=2, help="windows per forward batch")
    p.add_argument(
        "--mirror-tta",
        action="store_true",
        help="test-time augmentation: also contour the mirrored patient with the mirrored "
        "note and average (twice the network time)",  # = model.workflows.MIRROR_TTA_HELP
    )


Registrar = Callable[["argparse._SubParsersAction[Any]"], argparse.ArgumentParser]


def build_parser(extra: Sequence[Registrar] = ()) -> argparse.ArgumentParser:
    """The argument parser of ``llmctv``; ``extra`` adds sub-commands of other packages."""
    parser = argparse.ArgumentParser(prog="llmctv", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable parameter counts (meta device)")
    _add_network_options(p, "paper")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train from DICOM + clinical CSV")
    _add_network_options(p, "cpu")
    _add_data_options(p)
    p.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        default=[3.0, 1.0, 1.0],
        metavar=("DK", "DJ", "DI"),
        help="network grid spacing (slice, row, col) mm",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--cache", type=Path, default=None, help="preprocessed cache (default OUT/cache)"
    )
    p.add_argument("--text-encoder", default="smollm2", help="smollm2 | minilm | tiny-llama | DIR")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--steps-per-epoch", type=int, default=0)
    p.add_argument(
        "--batch-size", type=int, default=2, help="crops per step, over all DDP processes"
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="train on this share of the CTs, each with all its notes (Table 3)",
    )
    p.add_argument(
        "--pair-fraction",
        type=float,
        default=0.0,
        help="share of steps whose batch pairs two notes of one CT (counterfactual data)",
    )
    p.add_argument(
        "--oversample",
        action="append",
        default=[],
        metavar="REGEX=WEIGHT",
        help="draw cases whose id matches REGEX (and their CTs, for paired batches) WEIGHT "
        "times as often; repeatable, the first match counts",
    )
    p.add_argument(
        "--note-augment",
        type=float,
        default=0.0,
        help="share of template notes rewritten to another with the same target: N and T "
        "stage redrawn within the nodal class (N0/N1mi; N1-N3 with suffixes), clauses of "
        "bilateral notes in a random order",
    )
    p.add_argument(
        "--convention-variants",
        action="store_true",
        help="with --structure-map: also train each case under the other N stages whose "
        "target the map's n_stages rule derives from its label (same CT; pair them with "
        "--pair-fraction)",
    )
    p.add_argument(
        "--partial-labels",
        action="store_true",
        help="with --structure-map: a nodal structure its n_stages rule does not draw for a "
        "case's N stage is unlabelled there, not background (the served rule removes it)",
    )
    p.add_argument(
        "--teacher-labels",
        action="store_true",
        help="with --partial-labels and --init-from: the --init-from model draws those "
        "unlabelled structures before training starts (so the anatomy is not forgotten)",
    )
    p.add_argument(
        "--augment-geometry",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a random affine of each crop (MONAI RandAffined)",
    )
    p.add_argument(
        "--augment-elastic",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of an elastic deformation of each crop (costly on a CPU)",
    )
    p.add_argument(
        "--augment-intensity",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of each of gamma, noise, blur and an HU offset per crop",
    )
    p.add_argument(
        "--mirror",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of the text-aware mirror: image flipped left-right, sides of the "
        "note swapped",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from this checkpoint's weights (same config and text encoder; "
        "the structures may differ: same-named classes keep their head weights, new ones "
        "start fresh, missing ones are dropped)",
    )
    p.add_argument(
        "--class-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="with --init-from: the checkpoint's class OLD becomes this run's class NEW (its "
        "head weights kept); OLD= drops OLD even where this run has a class of that name; "
        "repeatable",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT/last from its saved step (weights, optimiser, schedule, random "
        "states); the other options must describe the same run",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="DataLoader worker processes building crops and augmentation (0: in the "
        "training process); per process under torchrun",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        metavar="M",
        help="time budget from the start of the command: stop cleanly before it runs out "
        "(validate, save best and a resumable last); 0: none",
    )
    p.add_argument(
        "--checkpoint-steps",
        type=int,
        default=0,
        metavar="N",
        help="also save a resumable OUT/last every N steps (0: at epoch ends only)",
    )
    p.add_argument(
        "--ddp",
        action="store_true",
        help="DistributedDataParallel: start with torchrun --nproc_per_node=N -m model.cli "
        "train ... (gloo on CPU, nccl on CUDA; --batch-size is the global batch)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Dice / IoU / HD95 with bootstrap CIs")
    _add_data_options(p)
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_window_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="contour one CT series")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--ct", type=Path, required=True, help="folder of the CT series")
    p.add_argument("--clinical", required=True, help="clinical JSON file or JSON text")
    p.add_argument("--out", type=Path, required=True, help="mask.nii.gz")
    p.add_argument("--rtstruct", type=Path, default=None, help="also write an RTSTRUCT here")
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--device", default="auto")
    add_window_arguments(p)
    p.set_defaults(func=cmd_predict)

    from model.commission import register as register_commission
    from model.dataset.dataset_command import register as register_dataset
    from model.lab.experiment_runs import register as register_experiments
    from model.lab.structure_eval import register as register_structures_report
    from model.training.weight_average import register as register_average

    register_dataset(sub)
    register_commission(sub)
    register_phantoms(sub)
    register_experiments(sub)
    register_structures_report(sub)
    register_average(sub)
    for register in extra:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None, extra: Sequence[Registrar] = ()) -> int:
    """Entry point of the model commands; :func:`service.cli.main` adds the service ones."""
    args = build_parser(extra).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from model.settings import get_settings

    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return int(args.func(args))
    except LlmctvError as exc:
        print(f"llmctv {args.command}: error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
