"""Class probabilities of a whole image from the network's fixed-size windows (MONAI's
sliding-window inferer, Gaussian-weighted overlaps).

Coordinates: arrays are ``(k, j, i)`` on the network grid (LPS-canonical,
:mod:`model.imaging.preprocessing`); nothing here knows about patient space.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from monai.inferers.utils import sliding_window_inference

from model.network.segmenter import ContourNet

ProgressFn = Callable[[float], None]


def count_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of sliding windows MONAI uses for ``shape`` (each axis padded up to ``roi``)."""
    total = 1
    for size, r in zip(shape, roi, strict=True):
        interval = max(int(r * (1 - overlap)), 1)
        total *= 1 if size <= r else math.ceil((size - r) / interval) + 1
    return total


@torch.no_grad()
def sliding_window_classes(
    network: ContourNet,
    image: npt.NDArray[np.float32],
    g: torch.Tensor | None,
    *,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    progress: ProgressFn | None = None,
) -> tuple[npt.NDArray[np.float32], int]:
    """Class probabilities ``(C, k, j, i)`` on the network grid and the window count.

    ``image`` is the preprocessed CT on the network grid; ``g`` ``(1, N, D)`` is shared by
    every window (``None`` for the vision-only network). AMP is used on CUDA.
    """
    device = next(network.parameters()).device
    roi = network.config.roi_size
    total = count_windows(image.shape, roi, overlap)
    done = 0
    use_amp = device.type == "cuda"

    def run(patches: torch.Tensor) -> torch.Tensor:
        nonlocal done
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = network(patches, g)
        done += patches.shape[0]
        if progress is not None:
            progress(min(done / total, 1.0))
        return torch.softmax(logits.float(), dim=1)

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    out = sliding_window_inference(x, roi, sw_batch_size, run, overlap=overlap, mode="gaussian")
    prob = out if isinstance(out, torch.Tensor) else out[0]
    return prob[0].float().cpu().numpy(), done
