"""The clinical CSV of an export, read the way the check needs it: row by row.

Unlike :func:`model.text.clinical.read_clinical_csv` (training: one bad row stops the run),
every row is validated on its own, so one check lists every bad row as a problem. An optional
``split`` column (``train``/``val``/``test`` and their spellings) is read too.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from model.dataset.problems import Problem, problem
from model.errors import DatasetError, LlmctvError
from model.text.clinical import ClinicalRecord, row_to_record

N_CATEGORIES = ("N0", "N1mi", "N1", "N2", "N3")
SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val"}
SPLITS |= {"validation": "val", "test": "test", "testing": "test"}
REQUIRED_COLUMNS = ("case_id", "side", "surgery", "t_stage", "n_stage")


@dataclass
class CsvRow:
    """One CSV row: its line, case id, record (``None`` if invalid) and split."""

    line: int
    case_id: str
    record: ClinicalRecord | None
    split: str | None


def read_rows(path: Path) -> tuple[list[CsvRow], list[Problem]]:
    """The CSV rows (records validated one by one) and the problems of the rows."""
    if not path.is_file():
        raise DatasetError(f"clinical CSV not found: {path}")
    rows: list[CsvRow] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(REQUIRED_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing columns {sorted(missing)}")
        has_split = "split" in (reader.fieldnames or [])
        for line, raw in enumerate(reader, start=2):
            case_id = (raw.get("case_id") or "").strip()
            where = f"clinical.csv line {line}"
            if not case_id or case_id in seen or case_id in (".", "..") or "/" in case_id:
                problems.append(
                    problem("invalid_clinical_row", f"{where}: empty, repeated or unsafe case_id")
                )
                continue
            seen.add(case_id)
            record = None
            try:
                record = row_to_record(raw)
            except LlmctvError as exc:
                problems.append(
                    problem("invalid_clinical_row", f"{where}: {exc.detail}", case=case_id)
                )
            split = None
            if has_split and (value := (raw.get("split") or "").strip().lower()):
                split = SPLITS.get(value)
                if split is None:
                    problems.append(
                        problem(
                            "invalid_split",
                            f"{where}: split {value!r} is not train, val or test",
                            case=case_id,
                        )
                    )
            rows.append(CsvRow(line, case_id, record, split))
    return rows, problems


def n_category(n_stage: str) -> str:
    """``"N0"``, ``"N1mi"``, ``"N1"`` (N1, N1a-c), ``"N2"`` or ``"N3"``."""
    return "N1mi" if n_stage == "1mi" else f"N{n_stage[:1]}"
