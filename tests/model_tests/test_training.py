"""Training: the loss falls on a text-dependent toy task; runs resume; best is kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import toy_training_cases

from model.errors import CheckpointMismatchError, DatasetError
from model.network.checkpoint import load_checkpoint
from model.network.config import preset
from model.text.encoders import tiny_llama
from model.training.sampling import (
    CaseSampler,
    TrainingCase,
    group_cases,
    paired_batch,
    patient_groups,
    random_crop,
    subset_by_group,
)
from model.training.trainer import TrainConfig, Trainer, lr_lambda, split_cases


def _trainer(tmp_path: Path, epochs: int) -> Trainer:
    cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=4,
        batch_size=2,
        lr=3e-2,
        val_fraction=0.34,
        device="cpu",
        seed=0,
    )
    return Trainer(preset("tiny"), cfg, tmp_path, tiny_llama(), {"text_encoder_name": "tiny-llama"})


def test_loss_falls_and_best_checkpoint_is_kept(tmp_path: Path) -> None:
    result = _trainer(tmp_path, epochs=6).fit(toy_training_cases())
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
    ckpt = load_checkpoint(tmp_path / "best", expected=preset("tiny"))
    assert ckpt.meta["metrics"]["best_epoch"] == result.best_epoch
    assert "seg" in ckpt.text_state, "the trained [SEG] embedding is in the checkpoint"
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 7))


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    cases = toy_training_cases(4)
    _trainer(tmp_path, epochs=2).fit(cases)
    resumed = _trainer(tmp_path, epochs=3)
    result = resumed.fit(cases, resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_vision_only_trains_without_encoder(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, device="cpu")
    result = Trainer(preset("tiny", multimodal=False), cfg, tmp_path).fit(toy_training_cases(3))
    assert result.history and np.isfinite(result.history[0]["loss"])


def test_split_and_schedule() -> None:
    train, val = split_cases(toy_training_cases(5), 0.2, seed=1)
    assert len(val) == 1 and len(train) == 4
    assert {c.case_id for c in train}.isdisjoint({c.case_id for c in val})
    f = lr_lambda(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(100) == pytest.approx(0.0, abs=1e-6)


def test_crops_cover_the_target() -> None:
    case = toy_training_cases(1)[0]
    rng = np.random.default_rng(0)
    hits = [random_crop(case, (16, 16, 16), rng, pos_fraction=1.0)[1].any() for _ in range(20)]
    assert all(hits)
    image, label = random_crop(case, (48, 80, 80), rng, pos_fraction=0.5)
    assert image.shape == (48, 80, 80) and label.shape == (48, 80, 80), "small volumes are padded"


def _counterfactual_cases(n_ct: int = 5) -> list[TrainingCase]:
    """Each toy CT twice: as written and with the side flipped (same image, other target)."""
    cases = []
    for case in toy_training_cases(n_ct):
        case.group = f"uid-{case.case_id}"
        other = "right" if "left" in case.note else "left"
        label = np.ascontiguousarray(case.label[:, :, ::-1])  # the toy blocks are mirror images
        flip = TrainingCase(
            f"{case.case_id}-flip", case.image, label, f"N0, cT1, {other} side", case.spacing
        )
        flip.group = case.group
        cases += [case, flip]
    return cases


def test_split_keeps_every_note_of_a_ct_on_one_side() -> None:
    cases = _counterfactual_cases(5)
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {c.group_key for c in train}.isdisjoint({c.group_key for c in val})


def test_split_keeps_every_ct_of_one_patient_on_one_side() -> None:
    """Two CT series of one patient (same hashed PatientID) never straddle the split.

    Grouping by CT alone put the two series on different sides for some of these seeds.
    """
    cases = toy_training_cases(8)
    for n, case in enumerate(cases):
        case.group, case.patient = f"uid-{n}", f"P-{n:016x}"
    cases[5].patient = cases[2].patient  # a second CT of the patient of c2
    cases[7].patient = cases[2].patient  # and a third
    together = {"c2", "c5", "c7"}
    val_sizes = set()
    for seed in range(20):
        train, val = split_cases(cases, 0.25, seed=seed)
        train_ids, val_ids = {c.case_id for c in train}, {c.case_id for c in val}
        assert train_ids | val_ids == {c.case_id for c in cases}
        assert together <= train_ids or together <= val_ids, (seed, sorted(val_ids))
        val_sizes.add(len(val))
    # 6 patients, round(6 * 0.25) = 2 of them in validation with all their CTs: 2 CTs, or 4
    # when the patient of c2 is one of them.
    assert len(patient_groups(cases)) == 6
    assert val_sizes == {2, 4}
    no_patient = toy_training_cases(8)
    for n, case in enumerate(no_patient):
        case.group = f"uid-{n}"
    assert len(patient_groups(no_patient)) == 8, "without labels: one group per CT"


def test_subset_by_group_takes_whole_cts() -> None:
    cases = _counterfactual_cases(5)
    subset = subset_by_group(cases, 0.6, seed=0)
    groups = {c.group_key for c in subset}
    assert len(groups) == 3 and len(subset) == 6, "3 of 5 CTs, each with both notes"
    assert subset_by_group(cases, 0.6, seed=0) == subset, "seeded"
    assert len({c.group_key for c in subset_by_group(cases, 0.1, seed=0)}) == 2, "at least 2"


def test_paired_batch_crops_two_notes_of_one_ct_at_one_window() -> None:
    groups = [g for g in group_cases(_counterfactual_cases(3)).values()]
    rng = np.random.default_rng(0)
    for _ in range(10):
        images, labels, notes = paired_batch(groups, 4, (16, 32, 32), rng, pos_fraction=1.0)
        assert images.shape == (4, 1, 16, 32, 32)
        for a in (0, 2):
            assert torch.equal(images[a], images[a + 1]), "same CT, same window"
            assert notes[a] != notes[a + 1], "two different notes"
            assert (labels[a] + labels[a + 1]).any(), "the window covers a target"
    with pytest.raises(DatasetError):
        paired_batch(groups, 3, (16, 32, 32), rng, pos_fraction=1.0)
    with pytest.raises(DatasetError):
        paired_batch([], 2, (16, 32, 32), rng, pos_fraction=1.0)


def test_warm_start_loads_the_weights_and_records_the_source(tmp_path: Path) -> None:
    first = _trainer(tmp_path / "a", epochs=1)
    first.fit(toy_training_cases(4))
    second = _trainer(tmp_path / "b", epochs=1)
    second.warm_start(tmp_path / "a" / "last")
    for (name, p), q in zip(
        first.net.state_dict().items(), second.net.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert torch.equal(first.context.seg, second.context.seg)  # type: ignore[union-attr]
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, device="cpu", pair_fraction=1.0)
    tuned = Trainer(preset("tiny"), cfg, tmp_path / "c", tiny_llama(), {})
    tuned.warm_start(tmp_path / "a" / "last")
    tuned.fit(_counterfactual_cases(3))
    ckpt = load_checkpoint(tmp_path / "c" / "best", expected=preset("tiny"))
    assert ckpt.meta["init_from"]["checkpoint"] == str(tmp_path / "a" / "last")
    other = Trainer(preset("tiny", multimodal=False), cfg, tmp_path / "d")
    with pytest.raises(CheckpointMismatchError):
        other.warm_start(tmp_path / "a" / "last")


def test_oversampling_draws_matching_cases_and_their_cts_more_often() -> None:
    cases = _counterfactual_cases(4)  # 4 CTs x 2 notes
    heavy = cases[0].case_id
    sampler = CaseSampler(cases, ((f"^{heavy}$", 5.0),))
    rng = np.random.default_rng(0)
    drawn = sampler.draw_cases(6000, rng)
    share = drawn.count(0) / len(drawn)
    assert 0.38 < share < 0.46, f"weight 5 of 12 expected, got {share:.3f}"
    assert sampler.group_weights is not None
    heavy_group = next(
        i for i, g in enumerate(sampler.pair_groups) if heavy in {c.case_id for c in g}
    )
    assert sampler.group_weights[heavy_group] == pytest.approx(5 / 8)
    uniform = CaseSampler(cases)
    assert uniform.case_weights is None and uniform.group_weights is None
    with pytest.raises(DatasetError):
        CaseSampler(cases, (("x", 0.0),))


def test_oversample_option_is_parsed_or_refused() -> None:
    from model.cli import _oversample
    from model.errors import ConfigurationError

    assert _oversample(["^RB-=3", "a=b=0.5"]) == (("^RB-", 3.0), ("a=b", 0.5))
    for bad in ("RB-", "=2", "RB-=0", "RB-=x"):
        with pytest.raises(ConfigurationError):
            _oversample([bad])
