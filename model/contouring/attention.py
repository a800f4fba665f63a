"""Needs-attention findings: what a reviewer must check before the RTSTRUCT may leave.

They read the structures after the anatomical rules (:mod:`model.imaging.plausibility`) and
their confidence (:mod:`model.imaging.confidence`) against what the note requires. Sides are
patient sides (LPS +x = left), decided by :mod:`model.imaging.postprocessing`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from model.contouring.consistency import SIDE_LETTER, SIDE_WORD, BoolArray
from model.dataset.stage_rule import StageRule
from model.imaging.plausibility import PlausibilityReport
from model.network.structures import NODAL, Structure
from model.text.clinical import ClinicalRecord, Surgery


def _required(record: ClinicalRecord, rule: StageRule | None = None) -> list[tuple[str, str]]:
    """(structure, side) pairs the note calls for (nodal ones as the version's N-stage rule
    draws them, e.g. no internal mammary nodes for N1 at a site that treats them for N2-N3)."""
    keys = []
    for d in record.diagnoses:
        side = SIDE_LETTER[d.side]
        main = Structure.CHEST_WALL if d.surgery is Surgery.TOTAL_MASTECTOMY else Structure.BREAST
        keys.append((main.value, side))
        if d.node_positive:
            keys += [
                (s.value, side)
                for s in sorted(NODAL)
                if rule is None or rule.drawn(s.value, d.n_stage)
            ]
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
    rule: StageRule | None = None,
) -> list[str]:
    """Needs-attention findings: what a reviewer must check before the RTSTRUCT may leave.

    * the CT shows no lungs: the anatomical rules could not check anything;
    * a structure the note requires (nodal ones by ``rule``, the version's N-stage rule) is
      missing (under ``min_cc``) after the rules;
    * more than ``implausible_share`` of a required structure was implausible (removed);
    * a structure reaches the edge of the field of view (the CT cuts the patient there);
    * a structure's confidence (:mod:`model.imaging.confidence`) is below ``flag_below``.

    A single-CTV network has no sub-volumes to check: only the lungs and the field of view
    apply.
    """
    found: list[str] = []
    if plausibility is not None and not plausibility.lungs_found:
        found.append(
            "no lungs on this CT: the anatomy of the structures could not be checked (is this "
            "a thoracic CT?)"
        )
    edges = plausibility.fov_edge_slices if plausibility is not None else {}
    for (name, side), slices in sorted(edges.items()):
        if (name, side) not in structures:  # removed (the note rule): not on the plan
            continue
        label = f"{name.replace('_', ' ')} CTV on the {SIDE_WORD[side]} side"
        found.append(
            f"the {label} reaches the edge of the CT's field of view on {slices} slice(s): the "
            "patient is cut by the field of view there and the target may go on outside the "
            "image"
        )
    if any(name == "ctv" for name, _ in structures):
        return found
    for name, side in _required(record, rule):
        mask = structures.get((name, side))
        kept = 0.0 if mask is None else float(np.count_nonzero(mask)) * voxel_cc
        removed = plausibility.removed_of((name, side)) if plausibility is not None else 0.0
        label = f"{name.replace('_', ' ')} CTV on the {SIDE_WORD[side]} side"
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
            label = f"{name.replace('_', ' ')} CTV on the {SIDE_WORD[side]} side"
            found.append(f"low confidence {value:.2f} for the {label}: check it first")
    return found


def _reasons(plausibility: PlausibilityReport | None, key: tuple[str, str]) -> str:
    if plausibility is None:
        return ""
    return ", ".join(sorted(plausibility.removed.get(key, {})))
