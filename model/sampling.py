"""Training samples: cached cases and random crops that cover the target.

Arrays are on the network grid, ``(k, j, i)`` = (slices, rows, columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch


@dataclass
class TrainingCase:
    """One preprocessed case: CT in [0, 1] and the target label on the network grid."""

    case_id: str
    image: npt.NDArray[np.floating]
    label: npt.NDArray[np.uint8]
    note: str
    spacing: tuple[float, float, float]


def _pad_to(array: npt.NDArray[np.generic], roi: tuple[int, ...]) -> npt.NDArray[np.generic]:
    pads = [(0, max(r - s, 0)) for s, r in zip(array.shape, roi, strict=True)]
    if not any(p[1] for p in pads):
        return array
    return np.pad(array, pads, mode="constant")


def random_crop(
    case: TrainingCase,
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    pos_fraction: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """A crop of ``roi`` voxels; with probability ``pos_fraction`` centred on a target voxel.

    Volumes smaller than ``roi`` are zero-padded (CT value 0 = -1000 HU after scaling).
    """
    image = _pad_to(case.image, roi)
    label = _pad_to(case.label, roi)
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
    sl = tuple(slice(a, a + r) for a, r in zip(starts, roi, strict=True))
    return np.asarray(image[sl], dtype=np.float32), np.asarray(label[sl], dtype=np.uint8)


def crop_batch(
    cases: list[TrainingCase],
    roi: tuple[int, int, int],
    rng: np.random.Generator,
    pos_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack one crop per case: images ``(B, 1, k, j, i)``, labels ``(B, 1, k, j, i)``, notes."""
    crops = [random_crop(c, roi, rng, pos_fraction) for c in cases]
    images = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
    labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))[:, None]
    return images, labels, [c.note for c in cases]
