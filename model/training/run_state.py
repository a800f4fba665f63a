"""The resumable state of a run: one file, written atomically, beside the ``last`` checkpoint.

``<out>/last/train_state.pt`` holds everything a run needs to go on as if never stopped: the
network and text-side weights (so they always match the optimiser, even if a kill fell
between two files), the optimiser, schedule and gradient-scaler states, the global step and
completed epochs, the epoch's losses so far, the history and the best Dice, and the random
states of Python, NumPy and torch (CPU and CUDA). Batches need no random state: they are
keyed by step (:mod:`model.training.batches`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "train_state.pt"


def rng_states() -> dict[str, Any]:
    """The random states of this process."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    """Set the random states saved by :func:`rng_states` (those present)."""
    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        np.random.set_state(states["numpy"])
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``folder/train_state.pt`` atomically (a temporary file, then a rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)


def read_state(folder: Path, device: torch.device) -> dict[str, Any] | None:
    """The state saved in ``folder`` (``None`` when there is none)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    return state
