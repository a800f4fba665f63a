"""End-to-end workflows behind the CLI: train from DICOM, evaluate, predict one case."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from model.cli import network_config
from model.clinical import parse_clinical
from model.dataset import build_cache, iter_cases, load_cached
from model.dicom.series import CtSeries, read_ct_series
from model.dicom.structures import RoiRule
from model.encoders import load_text_encoder
from model.errors import ConfigurationError, DatasetError, LlmctvError
from model.geometry import Grid
from model.inference import Predictor
from model.preprocessing import PreprocessConfig
from model.sampling import subset_by_group
from model.training import TrainConfig, Trainer, TrainResult

log = logging.getLogger(__name__)


def _rule(args: argparse.Namespace) -> RoiRule:
    return RoiRule(include=tuple(args.roi_include), exclude=tuple(args.roi_exclude or ()))


def _preprocess(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(target_spacing=tuple(args.spacing))


def train_from_dicom(args: argparse.Namespace) -> TrainResult:
    """``llmctv train``: cache the DICOM data set, then train and keep the best checkpoint."""
    pre = _preprocess(args)
    cache = args.cache or args.out / "cache"
    report = build_cache(args.data, cache, rule=_rule(args), preprocess=pre, csv_path=args.csv)
    print(report.summary())
    cases = load_cached(cache, report.built + report.reused)
    if args.train_fraction < 1.0:
        cases = subset_by_group(cases, args.train_fraction, args.seed)
    encoder = None if args.vision_only else load_text_encoder(args.text_encoder)
    config = network_config(args, encoder.hidden_size if encoder else None)
    train_cfg = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        pair_fraction=args.pair_fraction,
    )
    meta = {
        "text_encoder_name": None if args.vision_only else str(args.text_encoder),
        "preprocessing": {
            "target_spacing": list(pre.target_spacing),
            "hu_window": list(pre.hu_window),
            "orientation": pre.orientation,
        },
        "roi_rule": {"include": list(args.roi_include), "exclude": list(args.roi_exclude or [])},
        "n_cases": len(cases),
    }
    trainer = Trainer(config, train_cfg, args.out, encoder, meta)
    if args.init_from is not None and not args.resume:
        trainer.warm_start(args.init_from)
    return trainer.fit(cases, resume=args.resume)


def _window(args: argparse.Namespace) -> dict[str, Any]:
    if not 0.0 <= args.overlap < 1.0 or args.sw_batch_size < 1:
        raise ConfigurationError("--overlap must be in [0, 1) and --sw-batch-size >= 1")
    return {"device": args.device, "overlap": args.overlap, "sw_batch_size": args.sw_batch_size}


def parse_models(specs: list[str] | None, option: str = "--model") -> dict[str, Path]:
    """``NAME=CHECKPOINT`` strings -> ``{NAME: Path}``; malformed or repeated names raise."""
    models: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or name in models:
            raise ConfigurationError(f"{option} takes distinct NAME=CHECKPOINT, got {spec!r}")
        models[name] = Path(path)
    return models


def evaluate_from_dicom(args: argparse.Namespace) -> list[Path]:
    """``llmctv evaluate``: metrics per case and model on the CT grid; report files."""
    from model.report import write_evaluation_report

    models = parse_models(args.model)
    predictors = {
        name: Predictor.from_checkpoint(path, text_encoder=args.text_encoder, **_window(args))
        for name, path in models.items()
    }
    results = evaluate_cases(predictors, args.data, _rule(args), args.csv)
    return write_evaluation_report(results, args.out, seed=args.seed)


def evaluate_cases(
    predictors: dict[str, Predictor], data_dir: Path, rule: RoiRule, csv_path: Path | None = None
) -> dict[str, Any]:
    """Per-model, per-case metrics (Dice, IoU, HD95 in mm on the CT's own spacing)."""
    from model.dataset import load_case
    from model.metrics import evaluate_case

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
            pred = predictor.predict(case.ct.volume, record.prompt_text())
            metrics = evaluate_case(pred.mask, case.mask, spacing)
            per_model[name].append(
                {"case_id": case_id, "note": record.prompt_text(), **asdict(metrics)}
            )
    if not any(per_model.values()):
        raise DatasetError(f"no case of {data_dir} could be evaluated")
    return {"models": per_model, "skipped": skipped, "data": str(data_dir)}


def predict_one(args: argparse.Namespace) -> Path:
    """``llmctv predict``: one CT series + clinical JSON -> NIfTI mask on the input grid."""
    text = args.clinical
    if Path(text).is_file():
        text = Path(text).read_text()
    record = parse_clinical(text)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, text_encoder=args.text_encoder, **_window(args)
    )
    ct = read_ct_series(args.ct)
    pred = predictor.predict(ct.volume, record.prompt_text())
    write_nifti(args.out, pred.mask.astype(np.uint8), ct.volume.grid)
    if args.rtstruct is not None:
        write_prediction_rtstruct(args.rtstruct, ct, pred.mask, predictor.checkpoint_hash)
    log.info("prediction timings %s", json.dumps(pred.timings))
    return Path(args.out)


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

    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), grid.affine_ras())
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
