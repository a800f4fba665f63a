"""End-to-end workflows behind the CLI: train from DICOM, evaluate, predict one case."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.dataset.structure_map import NODE_POSITIVE_BASES, StructureMap, load_structure_map
from model.dataset.structure_targets import MapRule, map_meta
from model.dicom.rtstruct.reader import RoiRule
from model.dicom.series import CtSeries, read_ct_series
from model.errors import ConfigurationError, DatasetError, LlmctvError
from model.imaging.geometry import Grid
from model.imaging.preprocessing import PreprocessConfig
from model.inference import Predictor, resolve_device
from model.network.config import NetworkChoice
from model.text.clinical import parse_clinical
from model.text.encoders import load_text_encoder
from model.training.dataset import TargetRule, build_cache, iter_cases, load_cached
from model.training.distributed import DistContext, barrier, broadcast_object, distributed
from model.training.heads import ClassMap
from model.training.sampling import subset_by_group
from model.training.trainer import TrainConfig, Trainer, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataOptions:
    """A DICOM data set: its folder, clinical CSV and which ROIs are the target.

    The target is the CTV (``roi_include``/``roi_exclude``), one class per structure by
    ROI-name patterns (``structures``), or one class per structure of a site's structure map
    (``structure_map``, a TOML file: :mod:`model.dataset.structure_targets`), which then
    replaces the ROI-name patterns; ``structures`` and ``structure_map`` exclude each other.
    """

    data: Path
    csv: Path | None = None
    roi_include: tuple[str, ...] = (r"^ctv$",)
    roi_exclude: tuple[str, ...] = ()
    structures: tuple[tuple[str, tuple[str, ...]], ...] = ()
    structure_map: Path | None = None

    def rule(self) -> RoiRule:
        """The ROI-name rule of the whole CTV."""
        return RoiRule(include=tuple(self.roi_include), exclude=tuple(self.roi_exclude))

    def target(self) -> TargetRule:
        """The training label: the CTV, or one class per structure (patterns or the map).

        Raises
        ------
        ConfigurationError
            Both ``structures`` and ``structure_map``, or an invalid structure map.
        """
        if self.structure_map is not None:
            if self.structures:
                raise ConfigurationError("--structure-map and --structure exclude each other")
            return TargetRule.from_structure_map(load_structure_map(self.structure_map))
        return TargetRule(
            union=self.rule(),
            structures=tuple((name, RoiRule(include=p)) for name, p in self.structures),
        )

    def reference(self) -> RoiRule | TargetRule:
        """The reference CTV of an evaluation: the CTV rule, or every structure of the map."""
        return self.rule() if self.structure_map is None else self.target()

    @property
    def structure_names(self) -> tuple[str, ...]:
        """The structures' names in label order (empty: one CTV class)."""
        return self.target().structure_names


MIRROR_TTA_HELP = (
    "test-time augmentation: also contour the mirrored patient with the mirrored note and "
    "average (twice the network time)"
)


@dataclass(frozen=True)
class WindowOptions:
    """Sliding-window inference: device, window overlap (0-1), windows per batch, and mirror
    test-time augmentation (:class:`~model.inference.Predictor`)."""

    device: str = "auto"
    overlap: float = 0.25
    sw_batch_size: int = 2
    mirror_tta: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WindowOptions:
        """The options :func:`model.cli.add_window_arguments` (and ``--device``) parsed."""
        return cls(
            device=args.device,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
            mirror_tta=args.mirror_tta,
        )

    def predictor_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`Predictor.from_checkpoint`.

        Raises
        ------
        ConfigurationError
            Overlap outside [0, 1) or a batch below 1.
        """
        if not 0.0 <= self.overlap < 1.0 or self.sw_batch_size < 1:
            raise ConfigurationError("--overlap must be in [0, 1) and --sw-batch-size >= 1")
        return {
            "device": self.device,
            "overlap": self.overlap,
            "sw_batch_size": self.sw_batch_size,
            "mirror_tta": self.mirror_tta,
        }


@dataclass(frozen=True)
class TrainOptions:
    """``llmctv train``: the data, the network, the schedule and where the run goes.

    ``class_map`` renames or drops the classes of ``init_from`` (:mod:`model.training.heads`);
    ``ddp`` requires a ``torchrun`` launch (a run under torchrun is distributed anyway).
    ``convention_variants`` derives counterfactual notes by the structure map's N-stage rule,
    and ``partial_labels`` leaves a structure the rule does not draw for a case's N stage
    unlabelled instead of background (:mod:`model.training.convention_variants`);
    ``teacher_labels`` draws it there with the ``init_from`` model before the first step
    (:mod:`model.training.teacher_labels`).
    """

    data: DataOptions
    out: Path
    network: NetworkChoice = field(default_factory=lambda: NetworkChoice("cpu"))
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)
    cache: Path | None = None
    text_encoder: str = "smollm2"
    train: TrainConfig = field(default_factory=TrainConfig)
    train_fraction: float = 1.0
    init_from: Path | None = None
    resume: bool = False
    class_map: ClassMap = ()
    ddp: bool = False
    convention_variants: bool = False
    partial_labels: bool = False
    teacher_labels: bool = False


def train_from_dicom(options: TrainOptions) -> TrainResult:
    """``llmctv train``: cache the DICOM data set, then train and keep the best checkpoint.

    Under ``torchrun`` rank 0 builds the cache and loads the text encoder first (the others
    wait, then read what it wrote); every rank then trains its share. ``max_minutes`` counts
    from here, cache building included.
    """
    started = time.perf_counter()
    if options.class_map and options.init_from is None:
        raise ConfigurationError("--class-map maps the classes of --init-from: give both")
    if options.teacher_labels and (options.init_from is None or not options.partial_labels):
        raise ConfigurationError(
            "--teacher-labels draws the unlabelled structures of --partial-labels with the "
            "--init-from model: give all three"
        )
    with distributed(resolve_device(options.train.device), options.ddp) as dist:
        return _train(options, dist, started)


def _train(options: TrainOptions, dist: DistContext, started: float) -> TrainResult:
    pre = PreprocessConfig(target_spacing=options.spacing)
    rule = options.data.rule()
    target = options.data.target()
    cache = options.cache or options.out / "cache"
    case_ids: list[str] = []
    if dist.is_main:
        report = build_cache(
            options.data.data,
            cache,
            rule=target,
            preprocess=pre,
            csv_path=options.data.csv,
        )
        print(report.summary())
        case_ids = report.built + report.reused
    case_ids = broadcast_object(dist, case_ids)
    cases = load_cached(cache, case_ids)
    if options.train_fraction < 1.0:
        cases = subset_by_group(cases, options.train_fraction, options.train.seed)
    vision_only = options.network.vision_only
    encoder = None
    for turn in (True, False):  # rank 0 first: it may convert the encoder into the cache
        if not vision_only and dist.is_main == turn:
            encoder = load_text_encoder(options.text_encoder)
        barrier(dist)
    config = options.network.config(encoder.hidden_size if encoder else None)
    config = config.with_structures(target.structure_names)
    structure_map = _target_map(target)
    meta: dict[str, Any] = {
        "text_encoder_name": None if vision_only else str(options.text_encoder),
        "preprocessing": {
            "target_spacing": list(pre.target_spacing),
            "hu_window": list(pre.hu_window),
            "orientation": pre.orientation,
        },
        "roi_rule": {"include": list(rule.include), "exclude": list(rule.exclude)},
        "structure_rules": {name: list(p) for name, p in options.data.structures},
        "n_cases": len(cases),
    }
    if structure_map is not None:  # the map, not the patterns, chose the ROIs
        meta["roi_rule"] = None
        meta["structure_map"] = map_meta(structure_map)
    train_config = options.train
    if options.convention_variants or options.partial_labels:
        train_config = replace(
            train_config,
            stage_rule=_stage_rule(structure_map, train_config),
            convention_variants=options.convention_variants,
            partial_labels=options.partial_labels,
            teacher_labels=options.teacher_labels,
        )
    trainer = Trainer(
        config, train_config, options.out, encoder, meta, dist=dist, clock_start=started
    )
    # A resumed run restores its own weights; with teacher labels it loads the warm start
    # first, so that the same teacher draws the same labels before the weights are restored.
    if options.init_from is not None and (not options.resume or options.teacher_labels):
        trainer.warm_start(options.init_from, options.class_map)
    return trainer.fit(cases, resume=options.resume)


def _stage_rule(
    structure_map: StructureMap | None, train: TrainConfig
) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Nodal class (1-based, map order) -> the N stages it is drawn for, from the map.

    Raises
    ------
    ConfigurationError
        Without a structure map, or with ``note_augment``, which rewrites N1-N3 into each
        other and so contradicts a map whose nodal structures tell those stages apart.
    """
    if structure_map is None:
        raise ConfigurationError(
            "--convention-variants and --partial-labels need --structure-map (its n_stages)"
        )
    rule = tuple(
        (index, entry.n_stages)
        for index, entry in enumerate(structure_map.structures, start=1)
        if entry.nodal
    )
    if train.note_augment > 0 and any(stages != NODE_POSITIVE_BASES for _, stages in rule):
        raise ConfigurationError(
            "--note-augment rewrites N1-N3 into each other, but the structure map draws "
            "some nodal structures for some of those stages only: leave it at 0"
        )
    return rule


def _target_map(target: TargetRule) -> StructureMap | None:
    """The structure map whose rules make ``target`` (``None`` for ROI-name patterns)."""
    rule = target.union
    return rule.structure_map if isinstance(rule, MapRule) else None


def parse_models(specs: list[str] | None, option: str = "--model") -> dict[str, Path]:
    """``NAME=CHECKPOINT`` strings -> ``{NAME: Path}``; malformed or repeated names raise."""
    models: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name in models:
            raise ConfigurationError(f"{option} takes distinct NAME=CHECKPOINT, got {spec!r}")
        models[name] = Path(path)
    return models


def evaluate_from_dicom(
    data: DataOptions,
    models: dict[str, Path],
    out: Path,
    *,
    text_encoder: str | None = None,
    window: WindowOptions = WindowOptions(),
    seed: int = 0,
) -> list[Path]:
    """``llmctv evaluate``: metrics per case and model on the CT grid; report files."""
    from model.evaluation.report import write_evaluation_report

    predictors = {
        name: Predictor.from_checkpoint(
            path, text_encoder=text_encoder, **window.predictor_options()
        )
        for name, path in models.items()
    }
    results = evaluate_cases(predictors, data.data, data.reference(), data.csv)
    return write_evaluation_report(results, out, seed=seed)


def evaluate_cases(
    predictors: dict[str, Predictor],
    data_dir: Path,
    rule: RoiRule | TargetRule,
    csv_path: Path | None = None,
) -> dict[str, Any]:
    """Per-model, per-case metrics (Dice, IoU, HD95 in mm on the CT's own spacing).

    The reference is the CTV: the ROIs of a :class:`RoiRule`, or every labelled voxel of a
    :class:`TargetRule` (with a structure map: the union of its structures' ROIs, each voxel
    once, never the union ROI nor an ignored one).
    """
    from model.evaluation.metrics import evaluate_case
    from model.training.dataset import load_case

    per_model: dict[str, list[dict[str, Any]]] = {name: [] for name in predictors}
    skipped = []
    for case_id, folder, record in iter_cases(data_dir, csv_path):
        try:
            case = load_case(folder, record, rule)
        except LlmctvError as exc:
            skipped.append({"case_id": case_id, "code": exc.code, "detail": exc.detail})
            continue
        spacing = case.ct.volume.grid.spacing
        for name, predictor in predictors.items():
            pred = predictor.predict_record(case.ct.volume, record)
            metrics = evaluate_case(pred.mask, np.asarray(case.mask) > 0, spacing)
            per_model[name].append(
                {"case_id": case_id, "note": record.prompt_text(), **asdict(metrics)}
            )
    if not any(per_model.values()):
        raise DatasetError(f"no case of {data_dir} could be evaluated")
    return {"models": per_model, "skipped": skipped, "data": str(data_dir)}


def predict_one(
    checkpoint: Path,
    ct_dir: Path,
    clinical: str,
    out: Path,
    *,
    rtstruct: Path | None = None,
    text_encoder: str | None = None,
    window: WindowOptions = WindowOptions(),
) -> Path:
    """``llmctv predict``: one CT series + clinical JSON -> NIfTI mask on the input grid.

    ``clinical`` is a JSON file's path or JSON text.
    """
    text = clinical
    if Path(text).is_file():
        text = Path(text).read_text()
    record = parse_clinical(text)
    predictor = Predictor.from_checkpoint(
        checkpoint, text_encoder=text_encoder, **window.predictor_options()
    )
    ct = read_ct_series(ct_dir)
    pred = predictor.predict_record(ct.volume, record)
    write_nifti(out, pred.mask.astype(np.uint8), ct.volume.grid)
    if rtstruct is not None:
        write_prediction_rtstruct(rtstruct, ct, pred.mask, predictor.checkpoint_hash)
    log.info("prediction timings %s", json.dumps(pred.timings))
    return Path(out)


def write_prediction_rtstruct(path: Path, ct: CtSeries, mask: np.ndarray, model_hash: str) -> None:
    """An RTSTRUCT with one ROI ``CTV`` (RTROIInterpretedType CTV) on the input series."""
    from model import __version__
    from model.dicom.rtstruct import ReferencedSeries, RoiSpec, WriterInfo, write_rtstruct

    info = WriterInfo(
        model_name="llmctv multimodal CTV",
        software_versions=(f"llmctv {__version__}", f"checkpoint {model_hash or 'unknown'}"),
    )
    write_rtstruct(path, ReferencedSeries.from_datasets(ct.datasets), [RoiSpec("CTV", mask)], info)


def write_nifti(path: Path, array: np.ndarray, grid: Grid) -> None:
    """Write a ``(k, j, i)`` array as NIfTI with the grid's RAS affine (no hand flips).

    NIfTI stores ``(i, j, k)``; the array is transposed and the affine maps those indices
    through the grid's LPS geometry converted to RAS.
    """
    import nibabel as nib

    voxels = np.ascontiguousarray(array.transpose(2, 1, 0))
    image = nib.Nifti1Image(voxels, grid.affine_ras())  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
