"""Patients across the cases of an export: labels, leakage between splits, repeated patients.

PatientIDs never leave the check. A report names a patient by a label hashed with a salt
drawn for each check (``P-`` and 8 hex digits, :func:`patient_label`): it groups the cases of
one patient within one report and cannot be looked up. A case id (folder name) that holds its
patient's PatientID is replaced by the case's CSV line.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace

from model.dataset.case_check import CaseResult
from model.dataset.problems import Problem, problem


def patient_label(salt: bytes, patient_id: str, digits: int = 8) -> str:
    """``P-`` and the first ``digits`` hex digits of SHA-256 over ``salt`` and the PatientID.

    Without the salt the label cannot be looked up from a list of PatientIDs; with one salt,
    the same PatientID always gives the same label.
    """
    digest = hashlib.sha256(salt + patient_id.encode("utf-8")).hexdigest()
    return f"P-{digest[:digits]}"


def holds_patient_id(name: str, patient_ids: set[str]) -> bool:
    """Whether ``name`` contains one of the PatientIDs (of 3 characters or more), any case."""
    return any(len(pid) >= 3 and pid.lower() in name.lower() for pid in patient_ids)


def hide_patient_ids(results: list[CaseResult], problems: list[Problem]) -> list[Problem]:
    """Label patients by a salted hash; a case id holding its PatientID is shown by CSV line."""
    salt = secrets.token_bytes(16)
    hidden = []
    for result in results:
        case = result.inventory
        ids = sorted(result.patient_ids)
        if ids:
            case.patient = patient_label(salt, ids[0])
        if not holds_patient_id(case.case_id, result.patient_ids):
            continue
        old, new = case.case_id, f"csv-line-{result.line}"
        case.case_id = new
        case.problems = [replace(p, case=new) if p.case == old else p for p in case.problems]
        problems[:] = [replace(p, case=new) if p.case == old else p for p in problems]
        hidden.append(new)
    if not hidden:
        return []
    shown = ", ".join(hidden[:10]) + (", ..." if len(hidden) > 10 else "")
    return [
        problem(
            "case_id_holds_patient_id",
            f"{len(hidden)} case ids contain their PatientID; these cases are shown by their "
            f"CSV line ({shown}); rename the folders and CSV rows",
        )
    ]


def patient_problems(results: list[CaseResult]) -> list[Problem]:
    """One patient in cases of different splits (blocking) or in several cases (warning)."""
    by_patient: dict[str, list[CaseResult]] = {}
    for result in results:
        if len(result.patient_ids) == 1:
            by_patient.setdefault(next(iter(result.patient_ids)), []).append(result)
    out = []
    for group in by_patient.values():
        if len(group) < 2:
            continue
        ids = [r.inventory.case_id for r in group]
        label = group[0].inventory.patient
        splits = {r.inventory.split for r in group if r.inventory.split is not None}
        if len(splits) > 1:
            out.append(
                problem(
                    "patient_in_several_splits",
                    f"patient {label} is in cases {', '.join(ids)} of splits "
                    f"{', '.join(sorted(splits))}",
                )
            )
            continue
        same_ct = len({r.series_uid for r in group}) == 1 and group[0].series_uid is not None
        note = "the same CT series" if same_ct else "different CT series"
        out.append(
            problem(
                "patient_in_several_cases",
                f"patient {label} is in cases {', '.join(ids)} ({note})",
            )
        )
    return out
