"""Training at a department's scale: memory-mapped cache, DataLoader workers, resuming after an
interruption, the time budget, the progress bar, and fine-tuning into other structure classes.

The runs are the toy run of :mod:`ddp_toy` (tiny preset, 2 epochs of 3 steps, global batch
4, paired batches, augmentation and note rewrites on). Resuming must give the weights of the
uninterrupted run: batches are keyed by step and the state holds everything else, so the
same operations run in the same order (tolerance 1e-6, measured 0).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_toy import net_config, toy_cases, train_config
from ddp_toy import trainer as toy_trainer
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from model.errors import ConfigurationError
from model.network.checkpoint import load_checkpoint, save_checkpoint
from model.network.config import preset
from model.network.segmenter import ContourNet
from model.training.batches import BatchPlan, StepBatches
from model.training.dataset import load_cached
from model.training.heads import HEAD_WEIGHT, parse_class_map, plan_head
from model.training.progress import RunClock, StepBar
from model.training.run_state import STATE_FILE
from model.training.trainer import TrainConfig, Trainer


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _complete_rows(history: list[dict[str, float]]) -> np.ndarray:
    rows = [(r["epoch"], r["loss"], r["val_dice"]) for r in history if "stopped_at_step" not in r]
    return np.array(rows)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, float]]]:
    out = tmp_path_factory.mktemp("whole")
    result = toy_trainer(out).fit(toy_cases())
    assert result.steps == 6 and not result.stopped
    return out, result.history


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, uninterrupted: tuple[Path, list[dict[str, float]]]
) -> None:
    whole, history = uninterrupted
    first = toy_trainer(tmp_path)

    def stop_after_four(step: int) -> None:
        if step == 4:  # inside epoch 2 (3 steps per epoch)
            first.request_stop()

    stopped = first.fit(toy_cases(), on_step=stop_after_four)
    assert stopped.stopped == "requested" and stopped.steps == 4
    state = torch.load(tmp_path / "last" / STATE_FILE, weights_only=False)
    assert state["step"] == 4 and state["epoch"] == 1 and len(state["epoch_losses"]) == 1
    partial = json.loads((tmp_path / "history.json").read_text())
    assert partial[-1]["stopped_at_step"] == 1, "the stop validated and recorded the epoch"

    resumed = toy_trainer(tmp_path).fit(toy_cases(), resume=True)
    assert resumed.steps == 2 and not resumed.stopped
    assert _max_difference(_weights(tmp_path / "last"), _weights(whole / "last")) <= 1e-6
    np.testing.assert_allclose(_complete_rows(resumed.history), _complete_rows(history), atol=1e-6)
    assert [r["epoch"] for r in resumed.history] == [1, 2]


def test_a_crash_resumes_from_the_last_periodic_save(
    tmp_path: Path, uninterrupted: tuple[Path, list[dict[str, float]]]
) -> None:
    whole, _ = uninterrupted

    def crash_at_five(step: int) -> None:
        if step == 5:
            raise RuntimeError("power cut")  # no clean stop: only the periodic save survives

    with pytest.raises(RuntimeError, match="power cut"):
        toy_trainer(tmp_path, checkpoint_steps=2).fit(toy_cases(), on_step=crash_at_five)
    state = torch.load(tmp_path / "last" / STATE_FILE, weights_only=False)
    assert state["step"] == 4, "saved at step 4 (every 2 steps); step 5 was lost"
    toy_trainer(tmp_path, checkpoint_steps=2).fit(toy_cases(), resume=True)
    assert _max_difference(_weights(tmp_path / "last"), _weights(whole / "last")) <= 1e-6


def test_sigterm_stops_cleanly_after_the_step(tmp_path: Path) -> None:
    def terminate(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what torchrun, a scheduler, docker send

    previous = signal.getsignal(signal.SIGTERM)
    result = toy_trainer(tmp_path).fit(toy_cases(), on_step=terminate)
    assert result.stopped == "signal" and result.steps == 2
    assert signal.getsignal(signal.SIGTERM) == previous, "the handler is restored"
    assert torch.load(tmp_path / "last" / STATE_FILE, weights_only=False)["step"] == 2


def test_resume_refuses_another_run_and_a_missing_state(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        toy_trainer(tmp_path).fit(toy_cases(), resume=True)
    toy_trainer(tmp_path, epochs=1).fit(toy_cases())
    with pytest.raises(ConfigurationError):  # 4 steps per epoch there, 3 here
        toy_trainer(tmp_path, steps_per_epoch=4).fit(toy_cases(), resume=True)


def test_the_time_budget_stops_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    budget_s = 6.0
    start = time.perf_counter()
    trainer = toy_trainer(tmp_path, epochs=200, max_minutes=budget_s / 60)
    result = trainer.fit(toy_cases())
    wall = time.perf_counter() - start
    assert result.stopped == "time_budget"
    assert 0 < result.steps < 600
    assert wall <= budget_s + 3.0, f"stopped after {wall:.1f} s"
    assert (tmp_path / "best" / "model.safetensors").is_file()
    state = torch.load(tmp_path / "last" / STATE_FILE, weights_only=False)
    assert state["step"] == result.steps
    resumed = toy_trainer(tmp_path, epochs=200, max_minutes=budget_s / 60 / 2)
    again = resumed.fit(toy_cases(), resume=True)
    assert again.stopped == "time_budget" and resumed.step > result.steps


def test_the_progress_bar_shows_etas_on_stderr_of_rank_zero_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = RunClock(budget_minutes=10)
    bar = StepBar(total=6, initial=0, steps_per_epoch=3, epochs=2, clock=clock, enabled=True)
    for step in range(1, 5):
        time.sleep(0.05)
        clock.record_step(0.05)
        bar.update(step, 1.0 / step)
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.split("\r")[-1]
    assert "epoch 2/2" in line and "4/6" in line and "<" in line, line  # overall ETA
    assert "epoch_eta=00:00" in line and "budget=09:5" in line and "loss=0.2500" in line, line
    quiet = StepBar(total=6, initial=0, steps_per_epoch=3, epochs=2, clock=clock, enabled=False)
    quiet.update(1, 1.0)
    quiet.close()
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigurationError):
        RunClock(budget_minutes=-1)


def _write_entry(folder: Path, case_id: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A cache entry as :func:`model.training.dataset.build_cache` writes it."""
    rng = np.random.default_rng(seed)
    image = rng.random((20, 40, 36)).astype(np.float16)
    label = (rng.random((20, 40, 36)) > 0.8).astype(np.uint8)
    meta = {"case_id": case_id, "note": "N1, cT2, left side", "spacing": [3.0, 1.0, 1.0]}
    np.savez(folder / f"{case_id}.npz", image=image, label=label, meta=np.array(json.dumps(meta)))
    return image, label


def test_cached_cases_are_memory_mapped_and_pickle_as_their_path(tmp_path: Path) -> None:
    arrays = {f"c{i}": _write_entry(tmp_path, f"c{i}", i) for i in range(3)}
    mapped = load_cached(tmp_path)
    read = load_cached(tmp_path, mmap=False)
    for case, eager in zip(mapped, read, strict=True):
        image, label = arrays[case.case_id]
        assert isinstance(case.image, np.memmap) and isinstance(case.label, np.memmap)
        assert not isinstance(eager.image, np.memmap) and eager.source == ""
        assert np.array_equal(case.image, image) and np.array_equal(case.label, label)
        assert case.spacing == (3.0, 1.0, 1.0)
        blob = pickle.dumps(case)
        assert len(blob) < 2000 < image.nbytes, "a mapped case travels as its path"
        back = pickle.loads(blob)
        assert isinstance(back.image, np.memmap) and np.array_equal(back.image, image)
        assert np.array_equal(back.label, label)
        assert len(pickle.dumps(eager)) > image.nbytes, "an in-memory case travels whole"


def test_dataloader_workers_build_the_same_batches(tmp_path: Path) -> None:
    cfg = train_config()
    plan = BatchPlan(
        roi=net_config().roi_size,
        batch_size=4,
        seed=cfg.seed,
        pair_fraction=cfg.pair_fraction,
        note_augment=cfg.note_augment,
        augment=cfg.augment,
    )
    batches = StepBatches(toy_cases(), plan)
    inline = [batches[s] for s in range(2, 6)]
    loader = DataLoader(batches, batch_size=None, sampler=range(2, 6), num_workers=2)
    for (images, labels, notes), (i2, l2, n2) in zip(inline, loader, strict=True):
        assert torch.equal(images, i2) and torch.equal(labels, l2) and notes == n2


# --- fine-tuning into other classes ---------------------------------------------------------
OLD = ("breast", "chest_wall", "axilla", "imn")


def _shipped(folder: Path) -> dict[str, torch.Tensor]:
    config = preset("tiny", multimodal=False).with_structures(OLD)
    torch.manual_seed(11)
    net = ContourNet(config)
    save_checkpoint(folder, net, None, text_encoder=None)
    return net.state_dict()


def _site(tmp_path: Path, structures: tuple[str, ...]) -> Trainer:
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, device="cpu", seed=5)
    config = preset("tiny", multimodal=False).with_structures(structures)
    return Trainer(config, cfg, tmp_path / "site")


def test_fine_tuning_keeps_renamed_classes_adds_new_ones_and_drops_the_rest(
    tmp_path: Path,
) -> None:
    old = _shipped(tmp_path / "shipped")[HEAD_WEIGHT]
    new_names = ("breast", "ax_nodes", "interpectoral")
    site = _site(tmp_path, new_names)
    fresh = site.net.state_dict()[HEAD_WEIGHT].clone()
    body = {k: v.clone() for k, v in _shipped(tmp_path / "again").items() if k != HEAD_WEIGHT}
    site.warm_start(tmp_path / "shipped", parse_class_map(["axilla=ax_nodes"]))
    head = site.net.state_dict()[HEAD_WEIGHT]
    assert head.shape[1] == 1 + len(new_names)
    # ConvTranspose3d weight (in, out, ...): channel 0 background, then the classes in order.
    assert torch.equal(head[:, 0], old[:, 0]), "background kept"
    assert torch.equal(head[:, 1], old[:, 1 + OLD.index("breast")]), "same name: kept"
    assert torch.equal(head[:, 2], old[:, 1 + OLD.index("axilla")]), "renamed: kept"
    assert torch.equal(head[:, 3], fresh[:, 3]), "new class: the run's fresh initialisation"
    assert not any(torch.equal(head[:, 3], old[:, c]) for c in range(old.shape[1]))
    for name, value in site.net.state_dict().items():
        if name != HEAD_WEIGHT:
            assert torch.equal(value, body[name]), name
    classes = site.meta["init_from"]["classes"]
    assert classes == {
        "kept": {"breast": "breast", "ax_nodes": "axilla"},
        "new": ["interpectoral"],
        "dropped": ["chest_wall", "imn"],
    }
    result = site.fit(
        [c for c in toy_cases()[:4]],  # the new head trains (one step)
    )
    assert np.isfinite(result.history[0]["loss"])
    saved = load_checkpoint(tmp_path / "site" / "best")
    assert saved.config.structures == new_names
    assert saved.meta["init_from"]["classes"] == classes


def test_a_class_can_be_dropped_to_start_fresh_and_bad_maps_are_refused(tmp_path: Path) -> None:
    old = _shipped(tmp_path / "shipped")[HEAD_WEIGHT]
    site = _site(tmp_path, ("breast", "imn"))
    fresh = site.net.state_dict()[HEAD_WEIGHT].clone()
    site.warm_start(tmp_path / "shipped", parse_class_map(["imn="]))  # another IMN definition
    head = site.net.state_dict()[HEAD_WEIGHT]
    assert torch.equal(head[:, 1], old[:, 1]) and torch.equal(head[:, 2], fresh[:, 2])
    plan = plan_head(OLD, ("breast", "imn"))  # without the map, imn is kept
    assert plan.kept == (("breast", "breast"), ("imn", "imn"))
    assert plan.dropped == ("chest_wall", "axilla")
    for bad in (["scf=breast"], ["breast=lung"], ["breast=imn", "axilla=imn"]):
        with pytest.raises(ConfigurationError):
            plan_head(OLD, ("breast", "imn"), parse_class_map(bad))
    for bad in (["breast"], ["=imn"], ["imn=a", "imn=b"]):
        with pytest.raises(ConfigurationError):
            parse_class_map(bad)
