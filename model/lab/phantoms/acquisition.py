"""What real departments vary beyond the spec's two sites: couch, arms, contrast, numbering.

Only profiles with ``acquisition_extras`` (the robustness site ``R``) draw these, from a random
stream of their own, so the cases of sites A and B are unchanged. Coordinates: LPS mm, arrays
``(k, j, i)`` on the case's grid (+x patient left, +y posterior).

- **Couch**: a curved-top slab behind the patient (carbon-fibre shell ~300 HU, foam core
  -600 HU), 0-20 mm below the back, across the whole field of view.
- **Arms**: down (beside the trunk, 10-25 mm away: soft tissue with a humerus of 700 HU) or up
  (out of the chest slices, as in most breast and lung planning CTs).
- **Contrast**: +0-150 HU in the heart (intravenous contrast).
- **Instance numbering**: from the head or from the feet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.lab.phantoms.shapes import AxialCoords
from model.lab.phantoms.sites import uniform

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AcquisitionExtras:
    """Couch, arms, contrast and slice numbering of one case."""

    couch: bool
    couch_gap: float
    couch_thickness: float
    arms_down: bool
    arm_gap: float
    arm_radius: float
    contrast_hu: float
    numbered_from_feet: bool


def sample_extras(rng: np.random.Generator) -> AcquisitionExtras:
    """Draw the extras of one case."""
    return AcquisitionExtras(
        couch=bool(rng.random() < 0.8),
        couch_gap=uniform(rng, (0.0, 20.0)),
        couch_thickness=uniform(rng, (30.0, 60.0)),
        arms_down=bool(rng.random() < 0.4),
        arm_gap=uniform(rng, (10.0, 25.0)),
        arm_radius=uniform(rng, (35.0, 50.0)),
        contrast_hu=uniform(rng, (0.0, 150.0)) if rng.random() < 0.5 else 0.0,
        numbered_from_feet=bool(rng.random() < 0.5),
    )


def paint_couch_and_arms(
    hu: F32Array,
    extras: AcquisitionExtras,
    coords: AxialCoords,
    body_ellipse: tuple[float, float, float, float],
) -> None:
    """Paint the couch and lowered arms into ``hu`` (in place, before noise).

    ``coords`` gives the LPS positions of the voxel centres; the body is the ellipse
    ``(cx, cy, a, b)`` (LPS mm). Both stay outside the body, so the CTV rule is unchanged.
    """
    cx, cy, a, b = body_ellipse
    x = coords.x[None, :]
    y = coords.y[:, None]
    if extras.couch:
        top = cy + b + extras.couch_gap - 0.0002 * (x - cx) ** 2
        shell = np.broadcast_to((y >= top) & (y < top + 3.0), hu.shape[1:])
        core = np.broadcast_to((y >= top + 3.0) & (y < top + extras.couch_thickness), hu.shape[1:])
        hu[:, core] = -600.0
        hu[:, shell] = 300.0
    if extras.arms_down:
        for sign in (-1.0, 1.0):
            ax = cx + sign * (a + extras.arm_gap + extras.arm_radius)
            r2 = np.broadcast_to((x - ax) ** 2 + (y - cy) ** 2, hu.shape[1:])
            hu[:, r2 <= extras.arm_radius**2] = 40.0
            hu[:, r2 <= (0.3 * extras.arm_radius) ** 2] = 700.0
