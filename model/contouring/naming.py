"""The names of the structure set a planner receives: the union ``CTV`` and one ROI per
sub-volume and side.

Names follow TG-263 (at most 16 characters): ``CTVp_Breast_L``, ``CTVp_ChestWall_R``,
``CTVn_Axilla_L``, ``CTVn_SCF_L``, ``CTVn_IMN_L``. A site's own names come from the setting
``roi_names`` (``structure=name`` pairs, ``{side}`` replaced by ``L`` or ``R``), or from the
model card of a registered model version (:mod:`model.registry`): a base name per structure
and the site's side form (:class:`SideAffix`: ``_L/_R``, ``_Lt/_Rt``, `` Left/ Right``, or a
prefix such as ``Lt_/Rt_``), e.g. ``CTVn_IMN_Lt``. A template holds ``{side}`` where the side
goes; the side labels (``L``/``R`` for the setting, the affixes for a card) replace it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
SIDE = "{side}"
#: What replaces ``{side}`` for a left and a right structure.
SideLabels = tuple[str, str]
DEFAULT_SIDE_LABELS: SideLabels = ("L", "R")
_SEPARATORS = ("_", " ", "-")


def base_names() -> dict[str, str]:
    """The default names without their side: ``breast`` -> ``CTVp_Breast``."""
    return {k: v.replace("_" + SIDE, "") for k, v in DEFAULT_ROI_NAMES.items()}


def roi_label(template: str, side: str, labels: SideLabels = DEFAULT_SIDE_LABELS) -> str:
    """The ROI name of ``template`` for ``side`` (``"L"``/``"R"``; another side as it is)."""
    text = {"L": labels[0], "R": labels[1]}.get(side, side)
    return template.replace(SIDE, text)


@dataclass(frozen=True)
class SideAffix:
    """How a site writes the side into an output ROI name.

    A suffix form (``_Lt``/``_Rt``, `` Left``/`` Right``) starts with a separator (``_``,
    space, ``-``); a prefix form (``Lt_``/``Rt_``) ends with one.
    """

    left: str = "_L"
    right: str = "_R"
    prefix: bool = False

    @classmethod
    def parse(cls, text: str) -> SideAffix:
        """``"_Lt/_Rt"`` (suffix), ``"Lt_/Rt_"`` (prefix), ``" Left/ Right"`` (suffix).

        Raises
        ------
        ConfigurationError
            Not ``LEFT/RIGHT``, equal or empty affixes, or no separator at the joining end.
        """
        left, sep, right = text.partition("/")
        if not sep or not left.strip() or not right.strip() or left == right or "/" in right:
            raise ConfigurationError(f"a side form is LEFT/RIGHT, e.g. _Lt/_Rt; got {text!r}")
        if left.startswith(_SEPARATORS) and right.startswith(_SEPARATORS):
            return cls(left, right, prefix=False)
        if left.endswith(_SEPARATORS) and right.endswith(_SEPARATORS):
            return cls(left, right, prefix=True)
        raise ConfigurationError(
            f"side form {text!r}: a suffix starts with '_', ' ' or '-' (e.g. _Lt/_Rt), a "
            "prefix ends with one (e.g. Lt_/Rt_)"
        )

    @property
    def labels(self) -> SideLabels:
        """What replaces ``{side}`` in :meth:`template`."""
        return (self.left, self.right)

    def template(self, base: str) -> str:
        """``base`` with the side's place: ``CTVn_IMN{side}`` or ``{side}CTVn_IMN``."""
        return SIDE + base if self.prefix else base + SIDE

    def text(self) -> str:
        """``"_Lt/_Rt"``, as :meth:`parse` reads it."""
        return f"{self.left}/{self.right}"


def check_roi_name(name: str) -> None:
    """Refuse an output ROI name that is empty, over 16 characters or not plain text.

    Raises
    ------
    ConfigurationError
        The name breaks one of these rules.
    """
    if not name.strip() or name != name.strip():
        raise ConfigurationError(f"ROI name {name!r} is empty or has outer spaces")
    if len(name) > MAX_ROI_NAME:
        raise ConfigurationError(f"ROI name {name!r} exceeds {MAX_ROI_NAME} characters")
    if "\\" in name or not name.isprintable():
        raise ConfigurationError(f"ROI name {name!r} has a backslash or a control character")


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
    sides: SideLabels = DEFAULT_SIDE_LABELS,
) -> list[RoiSpec]:
    """``CTV`` first, then every non-empty sub-volume (a single-CTV network gives only CTV).

    ``names`` are templates by structure, ``sides`` what replaces their ``{side}``.
    """
    rois = [RoiSpec(union_name, union, description="AI-generated CTV (llmctv)")]
    for name, side, mask in _ordered(structures):
        if name not in names or not mask.any():
            continue
        label = roi_label(names[name], side, sides)
        rois.append(RoiSpec(label, mask, description=f"AI-generated {name} CTV, {side} (llmctv)"))
    return rois


def volumes_cc(rois: Sequence[RoiSpec], voxel_cc: float) -> dict[str, float]:
    """cc per ROI name."""
    return {roi.name: round(float(np.count_nonzero(roi.mask)) * voxel_cc, 2) for roi in rois}


def confidence_by_roi(
    confidence: Mapping[tuple[str, str], float],
    names: Mapping[str, str],
    sides: SideLabels = DEFAULT_SIDE_LABELS,
) -> dict[str, float]:
    """Confidence per output ROI name (as in the RTSTRUCT)."""
    return {
        roi_label(names[name], side, sides): value
        for (name, side), value in sorted(confidence.items())
        if name in names
    }
