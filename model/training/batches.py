"""The batches of a run, keyed by step: the same crops whatever the processes and workers.

Every random choice behind the global batch of step ``t`` (single or paired, which cases,
which crop windows, note rewrites, augmentation draws) comes from generators seeded by
``(seed, t, sample)``; nothing carries over from one step to the next. Hence

* a run resumed at step ``t`` sees the very batches an uninterrupted run sees from ``t`` on;
* DataLoader workers (``--workers``) may build steps in any order and any process;
* with ``W`` DDP processes, rank ``r`` builds samples ``r * B/W`` to ``(r + 1) * B/W - 1`` of
  the global batch of ``B`` (whole pairs for paired batches): the ranks' shares are disjoint
  and together are the batch one process would draw, so the averaged gradient is the
  single-process gradient (the loss is a mean over samples of equal size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from model.errors import ConfigurationError, DatasetError
from model.training.augmentation import AugmentConfig, Augmenter
from model.training.note_variants import equivalent_notes
from model.training.sampling import CaseSampler, TrainingCase, crop_batch, paired_batch

#: One batch: images ``(b, 1, k, j, i)`` float32, labels ``(b, 1, k, j, i)`` int64, notes.
Batch = tuple[torch.Tensor, torch.Tensor, list[str]]
_SINGLE, _PAIR = 0, 1


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch of a step is drawn, and which part of it this rank builds."""

    roi: tuple[int, int, int]
    batch_size: int  # the global batch, over all ranks
    seed: int = 0
    pos_fraction: float = 0.67
    pair_fraction: float = 0.0
    note_augment: float = 0.0
    oversample: tuple[tuple[str, float], ...] = ()
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigurationError(f"the seed must be >= 0, got {self.seed}")
        if self.batch_size < 1 or self.batch_size % self.world_size:
            raise ConfigurationError(
                f"--batch-size {self.batch_size} (the global batch) must be a positive "
                f"multiple of the {self.world_size} processes"
            )
        if self.pair_fraction > 0 and self.local_batch % 2:
            raise DatasetError(
                f"paired batches need an even batch per process, got {self.local_batch} "
                f"(--batch-size {self.batch_size} over {self.world_size} processes)"
            )

    @property
    def local_batch(self) -> int:
        """Samples this rank builds per step."""
        return self.batch_size // self.world_size


class StepBatches(Dataset[Batch]):
    """Map-style data set: item ``t`` is this rank's share of the global batch of step ``t``.

    Fed to a :class:`torch.utils.data.DataLoader` with ``batch_size=None`` and the steps to run
    as its sampler; the cases are memory maps (:func:`model.training.dataset.load_cached`), so
    worker processes share their pages instead of copying volumes.
    """

    def __init__(self, cases: list[TrainingCase], plan: BatchPlan) -> None:
        if not cases:
            raise DatasetError("no training cases")
        self.cases = cases
        self.plan = plan
        self.sampler = CaseSampler(cases, plan.oversample)
        if plan.pair_fraction > 0 and not self.sampler.pair_groups:
            raise DatasetError("paired batches need CTs with two or more notes (counterfactuals)")
        self.augmenter = Augmenter(plan.augment)

    def paired(self, step: int) -> bool:
        """Whether the batch of ``step`` pairs two notes of one CT."""
        if self.plan.pair_fraction <= 0:
            return False
        return bool(
            np.random.default_rng([self.plan.seed, step]).random() < self.plan.pair_fraction
        )

    def __getitem__(self, step: int) -> Batch:
        plan = self.plan
        if self.paired(step):
            half = plan.local_batch // 2
            parts = [self._pair(step, p) for p in range(plan.rank * half, (plan.rank + 1) * half)]
        else:
            first = plan.rank * plan.local_batch
            parts = [self._single(step, j) for j in range(first, first + plan.local_batch)]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        notes = [note for p in parts for note in p[2]]
        return images, labels, notes

    def _single(self, step: int, sample: int) -> Batch:
        plan = self.plan
        rng = np.random.default_rng([plan.seed, step, _SINGLE, sample])
        (index,) = self.sampler.draw_cases(1, rng)
        images, labels, notes = crop_batch([self.cases[index]], plan.roi, rng, plan.pos_fraction)
        notes = equivalent_notes(notes, plan.note_augment, rng)
        return self.augmenter.batch(images, labels, notes, rng, paired=False)

    def _pair(self, step: int, pair: int) -> Batch:
        plan = self.plan
        rng = np.random.default_rng([plan.seed, step, _PAIR, pair])
        images, labels, notes = paired_batch(
            self.sampler.pair_groups,
            2,
            plan.roi,
            rng,
            plan.pos_fraction,
            weights=self.sampler.group_weights,
        )
        notes = equivalent_notes(notes, plan.note_augment, rng)
        return self.augmenter.batch(images, labels, notes, rng, paired=True)
