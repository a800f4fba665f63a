"""Training: Dice + cross-entropy, AdamW, warm-up then cosine, best checkpoint kept.

The text side (prompts, [SEG], LoRA) is trained through the frozen language model: each step
computes ``g`` for the batch's notes (with gradients when the tuning mode trains anything),
then the segmentation network sees ``g`` — never text.

Runs write ``<out>/best`` (highest validation Dice) and ``<out>/last`` (with the resumable
state, :mod:`model.training.run_state`) as checkpoints; ``<out>/history.json`` has one row per
epoch (loss, validation Dice, learning rate, seconds of its training steps; a row for a stop
inside an epoch has ``stopped_at_step``). The loop is over global steps: batches come from a
DataLoader over :class:`~model.training.batches.StepBatches` (``workers`` processes, keyed by
step), so a run resumes at any saved step, and under ``torchrun`` every rank trains its share
of each global batch through DistributedDataParallel (:mod:`model.training.distributed`). A
time budget (``max_minutes``), a signal or :meth:`Trainer.request_stop` ends a run cleanly:
the step finishes, the network is validated, ``best`` and a resumable ``last`` are saved.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.errors import ConfigurationError
from model.evaluation.metrics import dice
from model.inference import resolve_device
from model.network.checkpoint import Checkpoint, save_checkpoint
from model.network.config import NetworkConfig, TuningMode
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.network.sliding_window import sliding_window_classes
from model.text.encoders import TextEncoder
from model.training.batches import Batch, BatchPlan, StepBatches
from model.training.convention_variants import convention_variants, with_partial_labels
from model.training.distributed import SINGLE, DistContext, all_reduce_sum, barrier, device_for
from model.training.heads import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    ClassMap,
    expand_head,
    load_weights,
)
from model.training.partial_loss import PartialDiceCELoss
from model.training.progress import RunClock, StepBar, stop_on_signals
from model.training.run_config import (
    STOP_REASONS,
    TrainConfig,
    TrainResult,
    lr_lambda,
    sliding_windows,
    split_cases,
)
from model.training.run_state import STATE_FILE, read_state, restore_rng, rng_states, write_state
from model.training.sampling import TrainingCase
from model.training.teacher_labels import calibrate, fill_unlabelled

__all__ = [
    "HEAD_BIAS",
    "HEAD_WEIGHT",
    "STATE_FILE",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "expand_head",
    "lr_lambda",
    "split_cases",
]

log = logging.getLogger(__name__)


class _Joint(torch.nn.Module):
    """Network and trained text side as one module (what DDP wraps): notes + crops -> logits."""

    def __init__(
        self,
        net: ContourNet,
        context: PromptContext | None,
        g: Callable[[list[str]], torch.Tensor | None],
    ) -> None:
        super().__init__()
        self.net = net
        self.context = context
        self._g = g

    def forward(self, images: torch.Tensor, notes: list[str]) -> torch.Tensor:
        logits: torch.Tensor = self.net(images, self._g(notes))
        return logits


class Trainer:
    """Trains one network configuration on preprocessed cases (one process or one DDP rank)."""

    def __init__(
        self,
        net_config: NetworkConfig,
        config: TrainConfig,
        out_dir: Path,
        encoder: TextEncoder | None = None,
        meta: dict[str, Any] | None = None,
        *,
        dist: DistContext = SINGLE,
        clock_start: float | None = None,
    ) -> None:
        if net_config.multimodal and encoder is None:
            raise ConfigurationError("a multimodal network needs a text encoder")
        if config.workers < 0 or config.checkpoint_steps < 0:
            raise ConfigurationError("--workers and --checkpoint-steps must be >= 0")
        self.cfg = config
        self.out = out_dir
        self.meta = dict(meta or {})
        self.dist = dist
        self.clock = RunClock(config.max_minutes, clock_start)
        self.device = device_for(dist, resolve_device(config.device))
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
        self.loss = PartialDiceCELoss(config.lambda_dice, config.lambda_ce)
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed global steps
        self.history: list[dict[str, float]] = []
        self.best = (-1.0, -1)
        self._frozen_g: dict[str, torch.Tensor] = {}
        self._epoch_losses: list[float] = []  # global step losses of the current epoch
        self._epoch_seconds = 0.0
        self._stop = ""

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

    # --- stopping ------------------------------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step: validate, save ``best`` and a resumable ``last``."""
        self._stop = self._stop or reason

    # --- steps ---------------------------------------------------------------------------------
    def _steps(self, n_train: int) -> int:
        if self.cfg.steps_per_epoch > 0:
            return self.cfg.steps_per_epoch
        return max(1, math.ceil(n_train / self.cfg.batch_size))

    def _plan(self) -> BatchPlan:
        cfg = self.cfg
        return BatchPlan(
            roi=self.net.config.roi_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            pos_fraction=cfg.pos_fraction,
            pair_fraction=cfg.pair_fraction,
            note_augment=cfg.note_augment,
            oversample=cfg.oversample,
            augment=cfg.augment,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def _loader(self, train: list[TrainingCase], first: int, total: int) -> DataLoader[Batch]:
        return DataLoader(
            StepBatches(train, self._plan()),
            batch_size=None,
            sampler=range(first, total),
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    def _model(self) -> torch.nn.Module:
        joint = _Joint(self.net, self.context, self._g)
        if not self.dist.enabled:
            return joint
        ids = [self.device.index] if self.device.type == "cuda" else None
        # static graph: the same parameters take part in every step, and some never do (the
        # token update after the last two-way block feeds no output); DDP then skips them.
        return DistributedDataParallel(joint, device_ids=ids, static_graph=True)

    def _train_step(self, model: torch.nn.Module, batch: Batch, sched: Any) -> float:
        images, labels, notes = batch
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = self.loss(model(images, notes).float(), labels)
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
        return float(loss.detach())

    # --- validation ----------------------------------------------------------------------------
    @torch.no_grad()
    def _probabilities(self, case: TrainingCase) -> npt.NDArray[np.float32]:
        """Class probabilities ``(C, k, j, i)`` of a whole case (the network in eval mode)."""
        self.net.eval()
        if self.context is not None:
            self.context.eval()
        try:
            probs, _ = sliding_window_classes(
                self.net,
                np.asarray(case.image, np.float32),
                self._g([case.note]),
                overlap=self.cfg.val_overlap,
            )
        finally:
            self.net.train()
            if self.context is not None:
                self.context.train()
        return probs

    def _dice_scores(self, cases: list[TrainingCase]) -> list[float]:
        scores = []
        for case in cases:
            probs = self._probabilities(case)
            # foreground = 1 - background, and 1 - the classes the case leaves unlabelled
            background = probs[0] + sum((probs[c] for c in case.unlabelled_classes), 0.0)
            scores.append(dice(background <= 0.5, case.label > 0))
        return scores

    def validate(self, cases: list[TrainingCase]) -> float:
        """Mean Dice on the network grid over ``cases`` (sliding window, full volumes)."""
        if not cases:
            return float("nan")
        return float(np.mean(self._dice_scores(cases)))

    def _teacher_fill(
        self, train: list[TrainingCase], val: list[TrainingCase]
    ) -> tuple[list[TrainingCase], list[TrainingCase]]:
        """``train`` and ``val`` with their unlabelled classes drawn by the warm-start weights,
        cut at thresholds calibrated on ``train``'s drawn structures
        (:mod:`model.training.teacher_labels`); recorded in the checkpoint's metadata."""
        if "init_from" not in self.meta:
            raise ConfigurationError("--teacher-labels needs --init-from (the teacher)")
        classes = sorted({c for case in train + val for c in case.unlabelled_classes})
        thresholds = calibrate(train, self._probabilities, classes)
        train, mine = fill_unlabelled(train, self._probabilities, thresholds)
        val, theirs = fill_unlabelled(val, self._probabilities, thresholds)
        voxels = {str(c): mine.voxels.get(c, 0) + theirs.voxels.get(c, 0) for c in classes}
        self.meta["teacher_labels"] = {
            "cases": mine.cases + theirs.cases,
            "voxels": voxels,
            "thresholds": {str(c): t for c, t in thresholds.items()},
        }
        return train, val

    def _validate_shared(self, val: list[TrainingCase]) -> float:
        """Mean Dice over ``val``, each rank scoring every ``world_size``-th case."""
        mine = val[self.dist.rank :: self.dist.world_size]
        scores = self._dice_scores(mine)
        total, count = all_reduce_sum(
            self.dist, [float(sum(scores)), float(len(scores))], self.device
        )
        return total / count if count else float("nan")

    # --- the run ---------------------------------------------------------------------------------
    def fit(
        self,
        cases: list[TrainingCase],
        resume: bool = False,
        *,
        on_step: Callable[[int], None] | None = None,
    ) -> TrainResult:
        """Train for ``epochs`` (or until stopped); keep the best checkpoint by validation Dice.

        ``on_step(step)`` is called after every global step (``step`` steps done).
        """
        start = time.perf_counter()
        train, val = split_cases(cases, self.cfg.val_fraction, self.cfg.seed)
        rule = dict(self.cfg.stage_rule)
        if rule and self.cfg.partial_labels:
            train, val = with_partial_labels(train, rule), with_partial_labels(val, rule)
            if self.cfg.teacher_labels:  # before any step: the warm-start model draws them
                train, val = self._teacher_fill(train, val)
        if rule and self.cfg.convention_variants:  # after the split: variants stay on its side
            train = train + convention_variants(train, rule, partial=self.cfg.partial_labels)
        steps = self._steps(len(train))
        total = steps * self.cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, lr_lambda(total, max(1, int(total * self.cfg.warmup_fraction)))
        )
        if resume:
            self._resume(sched, steps)
        first = self.step
        self.meta["split"] = {"train": [c.case_id for c in train], "val": [c.case_id for c in val]}
        mine = val[self.dist.rank :: self.dist.world_size]
        roi = self.net.config.roi_size
        windows = sum(sliding_windows(c.image.shape, roi, self.cfg.val_overlap) for c in mine)
        bar = StepBar(
            total=total,
            initial=first,
            steps_per_epoch=steps,
            epochs=self.cfg.epochs,
            clock=self.clock,
            enabled=self.dist.is_main,
        )
        if self.history:
            bar.val_dice = self.history[-1]["val_dice"]
        model = self._model()
        self.net.train()
        train_seconds, timed_steps = 0.0, 0
        with stop_on_signals(self.request_stop):
            batches = iter(self._loader(train, first, total))
            while self.step < total:
                tick = time.perf_counter()
                loss = self._train_step(model, next(batches), sched)
                self.step += 1
                if on_step is not None:
                    on_step(self.step)
                # a validation window costs about half a training step of one sample
                self._epoch_losses.append(self._agree(loss, windows * self.clock.step_s / 2))
                seconds = time.perf_counter() - tick
                self.clock.record_step(seconds)
                self._epoch_seconds += seconds
                if self.step > first + 1 or total - first == 1:  # the first step warms up
                    train_seconds, timed_steps = train_seconds + seconds, timed_steps + 1
                bar.update(self.step, float(np.mean(self._epoch_losses)))
                if self.step % steps == 0 or self._stop:
                    self._end_epoch(val, sched, steps, bar)
                elif self.cfg.checkpoint_steps and self.step % self.cfg.checkpoint_steps == 0:
                    self._save_last(sched, steps)
                if self._stop:
                    break
        bar.close()
        barrier(self.dist)
        rate = timed_steps * self.cfg.batch_size / train_seconds if train_seconds else float("nan")
        return TrainResult(
            self.best[0],
            self.best[1],
            self.history,
            time.perf_counter() - start,
            steps=self.step - first,
            samples_per_second=rate,
            stopped=self._stop if self.step < total else "",
            main=self.dist.is_main,
        )

    def _agree(self, loss: float, finish_estimate: float) -> float:
        """The step's global loss; whether to stop, the same on every rank (any rank stops all).

        One collective per step carries both. ``finish_estimate``: seconds of a final
        validation and save, until they were timed.
        """
        if self.clock.over_budget(finish_estimate):
            self.request_stop("time_budget")
        flags = [float(self._stop == reason) for reason in STOP_REASONS]
        loss_sum, *stops = all_reduce_sum(self.dist, [loss, *flags], self.device)
        if not self._stop:
            self._stop = next((r for r, n in zip(STOP_REASONS, stops, strict=True) if n), "")
        return loss_sum / self.dist.world_size

    def _end_epoch(self, val: list[TrainingCase], sched: Any, steps: int, bar: StepBar) -> None:
        """Validate, write the epoch's row, keep ``best``, save ``last`` (a stop: mid-epoch)."""
        tick = time.perf_counter()
        val_dice = self._validate_shared(val)
        done = self.step % steps
        epoch = self.step // steps + (1 if done else 0)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(self._epoch_losses)),
            "val_dice": val_dice,
            "lr": float(sched.get_last_lr()[0]),
            "seconds": self._epoch_seconds,
        }
        if done:  # stopped inside the epoch: the row is replaced when the epoch is resumed
            row.update(stopped_at_step=done)
        else:
            self.epoch = epoch
        self.history.append(row)
        bar.val_dice = val_dice
        improved = math.isnan(val_dice) or val_dice > self.best[0]
        if improved:
            self.best = (val_dice, epoch)
        if self.dist.is_main:
            log.info("epoch %d loss %.4f val_dice %.4f", epoch, row["loss"], val_dice)
            if improved:
                self._save("best")
        self._save_last(sched, steps)
        if not done:
            self._epoch_losses, self._epoch_seconds = [], 0.0
        self.clock.finish_s = time.perf_counter() - tick

    # --- persistence ----------------------------------------------------------------------------
    def _checkpoint_meta(self) -> dict[str, Any]:
        return {
            **self.meta,
            "training": {**asdict(self.cfg), "epoch": self.epoch, "step": self.step},
            "metrics": {"best_val_dice": self.best[0], "best_epoch": self.best[1]},
            "text_encoder_name": self.meta.get("text_encoder_name"),
        }

    def _save(self, name: str) -> None:
        folder = self.out / name
        identity = self.context.identity if self.context is not None else None
        save_checkpoint(
            folder, self.net, self.context, text_encoder=identity, meta=self._checkpoint_meta()
        )
        (self.out / "history.json").write_text(json.dumps(self.history, indent=2))

    def _save_last(self, sched: Any, steps: int) -> None:
        """``last`` with the full state to resume from (written by rank 0)."""
        if self.dist.is_main:
            self._save("last")
            write_state(
                self.out / "last",
                {
                    "net": self.net.state_dict(),
                    "text": self.context.text_state() if self.context is not None else {},
                    "optim": self.optim.state_dict(),
                    "sched": sched.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "epoch": self.epoch,
                    "step": self.step,
                    "steps_per_epoch": steps,
                    "epoch_losses": self._epoch_losses,
                    "epoch_seconds": self._epoch_seconds,
                    "history": [r for r in self.history if "stopped_at_step" not in r],
                    "best": self.best,
                    "rng": rng_states(),
                },
            )

    def warm_start(self, folder: Path, class_map: ClassMap = ()) -> None:
        """Start from a checkpoint's weights (fine-tuning); the optimiser and schedule are new.

        The checkpoint must have this run's network config and, for a multimodal network, the
        same text encoder. Only the output structures may differ: kept (same name, or renamed
        by ``class_map``) classes keep their head weights, new ones start fresh, dropped ones
        are left out (:mod:`model.training.heads`); a single-CTV head given no map seeds every
        structure instead (see :func:`expand_head`), so training starts from the old union
        contour. Its path, weights digest and the class plan are recorded in the checkpoint.

        Raises
        ------
        CheckpointMismatchError
            Another network config or another text encoder.
        ConfigurationError
            A class map naming classes that the checkpoint or this run lack.
        """
        ckpt, classes = self._load_weights(folder, allow_new_structures=True, class_map=class_map)
        self.meta["init_from"] = {"checkpoint": str(folder), "weights_digest": ckpt.digest}
        if classes is not None:
            self.meta["init_from"]["classes"] = classes
        if self.dist.is_main:
            log.info("warm start from %s", folder)

    def _load_weights(
        self, folder: Path, allow_new_structures: bool = False, class_map: ClassMap = ()
    ) -> tuple[Checkpoint, dict[str, object] | None]:
        """Load a checkpoint's network and text-side weights (same config and encoder)."""
        return load_weights(
            self.net,
            self.context,
            folder,
            allow_new_structures=allow_new_structures,
            class_map=class_map,
        )

    def _resume(self, sched: Any, steps: int) -> None:
        """Continue from ``<out>/last``: weights, optimiser, schedule, step, random states."""
        folder = self.out / "last"
        state = read_state(folder, self.device)
        if state is None:
            raise ConfigurationError(f"nothing to resume in {folder}")
        if state.get("steps_per_epoch", steps) != steps:
            raise ConfigurationError(
                f"cannot resume {folder}: {state['steps_per_epoch']} steps per epoch there, "
                f"{steps} now (other data or batch size)"
            )
        if "net" in state:
            self.net.load_state_dict(state["net"])
            if self.context is not None:
                self.context.load_state_dict(state["text"])
        else:  # a state from before the weights were part of it
            self._load_weights(folder)
        self.optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], tuple(state["best"])
        self.step = int(state.get("step", self.epoch * steps))
        self._epoch_losses = list(state.get("epoch_losses", []))
        self._epoch_seconds = float(state.get("epoch_seconds", 0.0))
        if "rng" in state and isinstance(state["rng"], dict) and "torch" in state["rng"]:
            restore_rng(state["rng"])
        elif "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"].cpu())
        if self.dist.is_main:
            log.info("resumed at step %d (epoch %d)", self.step, self.epoch)
