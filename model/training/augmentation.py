"""Augmentation of training crops: geometry and intensity through MONAI, and a text-aware mirror.

Arrays are crops on the network grid, ``(k, j, i)``, which is LPS-canonical
(:class:`model.imaging.preprocessing.PreprocessConfig`): ``i`` grows toward the patient's left.

* **Geometry** (MONAI ``RandAffined``, ``Rand3DElasticd``): small rotations (mostly in-plane,
  about ``k``), isotropic-ish scaling and shifts; labels follow with nearest-neighbour
  interpolation, so structure classes stay whole numbers.
* **Intensity** (MONAI ``RandAdjustContrastd`` gamma, ``RandGaussianNoised``,
  ``RandGaussianSmoothd`` blur, ``RandShiftIntensityd`` a calibration offset): scanners,
  kernels and noise the training generator does not vary enough.
* **Text-aware mirror**: the crop is flipped along ``i`` (the patient's left-right axis) and the
  note's sides are swapped ("left" <-> "right"), so the pair (image, note) stays true: the
  target moves to the other side and so does the text. Structure channels are side-agnostic
  (:mod:`model.network.structures`), so labels need no renaming.

Two crops of a paired batch (two notes of one CT) get the very same draw, so that the text
stays the only difference between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.compose import Compose
from monai.transforms.intensity.dictionary import (
    RandAdjustContrastd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandShiftIntensityd,
)
from monai.transforms.spatial.dictionary import Rand3DElasticd, RandAffined

from model.errors import ConfigurationError
from model.text.clinical import mirrored_note


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentation (all off by default).

    Attributes
    ----------
    geometry
        Probability of a random affine (rotation up to ``rotate_deg`` in-plane and a third of
        it out of plane, scaling by up to ``scale``, shifts up to 8 voxels).
    elastic
        Probability of an elastic deformation (costly on a CPU: keep it low).
    intensity
        Probability of each intensity transform (gamma, noise, blur, offset).
    mirror
        Probability of the text-aware left-right mirror.
    """

    geometry: float = 0.0
    elastic: float = 0.0
    intensity: float = 0.0
    mirror: float = 0.0
    rotate_deg: float = 12.0
    scale: float = 0.12

    def __post_init__(self) -> None:
        for name in ("geometry", "elastic", "intensity", "mirror"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"augmentation {name} must be in [0, 1], got {value}")

    @property
    def active(self) -> bool:
        """Whether anything is augmented."""
        return any((self.geometry, self.elastic, self.intensity, self.mirror))


def _transforms(cfg: AugmentConfig) -> Compose:
    rad = math.radians(cfg.rotate_deg)
    keys = ["image", "label"]
    return Compose(
        [
            RandAffined(
                keys,
                prob=cfg.geometry,
                rotate_range=(rad, rad / 3, rad / 3),
                scale_range=(cfg.scale / 2, cfg.scale, cfg.scale),
                translate_range=(2, 8, 8),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            Rand3DElasticd(
                keys,
                sigma_range=(6, 9),
                magnitude_range=(40, 120),
                prob=cfg.elastic,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandAdjustContrastd("image", prob=cfg.intensity, gamma=(0.7, 1.5)),
            RandGaussianNoised("image", prob=cfg.intensity, std=0.02),
            RandGaussianSmoothd(
                "image",
                prob=cfg.intensity,
                sigma_x=(0.25, 1.0),
                sigma_y=(0.25, 1.0),
                sigma_z=(0.25, 1.0),
            ),
            RandShiftIntensityd("image", offsets=0.02, prob=cfg.intensity),
        ]
    )


class Augmenter:
    """Applies :class:`AugmentConfig` to crops; seeded per crop for reproducible runs."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._compose = _transforms(cfg)

    def batch(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        notes: list[str],
        rng: np.random.Generator,
        *,
        paired: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Augment a batch ``(B, 1, k, j, i)``; with ``paired``, crops ``2m`` and ``2m + 1``
        share one draw."""
        if not self.cfg.active:
            return images, labels, notes
        out_images, out_labels, out_notes = [], [], []
        seed = mirror = 0
        for index in range(images.shape[0]):
            if not paired or index % 2 == 0:
                seed = int(rng.integers(2**31 - 1))
                mirror = int(rng.random() < self.cfg.mirror)
            image, label = self._one(images[index], labels[index], seed)
            note = notes[index]
            if mirror:
                image, label = image.flip(-1), label.flip(-1)
                note = mirrored_note(note)
            out_images.append(image)
            out_labels.append(label)
            out_notes.append(note)
        return torch.stack(out_images), torch.stack(out_labels), out_notes

    def _one(
        self, image: torch.Tensor, label: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._compose.set_random_state(seed=seed)
        found = self._compose({"image": image.float(), "label": label.float()})
        moved_image = torch.as_tensor(np.asarray(found["image"]), dtype=torch.float32)
        moved_label: npt.NDArray[np.float32] = np.asarray(found["label"])
        return moved_image.clamp(0.0, 1.0), torch.as_tensor(np.rint(moved_label), dtype=label.dtype)
