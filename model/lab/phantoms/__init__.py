"""Synthetic breast-RT phantoms (``shared/specs/breast-phantom.md`` v1.1).

Each case is an axial CT (DICOM LPS mm; arrays ``(k, j, i)``), a ground-truth CTV that
follows the clinical text by the spec's rule, and a clinical record.
"""

from model.lab.phantoms.case import (
    LATERALITY_FLIP,
    N_SWITCH,
    PERTURBATIONS,
    CaseUids,
    PhantomCase,
    eligible_perturbations,
    generate_case,
    perturb,
    perturbed_record,
)
from model.lab.phantoms.cohort import WrittenCase, case_id_for, case_seed, write_case, write_cohort
from model.lab.phantoms.rules import ROI_CTV, SUB_VOLUMES, ctv_masks
from model.lab.phantoms.sites import SITES, SPEC_VERSION, SiteProfile, get_site

__all__ = [
    "LATERALITY_FLIP",
    "N_SWITCH",
    "PERTURBATIONS",
    "ROI_CTV",
    "SITES",
    "SPEC_VERSION",
    "SUB_VOLUMES",
    "CaseUids",
    "PhantomCase",
    "SiteProfile",
    "WrittenCase",
    "case_id_for",
    "case_seed",
    "ctv_masks",
    "eligible_perturbations",
    "generate_case",
    "get_site",
    "perturb",
    "perturbed_record",
    "write_case",
    "write_cohort",
]
