"""What a training run is asked to do and what it reports: settings, result, split, schedule.

:class:`TrainConfig` holds the optimisation settings of ``llmctv train`` (the paper's AdamW,
Dice + CE and schedule, plus this project's sampling, augmentation, site-rule and budget
options); :class:`TrainResult` what a run (one invocation) did. :func:`split_cases` splits by
patient, :func:`lr_lambda` is the warm-up + cosine schedule, :func:`sliding_windows` the
validation cost estimate. The loop itself is :class:`model.training.trainer.Trainer`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from model.errors import DatasetError
from model.training.augmentation import AugmentConfig
from model.training.sampling import TrainingCase, patient_groups

#: Why a run stopped before its last epoch.
STOP_REASONS = ("time_budget", "signal", "requested")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper: AdamW, lr 1e-4, weight decay 1e-5, Dice+CE 1:1)."""

    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass of crops over the training cases
    batch_size: int = 2  # the global batch: divided among DDP processes
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
    # nodal class -> N stages it is drawn for (the site's rule), used by the two options below
    stage_rule: tuple[tuple[int, tuple[str, ...]], ...] = ()
    convention_variants: bool = True  # derive counterfactual notes by the rule
    partial_labels: bool = False  # a class the rule does not draw for a stage is unlabelled
    teacher_labels: bool = False  # ...and drawn there by the warm-start model before training
    # (case-id regex, weight) pairs: cases (and CT groups) matching are drawn that much more often
    oversample: tuple[tuple[str, float], ...] = ()
    # geometry, intensity and text-aware mirror augmentation of the crops (off by default)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    workers: int = 0  # DataLoader worker processes building batches (0: in this process)
    max_minutes: float = 0.0  # time budget of the run (0: none)
    checkpoint_steps: int = 0  # also save a resumable `last` every N steps (0: epoch ends)


@dataclass
class TrainResult:
    """Outcome of a run (this invocation: ``steps`` and the rate exclude resumed steps)."""

    best_dice: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    samples_per_second: float = float("nan")  # global training crops per second
    stopped: str = ""  # "", "time_budget", "signal" or "requested"
    main: bool = True  # this process is rank 0 (the one that reports)


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


def sliding_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """How many sliding windows cover a volume of ``shape`` (a validation cost estimate)."""
    count = 1
    for size, r in zip(shape, roi, strict=True):
        stride = max(1, int(r * (1 - overlap)))
        count *= 1 if size <= r else math.ceil((size - r) / stride) + 1
    return count
