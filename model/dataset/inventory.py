"""The inventory of a clinical export: what each case holds, and what is wrong with it.

The export has the layout of a training data set (:mod:`model.training.dataset`):
``DATA/clinical.csv`` (one row per case, :data:`model.text.clinical.CSV_COLUMNS`, plus an
optional ``split`` column ``train``/``val``/``test``) and ``DATA/<case_id>/`` with the case's CT
series and RTSTRUCT in any sub-folders.

Per case (:mod:`~model.dataset.case_check`): the CT, the RTSTRUCT on the CT's frame of
reference (the first in file order, as training takes it), each ROI classified by the
:class:`~model.dataset.structure_map.StructureMap`, and per (structure, side) the union of its
ROIs rasterised on the CT grid (:mod:`~model.dataset.structure_placement`: volumes in cc,
sides from the names or the body midline). Every finding is a
:class:`~model.dataset.problems.Problem` with a code of
:data:`~model.dataset.problems.PROBLEM_CODES`, *blocking* (the export would train on a wrong
or missing label: fix it first) or a *warning* (look at it). Across cases: patients
(:mod:`~model.dataset.patients`: PatientIDs never leave the check, a report names a patient
by a label hashed with a salt drawn for each check), folders without a CSV row, and the
tables of structures by N stage and surgery.

The modules: :mod:`~model.dataset.problems` (codes, thresholds),
:mod:`~model.dataset.clinical_rows` (the CSV), :mod:`~model.dataset.case_check` (one case),
:mod:`~model.dataset.structure_placement` (its structures on the CT),
:mod:`~model.dataset.case_inventory` (what a case holds and its checks),
:mod:`~model.dataset.patients` (across cases); this one runs them over the export and sums up.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from model.dataset.case_check import CaseResult, check_case, scan_case_folder
from model.dataset.case_inventory import CaseInventory, RoiFinding, StructureFinding
from model.dataset.clinical_rows import N_CATEGORIES, CsvRow, n_category, read_rows
from model.dataset.patients import hide_patient_ids, holds_patient_id, patient_problems
from model.dataset.problems import PROBLEM_CODES, CheckOptions, Problem, Severity, problem
from model.dataset.structure_map import StructureMap
from model.errors import DatasetError
from model.text.clinical import Surgery

__all__ = [
    "PROBLEM_CODES",
    "CaseInventory",
    "CheckOptions",
    "Inventory",
    "Problem",
    "RoiFinding",
    "Severity",
    "StructureFinding",
    "check_dataset",
    "n_category",
]

log = logging.getLogger(__name__)


@dataclass
class Inventory:
    """The check of one export."""

    data: str
    created: str
    options: CheckOptions
    structure_map: dict[str, Any]
    cases: list[CaseInventory]
    problems: list[Problem]
    tables: dict[str, Any]
    summary: dict[str, Any]

    @property
    def blocking(self) -> list[Problem]:
        """The blocking problems."""
        return [p for p in self.problems if p.severity is Severity.BLOCKING]


# --- the data set -----------------------------------------------------------------------------
def check_dataset(
    data_dir: Path,
    structure_map: StructureMap,
    options: CheckOptions | None = None,
    *,
    csv_path: Path | None = None,
) -> Inventory:
    """Inventory every case of an export and list its problems.

    Raises
    ------
    DatasetError
        The data folder or its clinical CSV is missing, or the CSV lacks required columns.
    """
    options = options or CheckOptions()
    if not data_dir.is_dir():
        raise DatasetError(f"data folder not found: {data_dir}")
    rows, problems = read_rows(csv_path or data_dir / "clinical.csv")
    results: list[CaseResult] = []
    for row in rows:
        case_dir = data_dir / row.case_id
        if not case_dir.is_dir():
            problems.append(
                problem("case_folder_missing", "no folder for this CSV row", row.case_id)
            )
            continue
        results.append(check_case(row, case_dir, structure_map, options))
    problems += _stray_folders(data_dir, {row.case_id for row in rows})
    problems += hide_patient_ids(results, problems)
    problems += patient_problems(results)
    cases = [r.inventory for r in results]
    for case in cases:
        problems += case.problems
    problems.sort(key=lambda p: (p.severity is not Severity.BLOCKING, p.case or "", p.code))
    log.info(
        "dataset check: %d cases, %d blocking problems, %d warnings",
        len(cases),
        sum(p.severity is Severity.BLOCKING for p in problems),
        sum(p.severity is Severity.WARNING for p in problems),
    )
    return Inventory(
        data=str(data_dir),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        options=options,
        structure_map=structure_map.describe(),
        cases=cases,
        problems=problems,
        tables=_tables(cases, structure_map),
        summary=_summary(rows, cases, problems, structure_map),
    )


def _stray_folders(data_dir: Path, named: set[str]) -> list[Problem]:
    """Folders no CSV row names (a name holding its PatientID is not shown)."""
    out = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name not in named):
        if folder.name.startswith("."):
            continue
        if holds_patient_id(folder.name, scan_case_folder(folder)[1]):
            out.append(
                problem(
                    "folder_without_csv_row",
                    "a case folder that no CSV row names (its name, which holds its "
                    "PatientID, is not shown)",
                )
            )
        else:
            out.append(
                problem(
                    "folder_without_csv_row", "a case folder that no CSV row names", folder.name
                )
            )
    return out


def _tables(cases: list[CaseInventory], smap: StructureMap) -> dict[str, Any]:
    """Per treated side of the checked cases: structures present, by N stage and by surgery."""
    names = list(smap.structure_names)

    def empty_row() -> dict[str, Any]:
        return {"sides": 0, "any_nodal": 0, "structures": dict.fromkeys(names, 0)}

    by_n = {c: empty_row() for c in N_CATEGORIES}
    by_surgery = {s.value: empty_row() for s in Surgery}
    for case in cases:
        if not case.checked:
            continue
        present = case.present()
        for side, clinical in case.clinical.items():
            here = {structure for structure, s in present if s == side}
            for row in (by_n[clinical["category"]], by_surgery[clinical["surgery"]]):
                row["sides"] += 1
                row["any_nodal"] += int(bool(here & set(smap.nodal_names)))
                for name in here:
                    row["structures"][name] += 1
    return {
        "structures": names,
        "nodal": list(smap.nodal_names),
        "n_stage": by_n,
        "surgery": by_surgery,
    }


def _summary(
    rows: list[CsvRow],
    cases: list[CaseInventory],
    problems: list[Problem],
    smap: StructureMap,
) -> dict[str, Any]:
    volumes: dict[str, list[float]] = {name: [] for name in smap.structure_names}
    for case in cases:
        for s in case.structures:
            if s.volume_cc > 0:
                volumes.setdefault(s.structure, []).append(s.volume_cc)
    blocked = {p.case for p in problems if p.severity is Severity.BLOCKING}
    return {
        "csv_rows": len(rows),
        "cases": len(cases),
        "cases_checked": sum(c.checked for c in cases),
        "cases_blocked": len({c.case_id for c in cases} & blocked),
        "blocking": sum(p.severity is Severity.BLOCKING for p in problems),
        "warnings": sum(p.severity is Severity.WARNING for p in problems),
        "codes": dict(sorted(Counter(p.code for p in problems).items())),
        "volumes_cc": {
            name: (
                {
                    "n": len(v),
                    "min": min(v),
                    "median": round(median(v), 3),
                    "max": max(v),
                }
                if v
                else {"n": 0}
            )
            for name, v in volumes.items()
        },
    }
