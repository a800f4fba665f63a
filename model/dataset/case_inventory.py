"""What one case of an export holds, and the checks of what it holds.

:class:`CaseInventory` is filled by :mod:`model.dataset.case_check` (the case's files) and
:mod:`model.dataset.structure_placement` (its structures on the CT); the functions here check
the result: volumes against the thresholds, the union ROI against the structures, and the
structures against the clinical CSV (sides, surgery, N stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.dataset.problems import CheckOptions, Problem, problem
from model.dataset.structure_map import NODE_POSITIVE_BASES, StructureMap
from model.text.clinical import ClinicalRecord, Surgery


@dataclass
class RoiFinding:
    """One ROI of the case's structure set, as the map classifies it.

    ``left_share`` is the share of its voxels on the patient's left of the body midline.
    """

    name: str
    kind: str
    structure: str | None
    side_in_name: str | None
    interpreted_type: str
    contours: int
    volume_cc: float | None = None
    left_share: float | None = None


@dataclass
class StructureFinding:
    """One (structure, side): the union of its ROIs on the CT grid.

    ``side_from`` is ``"name"`` when the ROI names give the side, ``"position"`` when the
    midline does (``"name+position"`` when both contribute).
    """

    structure: str
    side: str
    nodal: bool
    rois: list[str]
    volume_cc: float
    outside_body_fraction: float
    side_from: str


@dataclass
class CaseInventory:
    """What one case holds. ``case_id`` is the display id (see ``case_id_holds_patient_id``)."""

    case_id: str
    patient: str | None = None
    split: str | None = None
    clinical: dict[str, dict[str, str]] = field(default_factory=dict)
    ct: dict[str, Any] | None = None
    rtstruct: dict[str, Any] | None = None
    rois: list[RoiFinding] = field(default_factory=list)
    structures: list[StructureFinding] = field(default_factory=list)
    union: dict[str, Any] | None = None
    target_cc: float | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        """Whether the structures were placed on the CT (CT and RTSTRUCT readable, same frame)."""
        return self.target_cc is not None

    def present(self) -> dict[tuple[str, str], StructureFinding]:
        """The (structure, side) pairs with voxels."""
        return {(s.structure, s.side): s for s in self.structures if s.volume_cc > 0}


def check_volumes(case: CaseInventory, options: CheckOptions) -> None:
    """Tiny structures, and structures partly or largely outside the body."""
    for s in case.structures:
        label = f"{s.structure} {s.side}"
        if 0 < s.volume_cc < options.min_cc:
            case.problems.append(
                problem(
                    "tiny_structure",
                    f"{label}: {s.volume_cc:.3f} cc < {options.min_cc} cc",
                    case.case_id,
                )
            )
        outside = s.outside_body_fraction
        if outside > options.outside_block:
            code = "outside_body"
        elif outside > options.outside_warn:
            code = "partly_outside_body"
        else:
            continue
        case.problems.append(
            problem(code, f"{label}: {outside:.1%} of its volume outside the body", case.case_id)
        )


def check_union(case: CaseInventory, options: CheckOptions) -> None:
    """The union ROI against the union of the structures (within ``union_tolerance``)."""
    if case.union is None or not case.structures:
        return
    limit = 1.0 - options.union_tolerance
    covered, within = case.union["structures_covered"], case.union["union_covered"]
    if (covered is not None and covered < limit) or (within is not None and within < limit):
        case.problems.append(
            problem(
                "union_differs_from_structures",
                f"union ROI holds {covered:.1%} of the structures; "
                f"{within:.1%} of it lies in a structure",
                case.case_id,
            )
        )


def check_clinical(case: CaseInventory, record: ClinicalRecord, smap: StructureMap) -> None:
    """Sides, surgery and N stage of the CSV against the structures found."""
    present = case.present()
    treated = {d.side.letter: d for d in record.diagnoses}
    for structure, side in sorted(present):
        if side not in treated:
            case.problems.append(
                problem(
                    "structure_on_untreated_side",
                    f"{structure} on side {side}; the CSV names side(s) "
                    f"{', '.join(sorted(treated))}",
                    case.case_id,
                )
            )
    names = set(smap.structure_names)
    for side, diagnosis in sorted(treated.items()):
        here = {structure for structure, s in present if s == side}
        if not here:
            case.problems.append(
                problem("no_target_on_treated_side", f"no structure on side {side}", case.case_id)
            )
            continue
        wrong = "breast" if diagnosis.surgery is Surgery.TOTAL_MASTECTOMY else "chest_wall"
        if wrong in names and wrong in here:
            case.problems.append(
                problem(
                    "structure_vs_surgery",
                    f"{wrong} on side {side} after {diagnosis.surgery.value}",
                    case.case_id,
                )
            )
        if not smap.nodal_names:
            continue
        nodal = sorted(here & set(smap.nodal_names))
        if diagnosis.node_positive and not nodal:
            case.problems.append(
                problem(
                    "nodal_absent_node_positive",
                    f"side {side} is N{diagnosis.n_stage} but has no nodal structure",
                    case.case_id,
                )
            )
        if not diagnosis.node_positive and nodal:
            case.problems.append(
                problem(
                    "nodal_present_node_negative",
                    f"side {side} is N{diagnosis.n_stage} but has {', '.join(nodal)}",
                    case.case_id,
                )
            )
        if diagnosis.node_positive:
            _check_stage_rule(case, smap, side, diagnosis.n_stage, here)


def _check_stage_rule(
    case: CaseInventory, smap: StructureMap, side: str, n_stage: str, here: set[str]
) -> None:
    """Nodal structures whose map names the N stages they are drawn for (``n_stages``,
    e.g. internal mammary nodes for N2-N3 only): present on a side of another stage, or
    absent from a side of one of them."""
    for entry in smap.structures:
        if not entry.nodal or entry.n_stages == NODE_POSITIVE_BASES:
            continue
        expected, found = entry.drawn_for(n_stage), entry.name in here
        if expected != found:
            rule = "N" + "-N".join(entry.n_stages)
            what = "has" if found else "lacks"
            case.problems.append(
                problem(
                    "nodal_vs_stage_rule",
                    f"side {side} is N{n_stage} and {what} {entry.name} (drawn for {rule})",
                    case.case_id,
                )
            )
