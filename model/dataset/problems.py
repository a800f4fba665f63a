"""The findings of a dataset check: problem codes, their severities, and the thresholds.

Every finding is a :class:`Problem` with a code of :data:`PROBLEM_CODES`, *blocking* (the
export would train on a wrong or missing label: fix it first) or a *warning* (look at it).
:class:`CheckOptions` holds the thresholds that decide the volume, side, body and union
findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from model.errors import ConfigurationError


class Severity(StrEnum):
    """How much a problem matters."""

    BLOCKING = "blocking"
    WARNING = "warning"


B, W = Severity.BLOCKING, Severity.WARNING

#: Every problem code, its severity, and what it means (the documentation lists these).
PROBLEM_CODES: dict[str, tuple[Severity, str]] = {
    "invalid_clinical_row": (B, "a clinical.csv row that does not validate"),
    "invalid_split": (B, "a split value other than train, val or test"),
    "case_folder_missing": (B, "a CSV row without its case folder"),
    "folder_without_csv_row": (W, "a case folder that no CSV row names (training skips it)"),
    "ct_unreadable": (B, "the case's CT series cannot be read (its error code is given)"),
    "no_rtstruct": (B, "the case folder holds no readable RTSTRUCT"),
    "rtstruct_unreadable": (W, "a file of modality RTSTRUCT that cannot be parsed"),
    "frame_of_reference_mismatch": (B, "no RTSTRUCT is on the CT's FrameOfReferenceUID"),
    "several_rtstructs": (W, "several RTSTRUCTs on the CT's frame: the first is used"),
    "referenced_series_mismatch": (W, "the RTSTRUCT names another CT series (same frame)"),
    "contour_image_not_in_ct": (W, "contours reference images that are not in the CT series"),
    "several_patients_in_case": (B, "the files of one case carry different PatientIDs"),
    "ambiguous_roi": (B, "an ROI name matches the patterns of two structures"),
    "duplicate_roi_name": (W, "two ROIs of the structure set share a name (both count)"),
    "contours_unreadable": (B, "a target ROI whose contours cannot be placed on the CT"),
    "contours_off_ct": (W, "contours of a target ROI outside the CT's slices (ignored)"),
    "unmatched_target_roi": (W, "an ROI that looks like a CTV but the map does not place"),
    "empty_roi": (W, "a structure or union ROI without voxels (the structure counts absent)"),
    "tiny_structure": (W, "a structure smaller than --min-cc"),
    "side_name_contradicts_position": (B, "an ROI named for one side lies on the other"),
    "structure_on_untreated_side": (B, "a structure on a side the CSV does not name"),
    "no_target_on_treated_side": (B, "a side the CSV names has no structure"),
    "structure_vs_surgery": (W, "breast after mastectomy, or chest wall after conserving"),
    "nodal_absent_node_positive": (W, "N1-N3 side without any nodal structure"),
    "nodal_present_node_negative": (W, "N0/N1mi side with a nodal structure"),
    "nodal_vs_stage_rule": (W, "a nodal structure present or absent against the map's n_stages"),
    "outside_body": (B, "a structure lies largely outside the body"),
    "partly_outside_body": (W, "a structure lies partly outside the body"),
    "union_differs_from_structures": (W, "the union ROI and the union of the structures differ"),
    "patient_in_several_splits": (B, "one patient in cases of different splits (leakage)"),
    "patient_in_several_cases": (W, "one patient under several case folders"),
    "case_id_holds_patient_id": (W, "case ids that contain the PatientID (shown by CSV line)"),
}


@dataclass(frozen=True)
class CheckOptions:
    """Thresholds of the check.

    Parameters
    ----------
    min_cc
        A (structure, side) below this volume is *tiny* (warning).
    outside_warn, outside_block
        Fractions of a structure's volume outside the body that give a warning / block.
    side_contradiction
        An ROI named for one side with more than this fraction of its volume on the other
        side of the midline contradicts its name (blocking).
    side_share
        An ROI without a side in its name counts on a side that holds at least this share of
        it; below, its few voxels across the midline go with the rest.
    union_tolerance
        The union ROI and the union of the structures may differ by this fraction of either.
    """

    min_cc: float = 0.5
    outside_warn: float = 0.01
    outside_block: float = 0.10
    side_contradiction: float = 0.8
    side_share: float = 0.2
    union_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if not self.min_cc >= 0:
            raise ConfigurationError(f"min_cc must be >= 0, got {self.min_cc}")
        fractions = {
            "outside_warn": self.outside_warn,
            "outside_block": self.outside_block,
            "side_contradiction": self.side_contradiction,
            "union_tolerance": self.union_tolerance,
        }
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"{name} must lie in [0, 1], got {value}")
        if not 0.0 < self.side_share <= 0.5:
            raise ConfigurationError(f"side_share must lie in (0, 0.5], got {self.side_share}")
        if self.outside_warn > self.outside_block:
            raise ConfigurationError("outside_warn must not exceed outside_block")


@dataclass(frozen=True)
class Problem:
    """One finding: severity, code (:data:`PROBLEM_CODES`), case, ROI and detail."""

    severity: Severity
    code: str
    detail: str
    case: str | None = None
    roi: str | None = None


def problem(code: str, detail: str, case: str | None = None, roi: str | None = None) -> Problem:
    """A :class:`Problem` with the severity that :data:`PROBLEM_CODES` gives ``code``."""
    return Problem(PROBLEM_CODES[code][0], code, detail, case, roi)
