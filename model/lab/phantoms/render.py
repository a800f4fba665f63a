"""Hounsfield units of a phantom: tissues, surgical changes, noise and calibration.

Coordinates: LPS millimetres; arrays ``(k, j, i)``. Tissues are painted in a fixed order,
later ones over earlier ones; values are before noise (spec "Anatomy").
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.ndimage import map_coordinates

from model.lab.phantoms.acquisition import paint_couch_and_arms
from model.lab.phantoms.anatomy import Anatomy
from model.lab.phantoms.params import SIDE_SIGN
from model.lab.phantoms.rules import node_regions
from model.lab.phantoms.shapes import BoolArray, F32Array, ellipsoid, nearest_voxel
from model.text.clinical import Side, Surgery

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LUNG = -800.0
HU_RIB = 300.0
HU_STERNUM = 400.0
HU_CORTEX = 700.0
HU_VERTEBRA = 250.0
HU_CANAL = 15.0
HU_SEROMA = 10.0
HU_LIVER = 55.0
HU_SPLEEN = 45.0
HU_STOMACH = 30.0
HU_GAS = -950.0
HU_MIN, HU_MAX = -1024, 3071
_TEXTURE_STEP_MM = 12.0
_CLIP_RADIUS_MM = 1.0
_STERNUM_DEPTH_MM = 14.0
_CANAL_RADIUS_MM = 8.0
_CORTEX_MM = 2.5

I16Array = npt.NDArray[np.int16]


def _paint(hu: F32Array, mask: BoolArray, value: float) -> None:
    """Set ``hu`` to ``value`` where the full-size ``(k, j, i)`` ``mask`` holds."""
    hu[mask] = value


def _paint_wall(hu: F32Array, anatomy: Anatomy) -> None:
    """Soft tissue, the skin + fat layer, ribs and sternum (all 2-D maps along ``z``)."""
    body = anatomy.params.body
    depth = anatomy.surface.depth
    _paint(hu, anatomy.body, HU_SOFT)
    _paint(hu, anatomy.body & (depth < body.fat)[None], HU_FAT)
    u = (anatomy.coords.x - body.cx)[None, :]
    v = (anatomy.coords.y - body.cy)[:, None]
    if body.ribs_visible:
        ring = (depth >= body.fat + body.pectoralis) & (depth < body.wall)
        ring &= np.abs(anatomy.surface.arc) > body.sternum_half_width + 5.0
        ring &= (v < 0.5 * body.b) | (np.abs(u) > 35.0)
        phase = (anatomy.coords.z - body.rib_phase) % body.rib_period
        band = phase < 0.45 * body.rib_period
        _paint(hu, ring[None] & band[:, None, None], HU_RIB)
    sternum = (np.abs(u) <= body.sternum_half_width) & (depth >= body.fat)
    sternum &= (depth < body.fat + _STERNUM_DEPTH_MM) & (v < 0)
    _paint(hu, np.broadcast_to(sternum[None], hu.shape), HU_STERNUM)


def _paint_solid(
    hu: F32Array,
    anatomy: Anatomy,
    centre: tuple[float, float, float],
    semi: tuple[float, float, float],
    value: float,
    within: BoolArray | None = None,
) -> None:
    """Set an LPS ellipsoid (centre ``(x, y, z)``, semi-axes in mm) to ``value``.

    ``within``: optional full-size ``(k, j, i)`` mask the solid is restricted to.
    """
    box, local = ellipsoid(anatomy.coords, centre, semi)
    if box.empty:
        return
    if within is not None:
        local = local & within[box.index]
    hu[box.index][local] = value


def _paint_organs(hu: F32Array, anatomy: Anatomy) -> None:
    """Lungs (inside the chest wall), mediastinal fat, heart."""
    body = anatomy.params.body
    z0, z1 = float(anatomy.coords.z[0]), float(anatomy.coords.z[-1])
    inner = np.broadcast_to((anatomy.surface.depth >= body.wall + 3.0)[None], hu.shape)
    lung_z = ((z0 + z1) / 2.0 + 40.0, (z1 - z0) / 2.0 + 120.0)
    for sign in (1, -1):
        centre = (body.cx + sign * 0.45 * body.a, body.cy + 0.05 * body.b, lung_z[0])
        _paint_solid(
            hu, anatomy, centre, (body.lung_semi_x, body.lung_semi_y, lung_z[1]), HU_LUNG, inner
        )
    inside = anatomy.params.mediastinum
    if inside is not None and inside.anterior_lung is not None:
        # Domain randomisation: the lungs reach the front of the chest beside the sternum.
        medial, thickness = inside.anterior_lung
        u = np.abs(anatomy.coords.x - body.cx)[None, :]
        v = (anatomy.coords.y - body.cy)[:, None]
        depth = anatomy.surface.depth
        front = (depth >= body.wall + 3.0) & (depth < body.wall + 3.0 + thickness)
        front &= (u >= medial) & (u <= 0.6 * body.a) & (v < 0)
        _paint(hu, np.broadcast_to(front[None], hu.shape), HU_LUNG)
    bottom = min(p.bottom for p in anatomy.params.breasts.values())
    centre = (body.cx + body.heart_u, body.cy + body.heart_v, bottom + body.heart_z_above_bottom)
    fat_semi = (body.heart_semi[0] + 8.0, body.heart_semi[1] + 8.0, body.heart_semi[2] + 8.0)
    _paint_solid(hu, anatomy, centre, fat_semi, HU_FAT, inner)
    _paint_heart(hu, anatomy, HU_SOFT)


def _paint_heart(hu: F32Array, anatomy: Anatomy, value: float) -> None:
    """The heart ellipsoid inside the chest wall (``value``: soft tissue, or with contrast)."""
    body = anatomy.params.body
    inner = np.broadcast_to((anatomy.surface.depth >= body.wall + 3.0)[None], hu.shape)
    bottom = min(p.bottom for p in anatomy.params.breasts.values())
    centre = (body.cx + body.heart_u, body.cy + body.heart_v, bottom + body.heart_z_above_bottom)
    _paint_solid(hu, anatomy, centre, body.heart_semi, value, inner)


def _paint_abdomen(hu: F32Array, anatomy: Anatomy) -> None:
    """Domain randomisation: liver dome under the right lung, spleen and stomach on the left.

    Painted over the lungs inside the rib cage: where an organ is, the lung ends above it.
    """
    organs = anatomy.params.organs
    if organs is None:
        return
    body = anatomy.params.body
    inner = np.broadcast_to((anatomy.surface.depth >= body.wall + 3.0)[None], hu.shape)
    bottom = min(p.bottom for p in anatomy.params.breasts.values())
    dome = bottom + organs.liver_top
    liver = (body.cx + organs.liver_u, body.cy + 0.05 * body.b, dome - organs.liver_semi[2])
    _paint_solid(hu, anatomy, liver, organs.liver_semi, HU_LIVER, inner)
    left = dome - organs.left_drop
    spleen = (body.cx + 0.45 * body.a, body.cy + 0.35 * body.b, left - organs.spleen_semi[2])
    _paint_solid(hu, anatomy, spleen, organs.spleen_semi, HU_SPLEEN, inner)
    stomach = (body.cx + 0.3 * body.a, body.cy - 0.15 * body.b, left - 45.0)
    _paint_solid(hu, anatomy, stomach, (45.0, 40.0, 45.0), HU_STOMACH, inner)
    if organs.stomach_gas > 5.0:
        gas = (stomach[0], stomach[1] - 20.0, stomach[2] + 15.0)
        semi = (organs.stomach_gas, organs.stomach_gas * 0.6, organs.stomach_gas * 0.7)
        _paint_solid(hu, anatomy, gas, semi, HU_GAS, inner)


def _paint_mediastinum(hu: F32Array, anatomy: Anatomy) -> None:
    """Domain randomisation: great vessels, trachea, esophagus, a deeper sternum.

    Tubes run along LPS ``z`` inside the rib cage (over lungs, mediastinal fat and heart);
    see :class:`~model.lab.phantoms.params.MediastinumParams` for where they lie. They are
    never painted inside the spec's node regions of either side (the nodes' image stays
    the one the spec describes: nothing visible marks them).
    """
    inside = anatomy.params.mediastinum
    if inside is None:
        return
    body = anatomy.params.body
    free = np.ones(hu.shape, dtype=bool)  # outside every node region
    for side in anatomy.params.breasts:
        for region in node_regions(anatomy, side).values():
            free &= ~region
    inner = free & (anatomy.surface.depth >= body.wall + 3.0)[None]
    u = (anatomy.coords.x - body.cx)[None, :]
    v = (anatomy.coords.y - body.cy)[:, None]
    z = anatomy.coords.z
    bottom = min(p.bottom for p in anatomy.params.breasts.values())
    heart_top = bottom + body.heart_z_above_bottom + body.heart_semi[2]

    def tube(du: float, dv: float, radius: float, z0: float, z1: float, value: float) -> None:
        disc = (u - du) ** 2 + (v - dv) ** 2 <= radius**2
        along = (z >= z0) & (z <= z1)
        if disc.any() and along.any():
            _paint(hu, along[:, None, None] & disc[None] & inner, value)

    for du, dv, radius, z0, z1 in inside.vessels:
        tube(du, dv, radius, heart_top + z0, heart_top + z1, inside.vessel_hu)
    top = float(z.max()) + 1.0
    tube(*inside.esophagus, float(z.min()) - 1.0, top, HU_SOFT)
    tube(*inside.trachea, heart_top + inside.carina, top, HU_AIR)
    sternum = (np.abs(u) <= body.sternum_half_width) & (v < 0)
    depth = anatomy.surface.depth
    sternum &= (depth >= body.fat) & (depth < body.fat + inside.sternum_depth)
    _paint(hu, sternum[None] & free, HU_STERNUM)


def _paint_spine(hu: F32Array, anatomy: Anatomy) -> None:
    """Vertebral body (cortex + cancellous bone) and canal with its bony arch."""
    body = anatomy.params.body
    u = (anatomy.coords.x - body.cx)[None, :]
    v = (anatomy.coords.y - body.cy)[:, None]
    canal_v = body.b - body.fat - 40.0
    vb_v = canal_v - _CANAL_RADIUS_MM - 4.0 - body.vertebra_radius
    r_vb = np.hypot(u, v - vb_v)
    r_canal = np.hypot(u, v - canal_v)
    plane = np.full(r_vb.shape, np.nan, dtype=np.float32)
    plane[r_canal <= _CANAL_RADIUS_MM + 5.0] = HU_CORTEX
    plane[r_canal <= _CANAL_RADIUS_MM] = HU_CANAL
    plane[r_vb <= body.vertebra_radius] = HU_CORTEX
    plane[r_vb <= body.vertebra_radius - _CORTEX_MM] = HU_VERTEBRA
    bone = ~np.isnan(plane)
    hu[:, bone] = plane[bone]


def _texture(anatomy: Anatomy, rng: np.random.Generator) -> tuple[F32Array, tuple[float, float]]:
    """A smooth random field on a 12 mm lattice over the scan (independent of ``scale``)."""
    zs = anatomy.coords.z
    start = (float(zs[0]) - _TEXTURE_STEP_MM, -400.0, -400.0)
    size = (int((zs[-1] - zs[0]) / _TEXTURE_STEP_MM) + 4, 70, 70)
    lattice = rng.standard_normal(size, dtype=np.float32)
    return lattice, (start[0], start[1])


def _paint_breasts(hu: F32Array, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Fat mixed with fibroglandular tissue, denser toward each footprint's centre."""
    lattice, (z_start, xy_start) = _texture(anatomy, rng)
    for side, mask in anatomy.present_breasts().items():
        breast = anatomy.params.breasts[side]
        fp = anatomy.footprints[side]
        local = mask[fp.box.index]
        kk, jj, ii = np.nonzero(local)
        points = np.stack(
            (
                (anatomy.coords.z[fp.box.k0 + kk] - z_start) / _TEXTURE_STEP_MM,
                (anatomy.coords.y[fp.box.j0 + jj] - xy_start) / _TEXTURE_STEP_MM,
                (anatomy.coords.x[fp.box.i0 + ii] - xy_start) / _TEXTURE_STEP_MM,
            )
        )
        field = map_coordinates(lattice, points, order=1, mode="nearest")
        rho = np.sqrt(fp.rho2[kk, jj, ii])
        score = 0.8 * field + 2.0 * (0.6 - rho) + 2.0 * (breast.gland_fraction - 0.4)
        weight = np.clip(score, 0.0, 1.0)
        values = HU_FAT + weight * (breast.gland_hu - HU_FAT)
        hu[fp.box.k0 + kk, fp.box.j0 + jj, fp.box.i0 + ii] = values


def _paint_clip(
    hu: F32Array, anatomy: Anatomy, point: tuple[float, float, float], value: float
) -> None:
    """A 2 mm clip: voxels within 1 mm of ``point`` (x, y, z), at least the nearest one.

    A clip whose nearest voxel lies outside the body is left out.
    """
    nearest = nearest_voxel(anatomy.coords, point)
    if not anatomy.body[nearest]:
        return
    _paint_solid(hu, anatomy, point, (_CLIP_RADIUS_MM,) * 3, value, anatomy.body)
    hu[nearest] = value


def seroma_centre(anatomy: Anatomy, side: Side) -> tuple[float, float, float]:
    """LPS ``(x, y, z)`` of the seroma centre of a breast-conserving side."""
    breast = anatomy.params.breasts[side]
    s = anatomy.params.surgical[side]
    body = anatomy.params.body
    arc0 = SIDE_SIGN[side] * anatomy.surface.arc_at_x(breast.centre_frac * body.a)
    arc = arc0 + s.seroma_at[0] * breast.radius
    zf = s.seroma_at[1]
    height = breast.projection * float(np.sqrt(max(0.0, 1.0 - s.seroma_at[0] ** 2 - zf**2)))
    depth = body.fat - s.seroma_at[2] * (body.fat + height)
    x, y = anatomy.surface.point_at(arc, depth)
    return (x, y, breast.z_centre + zf * breast.length / 2.0)


def _paint_conserving(hu: F32Array, anatomy: Anatomy, side: Side) -> None:
    """Seroma (inside the breast) and clips around it."""
    s = anatomy.params.surgical[side]
    centre = seroma_centre(anatomy, side)
    _paint_solid(hu, anatomy, centre, s.seroma_semi, HU_SEROMA, anatomy.breasts[side])
    for dx, dy, dz, gap, value in s.bcs_clips:
        reach = [semi + gap for semi in s.seroma_semi]
        point = (centre[0] + dx * reach[0], centre[1] + dy * reach[1], centre[2] + dz * reach[2])
        _paint_clip(hu, anatomy, point, value)


def _paint_mastectomy(hu: F32Array, anatomy: Anatomy, side: Side) -> None:
    """Clips in the flap or the pectoralis over the footprint."""
    breast = anatomy.params.breasts[side]
    body = anatomy.params.body
    s = anatomy.params.surgical[side]
    arc0 = SIDE_SIGN[side] * anatomy.surface.arc_at_x(breast.centre_frac * body.a)
    for fa, fz, fd, value in s.tm_clips:
        top_depth = max(0.0, body.fat - s.flap) + 1.0
        depth = top_depth + fd * (body.fat + body.pectoralis / 2.0 - top_depth)
        x, y = anatomy.surface.point_at(arc0 + fa * breast.radius, depth)
        _paint_clip(hu, anatomy, (x, y, breast.z_centre + fz * breast.length / 2.0), value)


def render_hu(
    anatomy: Anatomy, texture_rng: np.random.Generator, noise_rng: np.random.Generator
) -> I16Array:
    """The CT in HU as stored (rounded, clipped to [-1024, 3071]), ``(k, j, i)`` int16.

    Noise (Gaussian, per voxel) and the site's calibration offset apply to every voxel.
    """
    hu = np.full(anatomy.shape, HU_AIR, dtype=np.float32)
    _paint_wall(hu, anatomy)
    _paint_organs(hu, anatomy)
    _paint_abdomen(hu, anatomy)
    _paint_mediastinum(hu, anatomy)
    _paint_spine(hu, anatomy)
    _paint_breasts(hu, anatomy, texture_rng)
    for side, surgery in anatomy.surgeries.items():
        if surgery is Surgery.BREAST_CONSERVING:
            _paint_conserving(hu, anatomy, side)
        else:
            _paint_mastectomy(hu, anatomy, side)
    extras = anatomy.params.extras
    if extras is not None:
        body = anatomy.params.body
        paint_couch_and_arms(hu, extras, anatomy.coords, (body.cx, body.cy, body.a, body.b))
        if extras.contrast_hu:
            _paint_heart(hu, anatomy, HU_SOFT + extras.contrast_hu)
    scanner = anatomy.params.scanner
    hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(scanner.noise_sigma)
    hu += np.float32(scanner.hu_offset)
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu.astype(np.int16)
