"""Training: Dice + cross-entropy, AdamW, warm-up then cosine, best checkpoint kept.

The text side (prompts, [SEG], LoRA) is trained through the frozen language model: each step
computes ``g`` for the batch's notes (with gradients when the tuning mode trains anything),
then the segmentation network sees ``g`` — never text.

Runs write ``<out>/best`` (highest validation Dice) and ``<out>/last`` (with optimiser state
for resuming) as checkpoints; ``<out>/history.json`` has one row per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses.dice import DiceCELoss
from tqdm import tqdm

from model.errors import CheckpointMismatchError, ConfigurationError, DatasetError
from model.evaluation.metrics import dice
from model.inference import resolve_device, sliding_window_classes
from model.network.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.network.config import NetworkConfig, TuningMode
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.text.encoders import TextEncoder
from model.training.augmentation import AugmentConfig, Augmenter
from model.training.note_variants import equivalent_notes
from model.training.sampling import (
    CaseSampler,
    TrainingCase,
    crop_batch,
    paired_batch,
    patient_groups,
)

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper: AdamW, lr 1e-4, weight decay 1e-5, Dice+CE 1:1)."""

    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass of crops over the training cases
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    pos_fraction: float = 0.67
    val_fraction: float = 0.2
    val_overlap: float = 0.25
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    grad_clip: float = 1.0
    pair_fraction: float = 0.0  # share of steps whose batch pairs two notes of one CT
    note_augment: float = 0.0  # share of notes rewritten to another with the same target
    # (case-id regex, weight) pairs: cases (and CT groups) matching are drawn that much more often
    oversample: tuple[tuple[str, float], ...] = ()
    # geometry, intensity and text-aware mirror augmentation of the crops (off by default)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainResult:
    """Outcome of a run."""

    best_dice: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def split_cases(
    cases: list[TrainingCase], val_fraction: float, seed: int
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """Seeded split into training and validation cases by patient (at least one each when >= 2).

    All notes of one CT (counterfactuals share the CT's group) and all CTs of one patient (the
    cases' hashed PatientIDs) fall on the same side (:func:`patient_groups`), so the validation
    Dice is never measured on a CT, or a patient, the network trained on. ``val_fraction`` is
    a share of those groups.
    """
    if not cases:
        raise DatasetError("no training cases")
    groups = patient_groups(cases)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val = min(max(1, round(len(keys) * val_fraction)), len(keys) - 1) if len(keys) > 1 else 0
    val_ids = {id(c) for key in keys[:n_val] for c in groups[key]}
    return [c for c in cases if id(c) not in val_ids], [c for c in cases if id(c) in val_ids]


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


HEAD_WEIGHT = "decoder.head.conv.weight"
HEAD_BIAS = "decoder.head.conv.bias"


def expand_head(
    state: dict[str, torch.Tensor], old_classes: int, new_channels: int
) -> dict[str, torch.Tensor]:
    """Seed a head of ``new_channels`` classes from a single-CTV (background + 1) head.

    Background keeps its weights; every structure gets the old foreground weights (and, when
    the head has a bias, the bias lowered by ``log(S)`` so that the summed structure probability
    equals the old foreground probability). Training then separates the structures.

    Raises
    ------
    CheckpointMismatchError
        The old head has more than one foreground class (nothing to seed from).
    """
    if old_classes != 1:
        raise CheckpointMismatchError("only a single-CTV head can seed new structures")
    weight = state[HEAD_WEIGHT]
    n = new_channels - 1
    # ConvTranspose3d weights are (in, out, k, j, i): classes are dimension 1.
    state = dict(state)
    state[HEAD_WEIGHT] = torch.cat([weight[:, :1]] + [weight[:, 1:2]] * n, dim=1)
    if HEAD_BIAS in state:
        bias = state[HEAD_BIAS]
        state[HEAD_BIAS] = torch.cat([bias[:1]] + [bias[1:2] - math.log(n)] * n)
    return state


class Trainer:
    """Trains one network configuration on preprocessed cases."""

    def __init__(
        self,
        net_config: NetworkConfig,
        config: TrainConfig,
        out_dir: Path,
        encoder: TextEncoder | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if net_config.multimodal and encoder is None:
            raise ConfigurationError("a multimodal network needs a text encoder")
        self.cfg = config
        self.out = out_dir
        self.meta = dict(meta or {})
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.net = ContourNet(net_config).to(self.device)
        self.context = PromptContext(net_config, encoder) if net_config.multimodal else None
        if self.context is not None:
            self.context.to(self.device)
            self.context.encoder.model.to(self.device)
        params = [p for p in self.net.parameters() if p.requires_grad]
        if self.context is not None:
            params += [p for p in self.context.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.loss = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            lambda_dice=config.lambda_dice,
            lambda_ce=config.lambda_ce,
        )
        self.augmenter = Augmenter(config.augment)
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best = (-1.0, -1)
        self._frozen_g: dict[str, torch.Tensor] = {}

    # --- context -------------------------------------------------------------------------------
    def _g(self, notes: list[str]) -> torch.Tensor | None:
        if self.context is None:
            return None
        if self.context.config.tuning is TuningMode.NONE:  # nothing trains: compute once
            missing = [n for n in dict.fromkeys(notes) if n not in self._frozen_g]
            if missing:
                with torch.no_grad():
                    for n, row in zip(missing, self.context(missing), strict=True):
                        self._frozen_g[n] = row
            return torch.stack([self._frozen_g[n] for n in notes])
        g: torch.Tensor = self.context(notes)
        return g

    # --- one epoch -------------------------------------------------------------------------------
    def _steps(self, n_train: int) -> int:
        if self.cfg.steps_per_epoch > 0:
            return self.cfg.steps_per_epoch
        return max(1, math.ceil(n_train / self.cfg.batch_size))

    def _draw_batch(
        self, train: list[TrainingCase], sampler: CaseSampler, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """One batch: two notes of one CT per pair (``pair_fraction`` of steps) or single crops."""
        roi = self.net.config.roi_size
        paired = self.cfg.pair_fraction > 0 and rng.random() < self.cfg.pair_fraction
        if paired:
            images, labels, notes = paired_batch(
                sampler.pair_groups,
                self.cfg.batch_size,
                roi,
                rng,
                self.cfg.pos_fraction,
                weights=sampler.group_weights,
            )
        else:
            picks = [train[i] for i in sampler.draw_cases(self.cfg.batch_size, rng)]
            images, labels, notes = crop_batch(picks, roi, rng, self.cfg.pos_fraction)
        notes = equivalent_notes(notes, self.cfg.note_augment, rng)
        return self.augmenter.batch(images, labels, notes, rng, paired=paired)

    def _train_epoch(
        self, train: list[TrainingCase], rng: np.random.Generator, sched: Any, steps: int
    ) -> float:
        self.net.train()
        losses = []
        sampler = CaseSampler(train, self.cfg.oversample)
        for _ in range(steps):
            images, labels, notes = self._draw_batch(train, sampler, rng)
            images, labels = images.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                g = self._g(notes)
                loss = self.loss(self.net(images, g).float(), labels)
            self.optim.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optim)
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.optim.param_groups for p in group["params"]],
                self.cfg.grad_clip,
            )
            self.scaler.step(self.optim)
            self.scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self, cases: list[TrainingCase]) -> float:
        """Mean Dice on the network grid over ``cases`` (sliding window, full volumes)."""
        if not cases:
            return float("nan")
        self.net.eval()
        if self.context is not None:
            self.context.eval()
        scores = []
        for case in cases:
            g = self._g([case.note])
            probs, _ = sliding_window_classes(
                self.net, np.asarray(case.image, np.float32), g, overlap=self.cfg.val_overlap
            )
            scores.append(dice(probs[0] <= 0.5, case.label > 0))  # foreground = 1 - background
        if self.context is not None:
            self.context.train()
        return float(np.mean(scores))

    # --- the run ---------------------------------------------------------------------------------
    def fit(self, cases: list[TrainingCase], resume: bool = False) -> TrainResult:
        """Train for ``epochs``; keep the best checkpoint by validation Dice."""
        start = time.perf_counter()
        train, val = split_cases(cases, self.cfg.val_fraction, self.cfg.seed)
        steps = self._steps(len(train))
        total = steps * self.cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, lr_lambda(total, max(1, int(total * self.cfg.warmup_fraction)))
        )
        rng = np.random.default_rng(self.cfg.seed)
        if resume:
            rng = self._resume(sched)
        self.meta["split"] = {"train": [c.case_id for c in train], "val": [c.case_id for c in val]}
        bar = tqdm(
            range(self.epoch, self.cfg.epochs),
            desc="train",
            unit="epoch",
            initial=self.epoch,
            total=self.cfg.epochs,
        )
        for epoch in bar:
            loss = self._train_epoch(train, rng, sched, steps)
            val_dice = self.validate(val)
            self.epoch = epoch + 1
            row = {
                "epoch": self.epoch,
                "loss": loss,
                "val_dice": val_dice,
                "lr": float(sched.get_last_lr()[0]),
            }
            self.history.append(row)
            bar.set_postfix(loss=f"{loss:.4f}", val_dice=f"{val_dice:.3f}")
            log.info("epoch %d loss %.4f val_dice %.4f", self.epoch, loss, val_dice)
            if math.isnan(val_dice) or val_dice > self.best[0]:
                self.best = (val_dice, self.epoch)
                self._save("best")
            self._save("last", sched, rng)
        seconds = time.perf_counter() - start
        return TrainResult(self.best[0], self.best[1], self.history, seconds)

    # --- persistence ----------------------------------------------------------------------------
    def _checkpoint_meta(self) -> dict[str, Any]:
        return {
            **self.meta,
            "training": {**asdict(self.cfg), "epoch": self.epoch},
            "metrics": {"best_val_dice": self.best[0], "best_epoch": self.best[1]},
            "text_encoder_name": self.meta.get("text_encoder_name"),
        }

    def _save(self, name: str, sched: Any = None, rng: np.random.Generator | None = None) -> None:
        folder = self.out / name
        identity = self.context.identity if self.context is not None else None
        save_checkpoint(
            folder, self.net, self.context, text_encoder=identity, meta=self._checkpoint_meta()
        )
        (self.out / "history.json").write_text(json.dumps(self.history, indent=2))
        if sched is not None and rng is not None:
            state = {
                "optim": self.optim.state_dict(),
                "sched": sched.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": self.epoch,
                "history": self.history,
                "best": self.best,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            }
            tmp = folder / (STATE_FILE + ".tmp")
            torch.save(state, tmp)
            tmp.replace(folder / STATE_FILE)

    def warm_start(self, folder: Path) -> None:
        """Start from a checkpoint's weights (fine-tuning); the optimiser and schedule are new.

        The checkpoint must have this run's network config and, for a multimodal network, the
        same text encoder. Its path and weights digest are recorded in the new checkpoint.
        Only the output structures may differ: a single-CTV head then seeds every structure
        (see :func:`expand_head`), so training starts from the old union contour.

        Raises
        ------
        CheckpointMismatchError
            Another network config or another text encoder.
        """
        ckpt = self._load_weights(folder, allow_new_structures=True)
        self.meta["init_from"] = {"checkpoint": str(folder), "weights_digest": ckpt.digest}
        log.info("warm start from %s", folder)

    def _load_weights(self, folder: Path, allow_new_structures: bool = False) -> Checkpoint:
        """Load a checkpoint's network and text-side weights (same config and encoder)."""
        mine = self.net.config
        if not allow_new_structures:
            ckpt = load_checkpoint(folder, expected=mine)
            self.net.load_state_dict(ckpt.network.state_dict())
        else:
            ckpt = load_checkpoint(folder)
            if ckpt.config.with_structures(mine.structures).to_json() != mine.to_json():
                raise CheckpointMismatchError(f"{folder} has another network config")
            state = ckpt.network.state_dict()
            if ckpt.config.structures != mine.structures:
                state = expand_head(state, len(ckpt.config.structure_names), mine.out_channels)
            self.net.load_state_dict(state)
        if self.context is not None:
            if ckpt.text_encoder != self.context.identity:
                raise CheckpointMismatchError(
                    f"{folder} was trained with text encoder {ckpt.text_encoder}, "
                    f"this run uses {self.context.identity}"
                )
            self.context.load_state_dict(ckpt.text_state)
        return ckpt

    def _resume(self, sched: Any) -> np.random.Generator:
        folder = self.out / "last"
        if not (folder / STATE_FILE).is_file():
            raise ConfigurationError(f"nothing to resume in {folder}")
        self._load_weights(folder)
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=False)
        self.optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], tuple(state["best"])
        torch.set_rng_state(state["torch_rng"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        log.info("resumed at epoch %d", self.epoch)
        return rng
