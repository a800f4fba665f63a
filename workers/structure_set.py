"""The structure set a planner receives: the union ``CTV`` and one ROI per sub-volume and side.

Names follow TG-263 (at most 16 characters): ``CTVp_Breast_L``, ``CTVp_ChestWall_R``,
``CTVn_Axilla_L``, ``CTVn_SCF_L``, ``CTVn_IMN_L``. A site's own names come from the setting
``roi_names`` (``structure=name`` pairs, ``{side}`` replaced by ``L`` or ``R``).

The consistency warnings here read the structures directly: a nodal CTV must be present for
N1-N3 and absent for N0/N1mi; breast after breast-conserving surgery, chest wall after
mastectomy; on the side(s) the note names. Sides are patient sides (LPS +x = left), decided
by :mod:`model.imaging.postprocessing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from model.dicom.rtstruct import RoiSpec
from model.errors import ConfigurationError
from model.imaging.plausibility import PlausibilityReport
from model.network.structures import NODAL, Structure
from model.text.clinical import ClinicalRecord, Side, Surgery

BoolArray = npt.NDArray[np.bool_]
DEFAULT_ROI_NAMES: dict[str, str] = {
    Structure.BREAST.value: "CTVp_Breast_{side}",
    Structure.CHEST_WALL.value: "CTVp_ChestWall_{side}",
    Structure.AXILLA.value: "CTVn_Axilla_{side}",
    Structure.SCF.value: "CTVn_SCF_{side}",
    Structure.IMN.value: "CTVn_IMN_{side}",
}
MAX_ROI_NAME = 16
_SIDE_LETTER = {Side.LEFT: "L", Side.RIGHT: "R"}
_SIDE_WORD = {"L": "left", "R": "right"}


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


def structure_warnings(
    record: ClinicalRecord,
    structures: Mapping[tuple[str, str], BoolArray],
    voxel_cc: float,
    min_cc: float,
) -> list[str]:
    """What the structures say against the note, per named side."""
    cc: dict[tuple[str, str], float] = {
        key: float(np.count_nonzero(mask)) * voxel_cc for key, mask in structures.items()
    }
    warnings: list[str] = []
    named = {_SIDE_LETTER[d.side] for d in record.diagnoses}
    for d in record.diagnoses:
        side = _SIDE_LETTER[d.side]
        nodal = sum(cc.get((s.value, side), 0.0) for s in NODAL)
        where = f"the {_SIDE_WORD[side]} side"
        if d.node_positive and nodal < min_cc:
            warnings.append(f"the note says N{d.n_stage} but no nodal CTV was found on {where}")
        if not d.node_positive and nodal >= min_cc:
            warnings.append(
                f"the note says N{d.n_stage} (no nodal CTV) but {nodal:.1f} cc of nodal CTV "
                f"were contoured on {where}"
            )
        expected, other = Structure.BREAST.value, Structure.CHEST_WALL.value
        if d.surgery is Surgery.TOTAL_MASTECTOMY:
            expected, other = other, expected
        if cc.get((expected, side), 0.0) < min_cc:
            warnings.append(f"no {expected.replace('_', ' ')} CTV on {where} ({d.surgery.value})")
        if cc.get((other, side), 0.0) >= min_cc:
            warnings.append(
                f"{cc[(other, side)]:.1f} cc of {other.replace('_', ' ')} CTV on {where}, "
                f"which the note's {d.surgery.value.replace('_', ' ')} does not call for"
            )
    for (name, side), value in cc.items():
        if side not in named and value >= min_cc:
            warnings.append(
                f"{value:.1f} cc of {name.replace('_', ' ')} CTV on the "
                f"{_SIDE_WORD[side]} side, which the note does not name"
            )
    return warnings


def removal_warnings(removed_cc: Mapping[str, float], min_cc: float) -> list[str]:
    """Postprocessing that removed more than ``min_cc`` (outside the body, islands)."""
    return [
        f"postprocessing removed {value:.1f} cc ({where.replace('_', ' ')})"
        for where, value in sorted(removed_cc.items())
        if value >= min_cc
    ]


def _required(record: ClinicalRecord) -> list[tuple[str, str]]:
    """(structure, side) pairs the note calls for."""
    keys = []
    for d in record.diagnoses:
        side = _SIDE_LETTER[d.side]
        main = Structure.CHEST_WALL if d.surgery is Surgery.TOTAL_MASTECTOMY else Structure.BREAST
        keys.append((main.value, side))
        if d.node_positive:
            keys += [(s.value, side) for s in NODAL]
    return keys


def attention_findings(
    record: ClinicalRecord,
    structures: Mapping[tuple[str, str], BoolArray],
    plausibility: PlausibilityReport | None,
    voxel_cc: float,
    min_cc: float,
    implausible_share: float = 0.2,
    confidence: Mapping[tuple[str, str], float] | None = None,
    flag_below: float = 0.0,
) -> list[str]:
    """Needs-attention findings: what a reviewer must check before the RTSTRUCT may leave.

    * the CT shows no lungs: the anatomical rules could not check anything;
    * a structure the note requires is missing (under ``min_cc``) after the rules;
    * more than ``implausible_share`` of a required structure was implausible (removed);
    * a structure's confidence (:mod:`model.imaging.confidence`) is below ``flag_below``.

    A single-CTV network has no sub-volumes to check: only the first finding applies.
    """
    found: list[str] = []
    if plausibility is not None and not plausibility.lungs_found:
        found.append(
            "no lungs on this CT: the anatomy of the structures could not be checked (is this "
            "a thoracic CT?)"
        )
    if any(name == "ctv" for name, _ in structures):
        return found
    for name, side in _required(record):
        mask = structures.get((name, side))
        kept = 0.0 if mask is None else float(np.count_nonzero(mask)) * voxel_cc
        removed = plausibility.removed_of((name, side)) if plausibility is not None else 0.0
        label = f"{name.replace('_', ' ')} CTV on the {_SIDE_WORD[side]} side"
        reasons = _reasons(plausibility, (name, side))
        if kept < min_cc:
            extra = f"; {removed:.1f} cc were implausible ({reasons})" if removed else ""
            found.append(f"the note requires the {label}, but none was found{extra}")
        elif removed > implausible_share * (kept + removed):
            found.append(
                f"{removed:.1f} cc of the {label} were implausible and removed ({reasons}); "
                f"{kept:.1f} cc remain: check it"
            )
    for (name, side), value in sorted((confidence or {}).items()):
        if value < flag_below and (name, side) in structures:
            label = f"{name.replace('_', ' ')} CTV on the {_SIDE_WORD[side]} side"
            found.append(f"low confidence {value:.2f} for the {label}: check it first")
    return found


def confidence_by_roi(
    confidence: Mapping[tuple[str, str], float], names: Mapping[str, str]
) -> dict[str, float]:
    """Confidence per output ROI name (as in the RTSTRUCT)."""
    return {
        names[name].replace("{side}", side): value
        for (name, side), value in sorted(confidence.items())
        if name in names
    }


def _reasons(plausibility: PlausibilityReport | None, key: tuple[str, str]) -> str:
    if plausibility is None:
        return ""
    return ", ".join(sorted(plausibility.removed.get(key, {})))
