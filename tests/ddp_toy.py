"""A toy training run for the distributed tests: in the test process, or one rank under torchrun.

``python -m torch.distributed.run --standalone --nproc_per_node=N tests/ddp_toy.py OUT [WORKERS]``
trains the toy set as N DistributedDataParallel ranks (gloo) and rank 0 writes
``OUT/result.json``; :func:`run` trains the same set in one plain process. Both use the same
global batch, seed, schedule and data, so they must end with the same weights.

The toy task: two identical bright blocks left and right, the note says which is the target;
each CT also appears with the other side's note (a counterfactual of the same CT), so that
paired batches are exercised along with augmentation and note rewrites.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from factories import toy_block_image, toy_block_label

from model.network.config import NetworkConfig, preset
from model.text.encoders import tiny_llama
from model.training.augmentation import AugmentConfig
from model.training.distributed import SINGLE, DistContext, distributed
from model.training.sampling import TrainingCase
from model.training.trainer import TrainConfig, Trainer, TrainResult


def toy_cases(n_ct: int = 4) -> list[TrainingCase]:
    """``n_ct`` CTs of 32 x 64 x 64 voxels, each with a left and a right note."""
    cases = []
    for idx in range(n_ct):
        image = toy_block_image(idx)
        for side in ("left", "right"):
            label = toy_block_label(side)
            cases.append(
                TrainingCase(
                    f"c{idx}-{side}", image, label, f"N0, cT1, {side} side", (3, 1, 1), f"ct{idx}"
                )
            )
    return cases


def net_config() -> NetworkConfig:
    """The tiny preset (32 x 64 x 64 crops)."""
    return preset("tiny")


def train_config(**overrides: Any) -> TrainConfig:
    """Global batch 4, 2 epochs of 3 steps, half the steps paired, augmentation on."""
    base: dict[str, Any] = {
        "epochs": 2,
        "steps_per_epoch": 3,
        "batch_size": 4,
        "lr": 1e-2,
        "val_fraction": 0.25,
        "device": "cpu",
        "seed": 3,
        "pair_fraction": 0.5,
        "note_augment": 0.5,
        "augment": AugmentConfig(geometry=0.3, intensity=0.3, mirror=0.3),
    }
    base.update(overrides)
    return TrainConfig(**base)


def trainer(out: Path, dist: DistContext = SINGLE, **overrides: Any) -> Trainer:
    """A trainer of the toy run writing to ``out``."""
    return Trainer(
        net_config(),
        train_config(**overrides),
        out,
        tiny_llama(),
        {"text_encoder_name": "tiny-llama"},
        dist=dist,
    )


def run(out: Path, dist: DistContext = SINGLE, **overrides: Any) -> TrainResult:
    """Train the toy set into ``out``."""
    return trainer(out, dist, **overrides).fit(toy_cases())


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    workers = int(argv[1]) if len(argv) > 1 else 0
    torch.set_num_threads(1)
    with distributed(torch.device("cpu"), required=True) as dist:
        result = run(out, dist, workers=workers)
        if dist.is_main:
            doc = {
                "world_size": dist.world_size,
                "history": result.history,
                "steps": result.steps,
                "samples_per_second": result.samples_per_second,
            }
            (out / "result.json").write_text(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
