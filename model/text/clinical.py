"""Clinical fields of the service contract and the text the model reads.

The contract (``shared/specs/service-contract.md``) fixes the JSON shape; this module
validates it and renders the reference template, e.g.
``"N1mi, cT2, breast conserving surgery, left side"``, clauses joined by ``"; "``.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Mapping
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.errors import (
    DatasetError,
    InvalidClinicalError,
    NoteContradictsFieldsError,
    NoteTooLongError,
)

# Matched with ``fullmatch``: ``$`` alone would accept a trailing newline ("0\n").
T_STAGE_PATTERN = re.compile(r"is|1mi|1[abc]?|[23]|4[abcd]?")
N_STAGE_PATTERN = re.compile(r"0|1mi|[123][abc]?")

#: Longest note accepted, in characters and in words. The text encoder reads at most
#: ``model.network.context.MAX_NOTE_TOKENS`` (128) tokens; clinical prose takes about 4-5
#: characters and 1.5 words per token, so these bounds stay well below it. A note that still
#: tokenises longer fails its job with ``note_too_long`` (never cut silently).
MAX_NOTE_CHARS = 400
MAX_NOTE_WORDS = 64

_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_N_STAGE_IN_NOTE = re.compile(r"(?<![A-Za-z0-9])(?:y?[pc])?N(0|1mi|[123][abc]?)(?![A-Za-z0-9])")


class Side(StrEnum):
    """Treated side."""

    LEFT = "left"
    RIGHT = "right"

    @property
    def letter(self) -> str:
        """``"L"`` or ``"R"``: the side of the structure keys ``(name, side)`` and ROI names."""
        return "L" if self is Side.LEFT else "R"


class Surgery(StrEnum):
    """Type of breast surgery."""

    BREAST_CONSERVING = "breast_conserving"
    TOTAL_MASTECTOMY = "total_mastectomy"


class Pathology(StrEnum):
    """Histology; recorded, not used by the target rule."""

    IDC = "IDC"
    ILC = "ILC"
    DCIS = "DCIS"


_SURGERY_TEXT = {
    Surgery.BREAST_CONSERVING: "breast conserving surgery",
    Surgery.TOTAL_MASTECTOMY: "total mastectomy surgery",
}


class Diagnosis(BaseModel):
    """One treated side."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    side: Side
    surgery: Surgery
    t_stage: str = Field(description="is|1|2|3|4 with optional suffix (1mi, 1a-1c, 4a-4d)")
    n_stage: str = Field(description="0|1mi|1|2|3 with optional a/b/c suffix")

    @field_validator("t_stage")
    @classmethod
    def _t_stage(cls, value: str) -> str:
        if not T_STAGE_PATTERN.fullmatch(value):
            raise ValueError(f"t_stage {value!r} is not one of is|1|2|3|4 (+ suffix)")
        return value

    @field_validator("n_stage")
    @classmethod
    def _n_stage(cls, value: str) -> str:
        if not N_STAGE_PATTERN.fullmatch(value):
            raise ValueError(f"n_stage {value!r} is not one of 0|1mi|1|2|3 (+ a/b/c)")
        return value

    @property
    def node_positive(self) -> bool:
        """N1, N2 or N3 (not N0, not N1mi): regional nodes are part of the target."""
        return self.n_stage not in ("0", "1mi")

    def render(self) -> str:
        """The reference template clause for this side."""
        return (
            f"N{self.n_stage}, cT{self.t_stage}, {_SURGERY_TEXT[self.surgery]}, "
            f"{self.side.value} side"
        )


class ClinicalRecord(BaseModel):
    """The clinical JSON of the service contract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    diagnoses: tuple[Diagnosis, ...] = Field(min_length=1, max_length=2)
    age: int | None = Field(default=None, ge=0, le=120)
    pathology: Pathology | None = None
    neoadjuvant_chemotherapy: bool | None = None
    note: str | None = None

    @field_validator("note")
    @classmethod
    def _printable_note(cls, value: str | None) -> str | None:
        if value is not None and _has_control_characters(value):
            raise ValueError("the note holds control characters (line breaks, tabs, escapes)")
        return value

    @field_validator("diagnoses")
    @classmethod
    def _one_entry_per_side(cls, value: tuple[Diagnosis, ...]) -> tuple[Diagnosis, ...]:
        sides = [d.side for d in value]
        if len(set(sides)) != len(sides):
            raise ValueError("a side is given twice")
        return value

    def per_side(self) -> tuple[ClinicalRecord, ...]:
        """A bilateral record without a free-text note as one one-sided record per side.

        Left first. Empty for a one-sided record and for any record with a note (a free text
        cannot be split by side reliably). The target rules are per side, so each side's
        record gives that side's CTV.
        """
        if len(self.diagnoses) < 2 or (self.note is not None and self.note.strip()):
            return ()
        ordered = sorted(self.diagnoses, key=lambda d: d.side.value)
        return tuple(self.model_copy(update={"diagnoses": (d,)}) for d in ordered)

    def prompt_text(self) -> str:
        """The text the model reads: ``note`` verbatim if given, else the rendered template."""
        if self.note is not None and self.note.strip():
            return self.note
        ordered = sorted(self.diagnoses, key=lambda d: d.side.value)
        return "; ".join(d.render() for d in ordered)


def parse_clinical(data: Mapping[str, Any] | str | bytes) -> ClinicalRecord:
    """Validate clinical JSON (a mapping or a JSON string).

    Raises
    ------
    InvalidClinicalError
        Naming the offending field (``invalid_clinical``).
    NoteTooLongError
        A note over :data:`MAX_NOTE_CHARS` characters or :data:`MAX_NOTE_WORDS` words.
    NoteContradictsFieldsError
        A note that names a side or an N stage that the structured fields do not give.
    """
    try:
        if isinstance(data, str | bytes):
            record = ClinicalRecord.model_validate_json(data)
        else:
            record = ClinicalRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "clinical"
        raise InvalidClinicalError(f"{where}: {first['msg']}") from exc
    if record.note is not None:
        check_note_length(record.note)
        check_note_agrees(record)
    return record


def _has_control_characters(text: str) -> bool:
    """Control (Cc) or format (Cf: zero-width, bidi override) characters anywhere."""
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in text)


def check_note_length(note: str) -> None:
    """Refuse a note the text encoder could not read whole (it is never cut)."""
    words = len(note.split())
    if len(note) > MAX_NOTE_CHARS or words > MAX_NOTE_WORDS:
        raise NoteTooLongError(
            f"note: {len(note)} characters and {words} words; at most {MAX_NOTE_CHARS} "
            f"characters and {MAX_NOTE_WORDS} words are read by the model"
        )


def _same_n_stage(in_note: str, field: str) -> bool:
    """``N1a`` in a note agrees with ``n_stage`` 1; N1mi (node negative) only with 1mi."""
    if "mi" in (in_note[1:], field[1:]):
        return in_note == field
    return in_note == field or (in_note[0] == field[0] and min(len(in_note), len(field)) == 1)


def check_note_agrees(record: ClinicalRecord) -> None:
    """Refuse a note that names a side or an N stage the structured fields do not give."""
    note = record.note or ""
    sides = {d.side.value for d in record.diagnoses}
    for word in {m.lower() for m in _SIDE_WORD.findall(note)} - sides:
        raise NoteContradictsFieldsError(
            f"note: names the {word} side, but diagnoses give {' and '.join(sorted(sides))}"
        )
    stages = [d.n_stage for d in record.diagnoses]
    for named in _N_STAGE_IN_NOTE.findall(note):
        if not any(_same_n_stage(named, field) for field in stages):
            given = " and ".join(f"N{s}" for s in stages)
            raise NoteContradictsFieldsError(
                f"note: names N{named}, but diagnoses give n_stage {given}"
            )


# --- clinical CSV (one row per case) -------------------------------------------------------
CSV_COLUMNS = (
    "case_id",
    "side",
    "surgery",
    "t_stage",
    "n_stage",
    "age",
    "pathology",
    "neoadjuvant_chemotherapy",
    "note",
)
"""Columns of the clinical CSV. For bilateral disease, ``side``, ``surgery``, ``t_stage``
and ``n_stage`` hold two values separated by ``;`` in the same order."""


def record_to_row(case_id: str, record: ClinicalRecord) -> dict[str, str]:
    """Flatten a record into one CSV row."""

    def joined(attr: str) -> str:
        values = [getattr(d, attr) for d in record.diagnoses]
        return ";".join(v.value if isinstance(v, Enum) else str(v) for v in values)

    return {
        "case_id": case_id,
        "side": joined("side"),
        "surgery": joined("surgery"),
        "t_stage": joined("t_stage"),
        "n_stage": joined("n_stage"),
        "age": "" if record.age is None else str(record.age),
        "pathology": "" if record.pathology is None else record.pathology.value,
        "neoadjuvant_chemotherapy": ""
        if record.neoadjuvant_chemotherapy is None
        else str(record.neoadjuvant_chemotherapy).lower(),
        "note": record.note or "",
    }


def row_to_record(row: Mapping[str, str]) -> ClinicalRecord:
    """Parse one CSV row into a validated record (raises :class:`InvalidClinicalError`)."""
    parts = {k: (row.get(k) or "").split(";") for k in ("side", "surgery", "t_stage", "n_stage")}
    counts = {len(v) for v in parts.values()}
    if len(counts) != 1:
        raise InvalidClinicalError(
            "side/surgery/t_stage/n_stage must list the same number of ';'-separated values"
        )
    diagnoses = [{k: parts[k][i].strip() for k in parts} for i in range(counts.pop())]
    chemo = (row.get("neoadjuvant_chemotherapy") or "").strip().lower()
    payload: dict[str, Any] = {
        "diagnoses": diagnoses,
        "age": int(row["age"]) if (row.get("age") or "").strip() else None,
        "pathology": (row.get("pathology") or "").strip() or None,
        "neoadjuvant_chemotherapy": None if not chemo else chemo in ("true", "1", "yes"),
        "note": (row.get("note") or "") or None,
    }
    return parse_clinical(payload)


def write_clinical_csv(path: Path, rows: Iterable[tuple[str, ClinicalRecord]]) -> None:
    """Write ``(case_id, record)`` pairs as a clinical CSV."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for case_id, record in rows:
            writer.writerow(record_to_row(case_id, record))


def read_clinical_csv(path: Path) -> dict[str, ClinicalRecord]:
    """Read a clinical CSV into ``{case_id: record}``.

    Raises
    ------
    DatasetError
        Missing columns, duplicate case ids, or an invalid row (naming its line).
    """
    if not path.is_file():
        raise DatasetError(f"clinical CSV not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        required = {"case_id", "side", "surgery", "t_stage", "n_stage"}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing columns {sorted(missing)}")
        records: dict[str, ClinicalRecord] = {}
        for line, row in enumerate(reader, start=2):
            case_id = (row.get("case_id") or "").strip()
            if not case_id or case_id in records:
                raise DatasetError(f"{path}:{line}: empty or duplicate case_id")
            try:
                records[case_id] = row_to_record(row)
            except InvalidClinicalError as exc:
                raise DatasetError(f"{path}:{line}: {exc.detail}") from exc
    return records


_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left"}


def mirrored_note(note: str) -> str:
    """The note with every "left" and "right" swapped (case kept): the mirrored patient's."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = _OTHER_SIDE[word.lower()]
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _SIDE_WORDS.sub(swap, note)
