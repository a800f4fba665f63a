"""Training augmentation: MONAI geometry and intensity, and the text-aware mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.errors import ConfigurationError
from model.network.config import preset
from model.text.clinical import mirrored_note
from model.text.encoders import tiny_llama
from model.training.augmentation import AugmentConfig, Augmenter
from model.training.trainer import TrainConfig, Trainer


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A bright target block on the patient's left (larger column index ``i``)."""
    images = torch.full((n, 1, 16, 48, 48), 0.05)
    labels = torch.zeros((n, 1, 16, 48, 48), dtype=torch.int64)
    images[:, :, 4:12, 16:32, 30:44] = 0.8
    labels[:, :, 4:12, 16:32, 30:44] = 1
    return images, labels, ["N1, cT2, breast conserving surgery, left side"] * n


def test_mirrored_notes_swap_every_side_and_keep_case() -> None:
    one = "N1, cT2, breast conserving surgery, left side"
    assert mirrored_note(one) == "N1, cT2, breast conserving surgery, right side"
    left = "N0, cT1, total mastectomy surgery, left side"
    right = "N2, cT3, breast conserving surgery, right side"
    bilateral = f"{left}; {right}"
    swapped = f"{left.replace('left', 'right')}; {right.replace('right', 'left')}"
    assert mirrored_note(bilateral) == swapped
    assert mirrored_note("Right breast, LEFT untouched") == "Left breast, RIGHT untouched"
    assert mirrored_note(mirrored_note(bilateral)) == bilateral


def test_the_mirror_moves_target_and_text_together() -> None:
    images, labels, notes = _batch()
    out_images, out_labels, out_notes = Augmenter(AugmentConfig(mirror=1.0)).batch(
        images, labels, notes, np.random.default_rng(0)
    )
    assert out_notes == [n.replace("left", "right") for n in notes]
    columns = torch.nonzero(out_labels[0, 0])[:, 2]
    assert columns.max() < 24, "the target is now on the patient's right (small i)"
    assert torch.equal(out_images, images.flip(-1)) and torch.equal(out_labels, labels.flip(-1))


def test_geometry_and_intensity_keep_labels_whole_and_pairs_identical() -> None:
    images, labels, notes = _batch(4)
    cfg = AugmentConfig(geometry=1.0, elastic=1.0, intensity=1.0, mirror=0.5)
    augmenter = Augmenter(cfg)
    out_images, out_labels, _ = augmenter.batch(
        images, labels, notes, np.random.default_rng(3), paired=True
    )
    assert out_images.shape == images.shape and out_labels.dtype == labels.dtype
    assert set(torch.unique(out_labels).tolist()) <= {0, 1}
    assert not torch.equal(out_images, images), "something changed"
    assert torch.equal(out_images[0], out_images[1]) and torch.equal(out_labels[2], out_labels[3])
    assert not torch.equal(out_images[0], out_images[2]), "pairs draw independently"
    again = Augmenter(cfg).batch(images, labels, notes, np.random.default_rng(3), paired=True)
    assert torch.equal(again[0], out_images), "seeded: the same run gives the same crops"
    assert float(out_images.min()) >= 0.0 and float(out_images.max()) <= 1.0


def test_probabilities_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        AugmentConfig(mirror=1.5)


def test_a_run_with_every_augmentation_trains(tmp_path: Path) -> None:
    from factories import toy_training_cases

    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        device="cpu",
        augment=AugmentConfig(geometry=0.5, elastic=0.2, intensity=0.5, mirror=0.5),
    )
    trainer = Trainer(preset("tiny"), cfg, tmp_path, tiny_llama(), {"text_encoder_name": "t"})
    result = trainer.fit(toy_training_cases(4))
    assert np.isfinite(result.history[0]["loss"])
