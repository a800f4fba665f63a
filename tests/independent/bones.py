"""Bones of one axial slice: ribs and sternum, scapulae and clavicles, vertebrae.

Positions are LPS mm relative to the body centre (``anat.xr`` toward the patient's left,
``anat.yr`` posterior) in the (j, i) plane of slice z; labels are ``Tissue`` values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .shapes import BoolArray, FloatArray, smoothstep
from .tissue import Tissue

if TYPE_CHECKING:
    from .anatomy import Anatomy


def rib_layer(
    anat: Anatomy,
    z: float,
    lab: npt.NDArray[np.uint8],
    ring: BoolArray,
    rad: FloatArray,
    inner: FloatArray,
    front: FloatArray,
) -> None:
    """Ribs (sloping, cortex and marrow, cartilage near the sternum) and the sternum."""
    o = anat.organs
    if z < o.apex_z + 10:
        cos_t = np.cos(np.minimum(anat.abs_theta, np.pi))
        phase = (z + o.rib_drop * (1 + cos_t) / 2) / o.rib_spacing + o.rib_phase
        dz = (phase - np.round(phase)) * o.rib_spacing
        half_r = 0.42 * (front - inner)
        e = (dz / (o.rib_height / 2)) ** 2 + ((rad - 0.5 * (front + inner)) / half_r) ** 2
        rib = ring & (e <= 1)
        lab[rib] = Tissue.CORTEX
        lab[rib & (e <= 0.45)] = Tissue.MARROW
        lab[rib & (anat.abs_theta < o.cartilage)] = Tissue.CARTILAGE
    if o.xiphoid_z <= z <= o.notch_z:
        w = o.sternum_w * (1 + 0.5 * smoothstep(z, o.notch_z - 40, o.notch_z))
        st = (np.abs(anat.xr) < w) & (rad >= inner - 3) & (rad < front + 2) & (anat.yr < 0)
        lab[st] = Tissue.CORTEX
        core = (np.abs(anat.xr) < w - 1.5) & (rad >= inner - 1.5) & (rad < front + 0.5)
        lab[st & core] = Tissue.STERNUM


def girdle(
    anat: Anatomy,
    z: float,
    lab: npt.NDArray[np.uint8],
    chest: BoolArray,
    rad: FloatArray,
    front: FloatArray,
    rb: FloatArray,
    fat: FloatArray,
) -> None:
    """Scapulae (posterolateral plates) and clavicles (anterior, rising laterally)."""
    o, a = anat.organs, anat.body.a
    if z >= o.scapula_z:
        plate = (anat.abs_theta > 1.9) & (anat.abs_theta < 2.6)
        plate &= (rad > front + 4) & (rad < front + 10) & (rad < rb - fat - 2) & chest
        lab[plate] = Tissue.CORTEX
    ax = np.abs(anat.xr)
    zc = o.clavicle_z + 0.12 * ax
    clav = (np.abs(z - zc) < 6) & (ax > 18) & (ax < 0.62 * a) & (anat.abs_theta < 1.3)
    clav &= (rad > rb - fat - 14) & (rad < rb - fat + 1) & chest
    lab[clav] = Tissue.CORTEX


def spine(anat: Anatomy, z: float, lab: npt.NDArray[np.uint8], chest: BoolArray) -> None:
    """Vertebral body (or disc), canal, posterior arch and transverse processes."""
    o, xr, yr = anat.organs, anat.xr, anat.yr
    rv, yv = o.vb_radius, anat.yv
    d = np.hypot(xr, yr - yv)
    body = chest & (d < rv)
    in_disc = ((z / o.vert_height + o.vert_phase) % 1.0) < 5.0 / o.vert_height
    lab[body] = Tissue.DISC if in_disc else Tissue.CORTEX
    if not in_disc:
        lab[body & (d < rv - 1.5)] = Tissue.MARROW
    yc = yv + rv + 8
    dc = np.hypot(xr, yr - yc)
    arch = ((dc >= 8) & (dc < 12.5) & (yr > yc - 2)) | (
        (np.abs(xr) < 4) & (yr > yc + 10) & (yr < yc + 32)
    )
    arch |= (np.abs(yr - yc) < 4) & (np.abs(xr) > 10) & (np.abs(xr) < 32)
    lab[chest & arch] = Tissue.CORTEX
    lab[chest & (dc < 8)] = Tissue.CSF
