"""Volume assembly: skin distance, CTV cropping, HU with texture, blur and correlated noise.

Arrays are (k, j, i) = (slice, row, column) on the CT grid (LPS mm, k toward +z). The skin
distance is the 3-D Euclidean distance (mm) from a body voxel centre to the nearest voxel
centre outside the body, computed exactly from per-slice 2-D transforms combined along z.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .anatomy import Anatomy, Tissue
from .params import Scanner
from .shapes import BoolArray, FloatArray, Grid

#: Distances beyond this (mm) are not needed by any rule and are stored as this value.
DISTANCE_CAP = 12.0


@dataclass
class Assembled:
    """Result of ``assemble``: integer HU (as written to DICOM), labels, body, regions, skin
    distance (mm)."""

    hu: npt.NDArray[np.int32]
    labels: npt.NDArray[np.uint8]
    body: BoolArray
    regions: dict[tuple[str, str], BoolArray]
    distance: npt.NDArray[np.float32]


def skin_distance(body: BoolArray, spacing: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    """Exact 3-D distance (mm, capped at ``DISTANCE_CAP``) from body voxels to outside air.

    Per slice the in-plane distance d2(k) to the nearest outside voxel is exact; the 3-D
    distance is min over m of sqrt(d2(k+m)^2 + (m dk)^2). Outside voxels get 0. Voxels beyond
    the first/last slice do not count as air.
    """
    dk, dj, di = spacing
    d2 = np.empty(body.shape, np.float32)
    for k in range(body.shape[0]):
        if body[k].all():
            d2[k] = DISTANCE_CAP
        else:
            d2[k] = np.minimum(
                ndimage.distance_transform_edt(body[k], sampling=(dj, di)), DISTANCE_CAP
            )
    dist = d2.copy()
    for m in range(1, math.ceil(DISTANCE_CAP / dk) + 1):
        if m >= body.shape[0]:
            break
        dz2 = (m * dk) ** 2
        np.minimum(dist[:-m], np.sqrt(d2[m:] ** 2 + dz2), out=dist[:-m])
        np.minimum(dist[m:], np.sqrt(d2[:-m] ** 2 + dz2), out=dist[m:])
    dist[~body] = 0.0
    return dist


def gland_field(
    rng: np.random.Generator, grid: Grid, sigma_mm: float
) -> Callable[[int], FloatArray]:
    """Smooth 3-D Gaussian field (unit std) drawn on a ~2 mm grid, upsampled per slice."""
    nk, nj, ni = grid.shape
    dk, _, di = grid.spacing
    c = max(1, round(2.0 / di))
    cj, ci = -(-nj // c), -(-ni // c)
    field = rng.standard_normal((nk, cj, ci)).astype(np.float32)
    field = ndimage.gaussian_filter(
        field, (sigma_mm / dk, sigma_mm / (c * di), sigma_mm / (c * di))
    )
    field /= float(field.std()) + 1e-6

    def at(k: int) -> FloatArray:
        up = ndimage.zoom(field[k].astype(np.float64), (c, c), order=1, grid_mode=False)
        return np.asarray(up[:nj, :ni], dtype=np.float64)

    return at


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> FloatArray:
    """Unit-variance 2-D Gaussian-correlated noise."""
    white = rng.standard_normal(shape)
    if sigma_px < 0.05:
        return white
    smooth = ndimage.gaussian_filter(white, sigma_px)
    delta = np.zeros((31, 31))
    delta[15, 15] = 1.0
    gain = float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma_px) ** 2)))
    return np.asarray(smooth / gain, dtype=np.float64)


def tissue_hu(rng: np.random.Generator, gland_hu: float, liver_hu: float) -> FloatArray:
    """Mean HU (before texture and noise) of every ``Tissue``, jittered per case."""
    u = rng.uniform
    table = {
        Tissue.AIR: -1000.0,
        Tissue.FAT: -100 + u(-8, 8),
        Tissue.MUSCLE: 45 + u(-6, 6),
        Tissue.SKIN: 25 + u(-8, 8),
        Tissue.GLAND: gland_hu,
        Tissue.LUNG: -830 + u(-30, 30),
        Tissue.HEART: 40 + u(-4, 4),
        Tissue.MED_FAT: -90 + u(-8, 8),
        Tissue.VESSEL: 42 + u(-4, 4),
        Tissue.AIRWAY: -995.0,
        Tissue.CORTEX: u(650, 850),
        Tissue.MARROW: u(200, 300),
        Tissue.CARTILAGE: u(100, 140),
        Tissue.LIVER: liver_hu,
        Tissue.SPLEEN: 45 + u(-3, 3),
        Tissue.STOMACH: 20 + u(-5, 5),
        Tissue.GAS: -995.0,
        Tissue.ABDOMEN: 25 + u(-5, 5),
        Tissue.SEROMA: 10 + u(-3, 3),
        Tissue.CLIP: u(2600, 3000),
        Tissue.COUCH_SHELL: u(150, 300),
        Tissue.COUCH_FOAM: -950.0,
        Tissue.DISC: 80 + u(-10, 10),
        Tissue.CSF: 10 + u(-3, 3),
        Tissue.SOFT: 30 + u(-6, 6),
        Tissue.STERNUM: 400 + u(-40, 40),
    }
    out = np.zeros(len(Tissue), np.float64)
    for tissue, value in table.items():
        out[int(tissue)] = value
    return out


_TEXTURED = [Tissue.FAT, Tissue.MUSCLE, Tissue.GLAND, Tissue.SOFT, Tissue.LIVER, Tissue.SPLEEN]
_TEXTURED += [Tissue.MED_FAT, Tissue.ABDOMEN, Tissue.HEART]


def assemble(
    anatomy: Anatomy,
    scanner: Scanner,
    skin: float,
    hu_table: FloatArray,
    texture_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> Assembled:
    """Labels and regions slice by slice, skin distance, CTV crops, then HU per slice."""
    grid = anatomy.grid
    nk, nj, ni = grid.shape
    di = grid.spacing[2]
    labels = np.zeros(grid.shape, np.uint8)
    body = np.zeros(grid.shape, bool)
    regions: dict[tuple[str, str], BoolArray] = {}
    for k in range(nk):
        out = anatomy.slice(k)
        labels[k], body[k] = out.labels, out.body
        for key, mask in out.regions.items():
            if key not in regions:
                regions[key] = np.zeros(grid.shape, bool)
            regions[key][k] = mask
    dist = skin_distance(body, grid.spacing)
    subq = float(texture_rng.uniform(4, 8))
    labels[(labels == Tissue.GLAND) & (dist < subq)] = Tissue.FAT
    labels[(labels == Tissue.SEROMA) & (dist < 4)] = Tissue.FAT
    labels[body & (dist <= skin) & (labels != Tissue.CLIP)] = Tissue.SKIN
    for key in list(regions):
        if key[0] == "breast":
            regions[key] &= dist >= 5.0
        elif key[0] == "chest_wall":
            regions[key] &= dist >= 3.0

    textured = np.zeros(len(Tissue), bool)
    textured[[int(t) for t in _TEXTURED]] = True
    lung_base = hu_table[int(Tissue.LUNG)]
    sigma_noise = scanner.noise_corr_mm / di
    lo, hi = (-2048, 8191) if scanner.signed_pixels else (-1024, 3071)
    hu_int = np.empty(grid.shape, np.int32)
    central = np.clip(1 - anatomy.rad / anatomy.body.a, 0.0, 1.0)
    for k in range(nk):
        lab = labels[k]
        hu = hu_table[lab]
        tex = _smooth_noise(texture_rng, (nj, ni), 2.0 / di)
        hu = np.where(textured[lab], hu + 7.0 * tex, hu)
        lung = lab == Tissue.LUNG
        if lung.any():
            vessels = _smooth_noise(texture_rng, (nj, ni), 1.5 / di)
            gradient = 60.0 * anatomy.yr / anatomy.body.b
            hu = np.where(lung, lung_base + gradient + np.clip((vessels - 1.8) * 320, 0, 750), hu)
        hu = ndimage.gaussian_filter(hu, scanner.psf_sigma_mm / di)
        level = np.where(body[k], 0.85 + 0.3 * central, 0.8) * scanner.noise_sigma
        hu = hu + level * _smooth_noise(noise_rng, (nj, ni), sigma_noise) + scanner.hu_offset
        hu_int[k] = np.clip(np.rint(hu), lo, hi).astype(np.int32)
    return Assembled(hu_int, labels, body, regions, dist)
