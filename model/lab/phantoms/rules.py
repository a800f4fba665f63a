"""The ground-truth CTV rule of the phantom spec and the lymph-node regions.

Coordinates: LPS millimetres; arrays ``(k, j, i)``. For each treated side:

* breast-conserving surgery -> ``CTV_Breast``: the breast, 5 mm or more below the skin and
  stopping at the pectoralis;
* total mastectomy -> ``CTV_ChestWall``: tissue 3 mm or more below the skin, down to the
  ribs, over the footprint the breast had;
* N1-N3 -> ``CTV_LN_Axilla``, ``CTV_LN_SCF``, ``CTV_LN_IMN`` of that side.

A site's :class:`~model.lab.phantoms.sites.CtvConvention` may differ: IMN only for some N
stages, the SCF reaching higher. ``CTV`` is the union. "Below the skin" is the 3-D
Euclidean distance (voxel centre to voxel centre, in mm) to the nearest air voxel outside
the body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from model.lab.phantoms.anatomy import Anatomy
from model.lab.phantoms.params import SIDE_SIGN
from model.lab.phantoms.shapes import BoolArray, Box, F32Array, box_from_ranges, ellipsoid
from model.lab.phantoms.sites import SPEC_CONVENTION, CtvConvention
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery

ROI_CTV = "CTV"
ROI_BREAST = "CTV_Breast"
ROI_CHEST_WALL = "CTV_ChestWall"
ROI_AXILLA = "CTV_LN_Axilla"
ROI_SCF = "CTV_LN_SCF"
ROI_IMN = "CTV_LN_IMN"
SUB_VOLUMES = (ROI_BREAST, ROI_CHEST_WALL, ROI_AXILLA, ROI_SCF, ROI_IMN)
"""Sub-volume ROI names in the order they are written after ``CTV``."""

BREAST_SKIN_MARGIN_MM = 5.0
CHEST_WALL_SKIN_MARGIN_MM = 3.0
IMN_RADIUS_MM = 8.0
IMN_BEHIND_WALL_MM = 8.0
_SKIN_PAD_MM = 6.0
_CACHE_KEY = "skin_depth"


@dataclass(frozen=True)
class SkinDepth:
    """Distance (mm) to the nearest outside-air voxel, over a box around both footprints.

    The box is padded by more than the largest margin used, so every threshold decision up
    to ``_SKIN_PAD_MM`` inside it equals that of a transform over the whole volume.
    """

    box: Box
    depth: F32Array

    def within(self, box: Box) -> F32Array:
        """The depth over ``box``, which must lie inside :attr:`box`."""
        b = self.box
        return self.depth[
            box.k0 - b.k0 : box.k1 - b.k0,
            box.j0 - b.j0 : box.j1 - b.j0,
            box.i0 - b.i0 : box.i1 - b.i0,
        ]


def skin_depth(anatomy: Anatomy) -> SkinDepth:
    """Skin depth around both breast footprints (cached on the anatomy)."""
    cached = anatomy.cache.get(_CACHE_KEY)
    if isinstance(cached, SkinDepth):
        return cached
    boxes = [fp.box for fp in anatomy.footprints.values() if not fp.box.empty]
    spacing = anatomy.grid.spacing
    pad = tuple(math.ceil(_SKIN_PAD_MM / s) + 1 for s in spacing)
    nk, nj, ni = anatomy.shape
    box = boxes[0] if boxes else Box(0, nk, 0, nj, 0, ni)
    for other in boxes[1:]:
        box = box.union(other)
    box = box.padded((pad[0], pad[1], pad[2]), anatomy.shape)
    depth = distance_transform_edt(anatomy.body[box.index], sampling=spacing)
    result = SkinDepth(box=box, depth=np.asarray(depth, dtype=np.float32))
    anatomy.cache[_CACHE_KEY] = result
    return result


def breast_ctv(anatomy: Anatomy, side: Side) -> BoolArray:
    """``CTV_Breast`` of ``side``: the breast at least 5 mm below the skin (full size)."""
    fp = anatomy.footprints[side]
    if fp.box.empty:
        return np.zeros(anatomy.shape, dtype=bool)
    local = anatomy.breasts[side][fp.box.index] & anatomy.body[fp.box.index]
    local &= skin_depth(anatomy).within(fp.box) >= BREAST_SKIN_MARGIN_MM
    return fp.box.to_full(local, anatomy.shape)


def chest_wall_ctv(anatomy: Anatomy, side: Side) -> BoolArray:
    """``CTV_ChestWall`` of ``side``: footprint tissue 3 mm below skin, above the ribs."""
    fp = anatomy.footprints[side]
    if fp.box.empty:
        return np.zeros(anatomy.shape, dtype=bool)
    body = anatomy.params.body
    layer = (fp.depth >= 0) & (fp.depth < body.fat + body.pectoralis)
    local = (fp.rho2 <= 1.0) & layer[None] & anatomy.body[fp.box.index]
    local &= skin_depth(anatomy).within(fp.box) >= CHEST_WALL_SKIN_MARGIN_MM
    return fp.box.to_full(local, anatomy.shape)


def _axilla(anatomy: Anatomy, side: Side) -> BoolArray:
    """Axilla (levels I-III): ellipsoid at x = +/-0.8a, its part anterior of the body centre."""
    body, breast = anatomy.params.body, anatomy.params.breasts[side]
    n = anatomy.params.nodes[side]
    z0, z1 = breast.top - breast.length / 3.0, breast.top + 60.0
    centre = (
        body.cx + SIDE_SIGN[side] * 0.8 * body.a,
        body.cy - n.axilla_y_frac * body.b,
        (z0 + z1) / 2.0,
    )
    box, local = ellipsoid(
        anatomy.coords, centre, (n.axilla_semi_x, n.axilla_semi_y_frac * body.b, (z1 - z0) / 2.0)
    )
    anterior = anatomy.coords.y[box.j0 : box.j1] < body.cy
    return box.to_full(local & anterior[None, :, None], anatomy.shape) & anatomy.body


_SCF_BOTTOM_MM = 20.0


def _scf(anatomy: Anatomy, side: Side, top_mm: float = SPEC_CONVENTION.scf_top_mm) -> BoolArray:
    """Supraclavicular fossa: ellipsoid at x = +/-0.3a, z from top + 20 to top + ``top_mm``
    (the spec: 70; LPS mm)."""
    body, breast = anatomy.params.body, anatomy.params.breasts[side]
    n = anatomy.params.nodes[side]
    centre = (
        body.cx + SIDE_SIGN[side] * 0.3 * body.a,
        body.cy - n.scf_y_frac * body.b,
        breast.top + (_SCF_BOTTOM_MM + top_mm) / 2.0,
    )
    semi_z = (top_mm - _SCF_BOTTOM_MM) / 2.0
    box, local = ellipsoid(anatomy.coords, centre, (n.scf_semi_x, n.scf_semi_y, semi_z))
    return box.to_full(local, anatomy.shape) & anatomy.body


def imn_axis(anatomy: Anatomy, side: Side) -> tuple[float, float]:
    """LPS ``(x, y)`` of the IMN axis: at the side's offset from the midline, 8 mm behind
    the inner surface of the anterior chest wall (normal depth ``wall + 8``)."""
    body = anatomy.params.body
    target = SIDE_SIGN[side] * anatomy.params.nodes[side].imn_offset
    depth = body.wall + IMN_BEHIND_WALL_MM
    offset = target
    x, y = body.cx + offset, body.cy
    for _ in range(8):
        x, y = anatomy.surface.point_at(anatomy.surface.arc_at_x(offset), depth)
        offset += body.cx + target - x
    return body.cx + target, y


def _imn(anatomy: Anatomy, side: Side) -> BoolArray:
    """Internal mammary nodes: an 8 mm cylinder along z over the cranial 60% of the breast."""
    breast = anatomy.params.breasts[side]
    xa, ya = imn_axis(anatomy, side)
    r = IMN_RADIUS_MM
    box = box_from_ranges(
        anatomy.coords,
        (breast.top - 0.6 * breast.length, breast.top),
        (ya - r, ya + r),
        (xa - r, xa + r),
    )
    dy = anatomy.coords.y[box.j0 : box.j1, None] - ya
    dx = anatomy.coords.x[None, box.i0 : box.i1] - xa
    disc = dx**2 + dy**2 <= r**2
    local = np.broadcast_to(disc[None], (box.k1 - box.k0, *disc.shape))
    return box.to_full(local, anatomy.shape) & anatomy.body


def node_regions(
    anatomy: Anatomy, side: Side, convention: CtvConvention = SPEC_CONVENTION
) -> dict[str, BoolArray]:
    """The three node regions of ``side`` (full-size masks, intersected with the body)."""
    return {
        ROI_AXILLA: _axilla(anatomy, side),
        ROI_SCF: _scf(anatomy, side, convention.scf_top_mm),
        ROI_IMN: _imn(anatomy, side),
    }


def side_volumes(
    anatomy: Anatomy, diagnosis: Diagnosis, convention: CtvConvention = SPEC_CONVENTION
) -> dict[str, BoolArray]:
    """The sub-volumes the rule (of ``convention``) gives one treated side."""
    side = diagnosis.side
    if diagnosis.surgery is Surgery.BREAST_CONSERVING:
        volumes = {ROI_BREAST: breast_ctv(anatomy, side)}
    else:
        volumes = {ROI_CHEST_WALL: chest_wall_ctv(anatomy, side)}
    if diagnosis.node_positive:
        nodes = node_regions(anatomy, side, convention)
        if not convention.treats_imn(diagnosis.n_stage):
            del nodes[ROI_IMN]
        volumes.update(nodes)
    return volumes


def ctv_masks(
    anatomy: Anatomy, record: ClinicalRecord, convention: CtvConvention = SPEC_CONVENTION
) -> dict[str, BoolArray]:
    """Ground truth for ``record`` on ``anatomy``: ``CTV`` and the non-empty sub-volumes.

    Sub-volumes of two treated sides are merged under one name. Keys come in the order
    ``CTV`` then :data:`SUB_VOLUMES`. ``convention``: the site's rule (default the spec's).
    """
    merged: dict[str, BoolArray] = {}
    for d in record.diagnoses:
        for name, mask in side_volumes(anatomy, d, convention).items():
            merged[name] = merged[name] | mask if name in merged else mask
    subs = {name: merged[name] for name in SUB_VOLUMES if name in merged and merged[name].any()}
    ctv = np.zeros(anatomy.shape, dtype=bool)
    for mask in subs.values():
        ctv |= mask
    return {ROI_CTV: ctv, **subs}
