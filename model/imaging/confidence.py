"""How sure the network is of each structure: the mean class probability over its voxels.

Coordinates: class probabilities ``(C, k, j, i)`` (background first) on the network grid
(LPS-canonical); sides from LPS x against the body midline, as everywhere
(:func:`model.imaging.postprocessing.left_of_midline`).

For a structure network, the confidence of (structure, side) is the mean probability of that
structure's class over the voxels labelled with it on that side: 1.0 when every voxel is
certain, about 0.5 where the network hesitates between two classes or between the structure
and background (its borders and anything it guesses). It costs no extra network pass. A
single-CTV network gives ``("ctv", side)``: the mean foreground probability.

It is a ranking, not a probability of being right: the flag threshold is calibrated on
held-out cases (``docs/safety/confidence.md``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from model.imaging.geometry import Grid, mask_box
from model.imaging.postprocessing import SIDES, left_of_midline


def structure_confidence(
    probs: npt.NDArray[np.float32],
    labels: npt.NDArray[np.uint8] | None,
    grid: Grid,
    mid_x: float,
    names: tuple[str, ...],
) -> dict[tuple[str, str], float]:
    """Mean class probability per (structure, side) on the network ``grid``.

    ``labels`` are the structure labels 1..S of :func:`model.imaging.postprocessing.tidy_labels`
    (``None`` for a single-CTV network); only foreground voxels (background <= 0.5) count.
    """
    found: dict[tuple[str, str], float] = {}
    # Only the foreground's box is read: the voxels of each region, in the same order.
    box = mask_box(probs[0] <= 0.5)
    if box is None:
        return found
    foreground = probs[0][box] <= 0.5
    left = left_of_midline(grid, mid_x, box)
    in_box = None if labels is None else labels[box]
    for side, on_side in zip(SIDES, (left, ~left), strict=True):
        if in_box is None:
            region = foreground & on_side
            if region.any():
                found[("ctv", side)] = round(float(1.0 - probs[0][box][region].mean()), 4)
            continue
        for label, name in enumerate(names, start=1):
            region = foreground & on_side & (in_box == label)
            if region.any():
                found[(name, side)] = round(float(probs[label][box][region].mean()), 4)
    return found


def confidence_of_sides(
    per_pass: list[dict[tuple[str, str], float]], sides: tuple[str, ...]
) -> dict[tuple[str, str], float]:
    """Per-side passes: pass ``n`` gives the confidence of the structures of ``sides[n]``."""
    return {
        key: value
        for found, side in zip(per_pass, sides, strict=True)
        for key, value in found.items()
        if key[1] == side
    }
