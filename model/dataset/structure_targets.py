"""The structure map as the ROI rules of training and evaluation.

``llmctv train`` and ``llmctv evaluate`` take ``--structure-map MAP`` (the TOML file of
``llmctv dataset check``). A :class:`MapRule` selects the ROIs of a structure set that the
:class:`~model.dataset.structure_map.StructureMap` places in one structure, or in any
structure: it offers the ``matches``/``select``/``key`` of
:class:`~model.dicom.rtstruct.reader.RoiRule`, so a
:class:`model.training.dataset.TargetRule` takes either kind of rule. The label classes are the
map's structures in map order (where two overlap the first wins), each the union of its ROIs:
several ROIs of one structure (``CTVn_L1``, ``CTVn_L2``, ...) and both sides count once per
voxel. ROIs the map ignores (PTVs, BODY, helpers) and the union ROI never match a structure,
so the union ROI is never counted as a structure, and never twice. An ROI name that matches
two structures goes to the first one in map order (``llmctv dataset check`` reports it as
``ambiguous_roi``).

:func:`structure_side_masks` gives, per (structure, side), the union of its ROIs on the CT
grid: the side from the ROI name, else from the body midline (the rule of the dataset check,
:func:`~model.dataset.structure_placement.assign_sides`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model.dataset.problems import CheckOptions
from model.dataset.structure_map import RoiKind, StructureMap, parse_structure_map
from model.dataset.structure_placement import assign_sides
from model.dicom.rtstruct.reader import Roi, StructureSet, rasterize
from model.errors import ConfigurationError, RoiNotFoundError
from model.imaging.geometry import Volume
from model.imaging.postprocessing import body_mask, left_of_midline, midline_x

BoolArray = npt.NDArray[np.bool_]
#: Key of the structure map in a checkpoint's metadata (written by ``llmctv train``).
META_KEY = "structure_map"


@dataclass(frozen=True)
class MapRule:
    """The ROIs a structure map places in ``structure`` (``None``: in any structure).

    Raises
    ------
    ConfigurationError
        ``structure`` is not a structure of the map.
    """

    structure_map: StructureMap
    structure: str | None = None

    def __post_init__(self) -> None:
        names = self.structure_map.structure_names
        if self.structure is not None and self.structure not in names:
            raise ConfigurationError(
                f"structure {self.structure!r} is not in the structure map ({list(names)})"
            )

    def matches(self, name: str, interpreted_type: str = "") -> bool:
        """Whether the map places an ROI of this name in the rule's structure.

        The interpreted type plays no part: the map decides by name alone.
        """
        found = self.structure_map.classify(name)
        if found.kind is not RoiKind.STRUCTURE:
            return False
        return self.structure is None or found.structure == self.structure

    def select(self, structure_set: StructureSet) -> tuple[Roi, ...]:
        """The matching ROIs that have contours; :class:`RoiNotFoundError` if none."""
        matched = [r for r in structure_set.rois if self.matches(r.name, r.interpreted_type)]
        chosen = tuple(r for r in matched if r.contours)
        if not chosen:
            empty = f" ({len(matched)} matched but have no contours)" if matched else ""
            what = self.structure or "any structure"
            raise RoiNotFoundError(
                f"no ROI that the structure map {self.structure_map.source} places in "
                f"{what}{empty}; ROIs: {', '.join(structure_set.roi_names)}"
            )
        return chosen

    def key(self) -> str:
        """A stable text of the rule: the map's SHA-256 and the structure (cache fingerprints)."""
        return f"map:{self.structure_map.digest}:{self.structure or '*'}"


def map_meta(structure_map: StructureMap) -> dict[str, Any]:
    """The map as checkpoint metadata: its description and its TOML text."""
    return {**structure_map.describe(), "toml": structure_map.text}


def map_from_meta(meta: dict[str, Any]) -> StructureMap | None:
    """The structure map a checkpoint was trained with (:func:`map_meta`), or ``None``.

    Raises
    ------
    ConfigurationError
        The stored map does not parse any more.
    """
    stored = meta.get(META_KEY)
    if not isinstance(stored, dict) or not isinstance(stored.get("toml"), str):
        return None
    return parse_structure_map(stored["toml"], source=str(stored.get("source", "<checkpoint>")))


def structure_side_masks(
    structure_set: StructureSet,
    volume: Volume,
    structure_map: StructureMap,
    *,
    frame_of_reference_uid: str | None = None,
    side_share: float = CheckOptions().side_share,
) -> dict[tuple[str, str], BoolArray]:
    """Per (structure, side), the union of the structure's ROIs on the volume's grid.

    Keys come in map order, then ``"L"`` before ``"R"``; only pairs with voxels appear. An
    ROI goes to the side its name carries; an ROI without one goes to the side of the body
    midline that holds nearly all of it (more than ``1 - side_share``), else it is split at
    the midline.
    """
    grid = volume.grid
    full = tuple(slice(0, n) for n in grid.shape)
    left = left_of_midline(grid, midline_x(body_mask(volume), grid), full)
    found: dict[tuple[str, str], BoolArray] = {}
    options = CheckOptions(side_share=side_share)
    for name in dict.fromkeys(r.name for r in structure_set.rois if r.contours):
        placed = structure_map.classify(name)
        if placed.kind is not RoiKind.STRUCTURE or placed.structure is None:
            continue
        mask = rasterize(structure_set, name, grid, frame_of_reference_uid=frame_of_reference_uid)
        voxels = int(np.count_nonzero(mask))
        if voxels == 0:
            continue
        share = int(np.count_nonzero(mask & left)) / voxels
        for side, part, _ in assign_sides(mask, left, share, placed.side, options):
            key = (placed.structure, side)
            found[key] = found[key] | part if key in found else part.copy()
    order = {name: n for n, name in enumerate(structure_map.structure_names)}
    ranked = sorted(found, key=lambda k: (order[k[0]], k[1]))
    return {key: found[key] for key in ranked if found[key].any()}
