"""The names of the structure set a planner receives: the union ``CTV`` and one ROI per
sub-volume and side.

Names follow TG-263 (at most 16 characters): ``CTVp_Breast_L``, ``CTVp_ChestWall_R``,
``CTVn_Axilla_L``, ``CTVn_SCF_L``, ``CTVn_IMN_L``. A site's own names come from the setting
``roi_names`` (``structure=name`` pairs, ``{side}`` replaced by ``L`` or ``R``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from model.dicom.rtstruct import RoiSpec
from model.errors import ConfigurationError
from model.network.structures import Structure

BoolArray = npt.NDArray[np.bool_]
DEFAULT_ROI_NAMES: dict[str, str] = {
    Structure.BREAST.value: "CTVp_Breast_{side}",
    Structure.CHEST_WALL.value: "CTVp_ChestWall_{side}",
    Structure.AXILLA.value: "CTVn_Axilla_{side}",
    Structure.SCF.value: "CTVn_SCF_{side}",
    Structure.IMN.value: "CTVn_IMN_{side}",
}
MAX_ROI_NAME = 16


def naming_map(pairs: Sequence[str]) -> dict[str, str]:
    """The default names with the site's ``structure=name`` overrides applied.

    Raises
    ------
    ConfigurationError
        A malformed pair, an unknown structure, or a name over 16 characters.
    """
    names = dict(DEFAULT_ROI_NAMES)
    for pair in pairs:
        structure, sep, name = pair.partition("=")
        if not sep or structure not in names or not name:
            raise ConfigurationError(f"roi_names entries are structure=name, got {pair!r}")
        names[structure] = name
    for template in names.values():
        if len(template.replace("{side}", "L")) > MAX_ROI_NAME:
            raise ConfigurationError(f"ROI name {template!r} exceeds {MAX_ROI_NAME} characters")
    return names


def _ordered(
    structures: Mapping[tuple[str, str], BoolArray],
) -> list[tuple[str, str, BoolArray]]:
    order = {s.value: n for n, s in enumerate(Structure)}
    keys = sorted(structures, key=lambda k: (order.get(k[0], 99), k[1]))
    return [(name, side, structures[(name, side)]) for name, side in keys]


def roi_specs(
    union: BoolArray,
    structures: Mapping[tuple[str, str], BoolArray],
    union_name: str,
    names: Mapping[str, str],
) -> list[RoiSpec]:
    """``CTV`` first, then every non-empty sub-volume (a single-CTV network gives only CTV)."""
    rois = [RoiSpec(union_name, union, description="AI-generated CTV (llmctv)")]
    for name, side, mask in _ordered(structures):
        if name not in names or not mask.any():
            continue
        label = names[name].replace("{side}", side)
        rois.append(RoiSpec(label, mask, description=f"AI-generated {name} CTV, {side} (llmctv)"))
    return rois


def volumes_cc(rois: Sequence[RoiSpec], voxel_cc: float) -> dict[str, float]:
    """cc per ROI name."""
    return {roi.name: round(float(np.count_nonzero(roi.mask)) * voxel_cc, 2) for roi in rois}


def confidence_by_roi(
    confidence: Mapping[tuple[str, str], float], names: Mapping[str, str]
) -> dict[str, float]:
    """Confidence per output ROI name (as in the RTSTRUCT)."""
    return {
        names[name].replace("{side}", side): value
        for (name, side), value in sorted(confidence.items())
        if name in names
    }
