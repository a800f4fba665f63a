"""Training samples: cached cases, random crops that cover the target, and batches.

Arrays are on the network grid, ``(k, j, i)`` = (slices, rows, columns).

Cases that share a CT (the same SeriesInstanceUID: a case and its counterfactual notes, with
their recomputed targets) form one *group*. Subsets keep a group together, and
:func:`paired_batch` can put two notes of one CT into a batch with the same crop, so the only
difference the loss sees between them is what the text changes. Splits keep more together:
every case of one patient (several CTs of one patient, by its hashed PatientID), so that
validation never sees a patient the network trained on (:func:`patient_groups`).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model.errors import DatasetError
from model.training.mmap_cache import cached_arrays


@dataclass
class TrainingCase:
    """One preprocessed case: CT in [0, 1] and the target label on the network grid.

    ``group`` is the SeriesInstanceUID of the CT (the case id where unknown): cases with the
    same CT and different notes share it. ``patient`` is the patient's label (a salted hash of
    the PatientID, :mod:`model.training.dataset`; empty where unknown). ``source`` is the
    cache entry whose memory maps ``image`` and ``label`` are (empty: arrays in memory); such a
    case pickles as its path and maps the file again where it is unpickled (a DataLoader
    worker started by ``spawn``). ``dropped_classes``: label classes that count as background
    in this case's crops (a counterfactual note whose target lacks them,
    :mod:`model.training.convention_variants`); the arrays stay shared.
    ``unlabelled_classes``: classes the department's rule does not draw for this case's N
    stage, so their absence says nothing (partial labels): the crops' background voxels carry
    them (:func:`encode_unlabelled`) and the loss neither rewards nor punishes them there.
    """

    case_id: str
    image: npt.NDArray[np.floating]
    label: npt.NDArray[np.uint8]
    note: str
    spacing: tuple[float, float, float]
    group: str = ""
    patient: str = ""
    source: str = ""
    dropped_classes: tuple[int, ...] = ()
    unlabelled_classes: tuple[int, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.source:
            state["image"] = state["label"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.source and state.get("image") is None:
            self.image, self.label, _ = cached_arrays(Path(self.source), mmap=True)

    @property
    def group_key(self) -> str:
        """The CT this case was drawn on (its group), never empty."""
        return self.group or self.case_id


#: A crop's background voxel at or above this value also stands for the classes whose bits
#: (class ``c``: bit ``c - 1``) the rest holds: those classes were not drawn for this case.
UNLABELLED_FLAG = 128
#: Classes a flag can name (bits 0-6 of a uint8 label).
MAX_UNLABELLED_CLASS = 7


def encode_unlabelled(
    label: npt.NDArray[np.uint8], classes: tuple[int, ...]
) -> npt.NDArray[np.uint8]:
    """``label`` with its background voxels flagged as "background or any of ``classes``".

    Labels are class maps ``(k, j, i)`` (0 background). Raises for a class a flag cannot name.
    """
    if not classes:
        return label
    if min(classes) < 1 or max(classes) > MAX_UNLABELLED_CLASS:
        raise DatasetError(
            f"unlabelled classes must be 1-{MAX_UNLABELLED_CLASS}, got {list(classes)}"
        )
    flag = UNLABELLED_FLAG | sum(1 << (c - 1) for c in set(classes))
    return np.where(label == 0, np.uint8(flag), label)


def _pad_to(array: npt.NDArray[np.generic], roi: tuple[int, ...]) -> npt.NDArray[np.generic]:
    pads = [(0, max(r - s, 0)) for s, r in zip(array.shape, roi, strict=True)]
    if not any(p[1] for p in pads):
        return array
    return np.pad(array, pads, mode="constant")


def crop_window(
    label: npt.NDArray[np.generic],
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    pos_fraction: float,
) -> tuple[slice, ...]:
    """Voxel-index slices of a ``roi`` window in ``label`` (already padded to ``roi``).

    With probability ``pos_fraction`` the window is centred on a random target voxel.
    """
    fg = np.flatnonzero(label) if rng.random() < pos_fraction else np.empty(0, dtype=np.int64)
    centre: tuple[int, ...]
    if fg.size:
        flat = int(fg[rng.integers(fg.size)])
        centre = tuple(int(c) for c in np.unravel_index(flat, label.shape))
    else:
        centre = tuple(int(rng.integers(s)) for s in label.shape)
    starts = [
        int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, roi, label.shape, strict=True)
    ]
    return tuple(slice(a, a + r) for a, r in zip(starts, roi, strict=True))


def _cut(
    case: TrainingCase, roi: tuple[int, int, int], window: tuple[slice, ...]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    image = _pad_to(case.image, roi)
    label = np.asarray(_pad_to(case.label, roi)[window], dtype=np.uint8)
    if case.dropped_classes:
        label = np.where(np.isin(label, case.dropped_classes), np.uint8(0), label)
    label = encode_unlabelled(label, case.unlabelled_classes)
    return np.asarray(image[window], dtype=np.float32), label


def random_crop(
    case: TrainingCase,
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    pos_fraction: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """A crop of ``roi`` voxels; with probability ``pos_fraction`` centred on a target voxel.

    Volumes smaller than ``roi`` are zero-padded (CT value 0 = -1000 HU after scaling).
    """
    window = crop_window(_pad_to(case.label, roi), roi, rng, pos_fraction)
    return _cut(case, roi, window)


def _stack(
    crops: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]], notes: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
    labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))[:, None]
    return images, labels, notes


def crop_batch(
    cases: list[TrainingCase],
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    pos_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack one crop per case: images ``(B, 1, k, j, i)``, labels ``(B, 1, k, j, i)``, notes."""
    crops = [random_crop(c, roi, rng, pos_fraction) for c in cases]
    return _stack(crops, [c.note for c in cases])


def group_cases(cases: list[TrainingCase]) -> dict[str, list[TrainingCase]]:
    """Cases by CT group, in input order."""
    groups: dict[str, list[TrainingCase]] = defaultdict(list)
    for case in cases:
        groups[case.group_key].append(case)
    return dict(groups)


class CaseSampler:
    """Which training cases (and which CTs, for paired batches) a step draws.

    Uniform by default. ``oversample`` holds ``(regex, weight)`` pairs: a case whose id matches
    a regex (``re.search``; the first match counts) is drawn ``weight`` times as often, and a
    CT group as often as its heaviest case. Used to show rarer cases (e.g. bilateral notes
    with a different N stage per side) more often without duplicating data.
    """

    def __init__(
        self, cases: list[TrainingCase], oversample: tuple[tuple[str, float], ...] = ()
    ) -> None:
        self.n_cases = len(cases)
        self.pair_groups = [g for g in group_cases(cases).values() if len(g) > 1]
        self.case_weights: npt.NDArray[np.float64] | None = None
        self.group_weights: npt.NDArray[np.float64] | None = None
        if not oversample:
            return
        patterns = [(re.compile(p), float(w)) for p, w in oversample]
        if any(w <= 0 for _, w in patterns):
            raise DatasetError(f"oversampling weights must be positive, got {oversample}")

        def weight(case: TrainingCase) -> float:
            return next((w for p, w in patterns if p.search(case.case_id)), 1.0)

        self.case_weights = _normalised([weight(c) for c in cases])
        self.group_weights = _normalised([max(weight(c) for c in g) for g in self.pair_groups])

    def draw_cases(self, size: int, rng: np.random.Generator) -> list[int]:
        """``size`` case indices, with replacement."""
        if self.case_weights is None:
            return [int(i) for i in rng.integers(self.n_cases, size=size)]
        return [int(i) for i in rng.choice(self.n_cases, size=size, p=self.case_weights)]


def _normalised(weights: list[float]) -> npt.NDArray[np.float64] | None:
    if not weights:
        return None
    array = np.asarray(weights, dtype=np.float64)
    normalised: npt.NDArray[np.float64] = array / array.sum()
    return normalised


def paired_batch(
    groups: list[list[TrainingCase]],
    batch_size: int,
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    pos_fraction: float,
    *,
    weights: npt.NDArray[np.float64] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``batch_size // 2`` pairs: two notes of one CT, cropped at the same window.

    ``groups`` must hold only groups of two or more cases, drawn uniformly or with the
    probabilities ``weights``. The window is centred on the union of the pair's targets, so
    the region where the notes disagree is usually inside.
    """
    if batch_size < 2 or batch_size % 2:
        raise DatasetError(f"paired batches need an even batch size, got {batch_size}")
    if not groups:
        raise DatasetError("paired batches need CTs with two or more notes (counterfactuals)")
    crops, notes = [], []
    for _ in range(batch_size // 2):
        pick = rng.integers(len(groups)) if weights is None else rng.choice(len(groups), p=weights)
        group = groups[int(pick)]
        first, second = (group[int(i)] for i in rng.choice(len(group), size=2, replace=False))
        union = np.maximum(_pad_to(first.label, roi), _pad_to(second.label, roi))
        window = crop_window(union, roi, rng, pos_fraction)
        for case in (first, second):
            crops.append(_cut(case, roi, window))
            notes.append(case.note)
    return _stack(crops, notes)


def patient_groups(cases: list[TrainingCase]) -> dict[str, list[TrainingCase]]:
    """Cases that must fall on one side of a split: linked by one CT or by one patient.

    Cases sharing a CT group or a patient label are joined, transitively. Each group is keyed
    by the smallest CT group key it holds (so without patient labels the groups and keys are
    those of :func:`group_cases`); cases keep their input order.
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:
            parent[key], key = root, parent[key]
        return root

    for case in cases:
        ct = "ct:" + case.group_key
        parent.setdefault(ct, ct)
        if case.patient:
            person = "patient:" + case.patient
            parent.setdefault(person, person)
            a, b = find(ct), find(person)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[TrainingCase]] = defaultdict(list)
    for case in cases:
        members[find("ct:" + case.group_key)].append(case)
    return {min(c.group_key for c in group): group for group in members.values()}


def shuffled_groups(cases: list[TrainingCase], seed: int) -> list[str]:
    """The cases' CT groups in a seeded random order (independent of the input order)."""
    keys = sorted(group_cases(cases))
    random.Random(seed).shuffle(keys)
    return keys


def subset_by_group(cases: list[TrainingCase], fraction: float, seed: int) -> list[TrainingCase]:
    """A seeded subset holding ``fraction`` of the CTs, each with all its notes (Table 3).

    At least two CTs are kept.
    """
    keys = shuffled_groups(cases, seed)
    keep = set(keys[: max(2, round(len(keys) * fraction))])
    return [c for c in cases if c.group_key in keep]
