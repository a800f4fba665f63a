"""The protocol's skin margin: a superficial CTV stops a set distance below the skin.

Breast radiotherapy protocols crop the breast and chest-wall CTVs below the skin (ESTRO:
5 mm for the breast; the phantom specification ``shared/specs/breast-phantom.md``: the breast
"cropped 5 mm below the skin", the chest wall "from 3 mm below the skin"). The network sees
the CT on a 4-6 mm grid, so its boundary cannot hold a 3 mm margin; the margin is applied
exactly on the CT grid instead, as the definition states it: the 3-D Euclidean distance
(mm) from each voxel of the structure to the nearest voxel outside the body.

Coordinates: masks are ``(k, j, i)`` on the CT's :class:`~model.imaging.geometry.Grid`;
``spacing`` is that grid's ``(k, j, i)`` spacing in mm. The distance is computed in each
structure's box, padded by the margin: any outside voxel within the margin of a structure
voxel lies in that box, so the crop is exact without a distance map of the whole CT.

The margins are part of a department's convention: a structure map may set them per
structure (``skin_margin_mm``, :mod:`model.dataset.structure_map`); otherwise the
specification's values (:data:`SPEC_SKIN_MARGINS_MM`) apply to the breast and chest wall
and no other structure is cropped. What the crop removes is the definition, not a
correction: it is recorded (:attr:`SkinCrop.removed_cc`) but never a job warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BoolArray = npt.NDArray[np.bool_]
Box = tuple[slice, ...]
#: The phantom specification's margins (mm) per structure name.
SPEC_SKIN_MARGINS_MM: dict[str, float] = {"breast": 5.0, "chest_wall": 3.0}


@dataclass
class SkinCrop:
    """The structures after the crop (unchanged ones are the same arrays) and the volume
    the crop removed per ``"structure side"`` (cc)."""

    structures: dict[tuple[str, str], BoolArray]
    removed_cc: dict[str, float] = field(default_factory=dict)


def _padded(box: Box, pad: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    return tuple(
        slice(max(0, b.start - p), min(n, b.stop + p))
        for b, p, n in zip(box, pad, shape, strict=True)
    )


def _box_of(mask: BoolArray) -> Box | None:
    found = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return None if not found or found[0] is None else tuple(found[0])


def crop_below_skin(
    body: BoolArray,
    structures: Mapping[tuple[str, str], BoolArray],
    spacing: tuple[float, float, float],
    margins_mm: Mapping[str, float],
    boxes: Mapping[tuple[str, str], Box] | None = None,
) -> SkinCrop:
    """Remove from each structure named in ``margins_mm`` its voxels closer than the margin
    to the outside of ``body`` (3-D Euclidean distance in mm, on the CT grid).

    Parameters
    ----------
    body
        The body mask ``(k, j, i)`` (:func:`model.imaging.postprocessing.body_mask`).
    structures
        ``(structure, side) -> mask`` on the same grid.
    spacing
        Voxel size ``(k, j, i)`` in mm.
    margins_mm
        Structure name -> margin (mm); structures not named, and margins of 0, are kept whole.
    boxes
        Optional index box of each mask (nothing of it outside), to skip searching for it.
    """
    voxel_cc = float(np.prod(spacing)) / 1000.0
    out = dict(structures)
    removed: dict[str, float] = {}
    for key, mask in structures.items():
        margin = float(margins_mm.get(key[0], 0.0))
        if margin <= 0.0:
            continue
        box = (boxes or {}).get(key) or _box_of(mask)
        if box is None:
            continue
        pad = tuple(math.ceil(margin / s) + 1 for s in spacing)
        where = _padded(box, pad, mask.shape)
        depth = ndimage.distance_transform_edt(body[where], sampling=spacing)
        shallow = mask[where] & (depth < margin)
        count = int(np.count_nonzero(shallow))
        if not count:
            continue
        kept = mask.copy()
        kept[where] &= ~shallow
        out[key] = kept
        removed[f"{key[0]} {key[1]}"] = round(count * voxel_cc, 2)
    return SkinCrop(out, removed)
