"""The protocol's borders of the superficial CTVs: below the skin, in front of the ribs.

Breast radiotherapy protocols bound the breast and chest-wall CTVs by what the CT shows
(ESTRO; the phantom specification ``shared/specs/breast-phantom.md``: the breast "cropped
5 mm below the skin", the chest wall "from 3 mm below the skin down to the ribs"). The
network sees the CT on a 4-6 mm grid, so its boundary cannot hold a 3 mm margin, nor stop at
a rib it sees only as a voxel or two; both borders are applied exactly on the CT grid:

* **skin margin**: a voxel closer to the outside of the body than the structure's margin is
  removed; the distance is 3-D Euclidean (mm) to the nearest voxel outside the body, as the
  specification defines it;
* **the ribs**: for a structure that stops at the ribs, a voxel at least as deep below the
  skin as the front of the nearest ribs is removed. The rib front is the smallest skin depth
  of bone (HU above :data:`~model.imaging.plausibility.BONE_HU`, in pieces of bone as
  :func:`~model.imaging.plausibility.bone_pieces` finds them: a surgical clip is not a rib) within
  :data:`RIB_REACH_MM`, which spans an intercostal space: the border holds between the ribs
  too. Where the CT shows no rib nearby nothing is removed.

Coordinates: masks and HU are ``(k, j, i)`` on the CT's :class:`~model.imaging.geometry.Grid`;
``spacing`` is that grid's ``(k, j, i)`` spacing in mm; skin depth is measured in patient
space through the spacing, so the rules hold for any storage of the series. Each structure
is processed in its own box, padded by its margin and the ribs' reach: any outside voxel
within the margin of a structure voxel lies in that box, so the crop is exact without a
distance map of the whole CT.

The borders are part of a department's convention (the RTOG atlas, for one, takes the chest
wall down to the pleura, ribs included): a structure map sets them per structure
(``skin_margin_mm``, ``stop_at_ribs``; :mod:`model.dataset.structure_map`); otherwise
:data:`SPEC_BORDERS` applies. What they remove is the definition, not a correction: it is
recorded (:attr:`BorderResult.removed_cc`), never a job warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from model.imaging.geometry import mask_box
from model.imaging.plausibility import BONE_HU, bone_pieces

BoolArray = npt.NDArray[np.bool_]
Box = tuple[slice, ...]
#: How far (mm; along z, then in-plane) a voxel looks for the front of the ribs: more than
#: a rib period along z (ribs 20-30 mm apart), so an intercostal space has ribs in reach.
RIB_REACH_MM = (32.0, 20.0, 20.0)


@dataclass(frozen=True)
class BorderPolicy:
    """Per structure name: the skin margin (mm) and whether it stops at the ribs."""

    skin_margins_mm: Mapping[str, float] = field(default_factory=dict)
    stop_at_ribs: frozenset[str] = frozenset()

    def applies_to(self, name: str) -> bool:
        """Whether any border applies to structure ``name``."""
        return self.skin_margins_mm.get(name, 0.0) > 0.0 or name in self.stop_at_ribs


#: The phantom specification's borders.
SPEC_BORDERS = BorderPolicy(
    skin_margins_mm={"breast": 5.0, "chest_wall": 3.0}, stop_at_ribs=frozenset({"chest_wall"})
)


@dataclass
class BorderResult:
    """The structures within their borders (unchanged ones are the same arrays; one with
    nothing left is absent) and what each border removed,
    ``{"skin margin" | "behind the ribs": {"structure side": cc}}``."""

    structures: dict[tuple[str, str], BoolArray]
    removed_cc: dict[str, dict[str, float]] = field(default_factory=dict)


def _padded(box: Box, pad: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    return tuple(
        slice(max(0, b.start - p), min(n, b.stop + p))
        for b, p, n in zip(box, pad, shape, strict=True)
    )


def _rib_front(
    hu: npt.NDArray[np.floating],
    body: BoolArray,
    depth: npt.NDArray[np.floating],
    spacing: tuple[float, ...],
) -> npt.NDArray[np.float32]:
    """Per voxel of a box: the smallest skin depth (mm) of bone within :data:`RIB_REACH_MM`
    (infinite where none)."""
    bone = bone_pieces((hu > BONE_HU) & body, spacing)
    front = np.full(bone.shape, np.inf, dtype=np.float32)
    if not bone.any():
        return front
    front[bone] = depth[bone]
    size = tuple(
        max(1, 2 * round(r / (2 * s)) + 1) for r, s in zip(RIB_REACH_MM, spacing, strict=True)
    )
    result: npt.NDArray[np.float32] = ndimage.minimum_filter(front, size=size, mode="nearest")
    return result


def apply_borders(
    hu: npt.NDArray[np.floating],
    body: BoolArray,
    structures: Mapping[tuple[str, str], BoolArray],
    spacing: tuple[float, float, float],
    policy: BorderPolicy,
    boxes: Mapping[tuple[str, str], Box] | None = None,
) -> BorderResult:
    """Hold each structure ``policy`` names within its borders (see the module docstring).

    Parameters
    ----------
    hu
        The CT (HU), ``(k, j, i)``.
    body
        The body mask (:func:`model.imaging.postprocessing.body_mask`).
    structures
        ``(structure, side) -> mask`` on the same grid.
    spacing
        Voxel size ``(k, j, i)`` in mm.
    policy
        The borders per structure name; structures it does not name are kept whole.
    boxes
        Optional index box of each mask (nothing of it outside), to skip searching for it.
    """
    voxel_cc = float(np.prod(spacing)) / 1000.0
    out = dict(structures)
    removed: dict[str, dict[str, float]] = {}
    for key, mask in structures.items():
        name = key[0]
        if not policy.applies_to(name):
            continue
        box = (boxes or {}).get(key) or mask_box(mask)
        if box is None:
            continue
        margin = float(policy.skin_margins_mm.get(name, 0.0))
        ribs = name in policy.stop_at_ribs
        reach = [r / 2.0 if ribs else 0.0 for r in RIB_REACH_MM]
        pad = tuple(math.ceil((margin + r) / s) + 1 for r, s in zip(reach, spacing, strict=True))
        where = _padded(box, pad, mask.shape)
        inside = body[where]
        depth = ndimage.distance_transform_edt(inside, sampling=spacing)
        local = mask[where]
        drop = {"skin margin": local & (depth < margin)}
        if ribs:
            drop["behind the ribs"] = local & (
                depth >= _rib_front(hu[where], inside, depth, spacing)
            )
        kept = local
        for why, voxels in drop.items():
            count = int(np.count_nonzero(voxels & kept))
            if count:
                removed.setdefault(why, {})[f"{name} {key[1]}"] = round(count * voxel_cc, 2)
                kept = kept & ~voxels
        if kept is local:
            continue
        if not kept.any():  # nothing left within the borders: no such structure
            del out[key]
            continue
        # np.zeros (calloc), not a copy: only the box's pages are touched (a full-grid mask
        # of a 512 matrix is 35 MB); nothing of the mask lies outside its box.
        full = np.zeros(mask.shape, dtype=bool)
        full[where] = kept
        out[key] = full
    return BorderResult(out, removed)
