"""Clinical validators (issue 15): full matches, control characters, note length, notes that
contradict the structured fields; and the worker's token check of a note (never cut)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from model.contouring.engine import ContourEngine
from model.errors import InvalidClinicalError, NoteContradictsFieldsError, NoteTooLongError
from model.network.context import MAX_NOTE_TOKENS
from model.text.clinical import MAX_NOTE_CHARS, parse_clinical


def _record(note: str | None = None, **changes: Any) -> dict[str, Any]:
    diagnosis = {"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}
    body: dict[str, Any] = {"diagnoses": [diagnosis | changes]}
    if note is not None:
        body["note"] = note
    return body


@pytest.mark.parametrize("value", ["0\n", "1\n", "1a\n", " 1", "1 ", "01", "1mi\r"])
def test_n_stage_is_matched_whole(value: str) -> None:
    with pytest.raises(InvalidClinicalError, match=r"^\[invalid_clinical\] diagnoses\.0\.n_stage"):
        parse_clinical(_record(n_stage=value))


@pytest.mark.parametrize("value", ["2\n", "is\n", "4d\n", "T2"])
def test_t_stage_is_matched_whole(value: str) -> None:
    with pytest.raises(InvalidClinicalError, match=r"diagnoses\.0\.t_stage"):
        parse_clinical(_record(t_stage=value))


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\u200b", "\u202e"])
def test_control_characters_in_the_note_are_refused(char: str) -> None:
    with pytest.raises(InvalidClinicalError, match=r"note: .*control characters"):
        parse_clinical(_record(note=f"left breast{char}after surgery"))


def test_long_notes_are_refused_not_cut() -> None:
    parse_clinical(_record(note="a" * MAX_NOTE_CHARS))
    with pytest.raises(NoteTooLongError, match=r"^\[note_too_long\] note: 401 characters"):
        parse_clinical(_record(note="a" * (MAX_NOTE_CHARS + 1)))
    with pytest.raises(NoteTooLongError, match="65 words"):
        parse_clinical(_record(note="x " * 65))


@pytest.mark.parametrize(
    ("note", "sides"),
    [("Right breast, lumpectomy", ("right", "left")), ("RIGHT", ("right", "left"))],
)
def test_a_note_naming_another_side_is_refused(note: str, sides: tuple[str, str]) -> None:
    with pytest.raises(NoteContradictsFieldsError) as caught:
        parse_clinical(_record(note=note))
    assert caught.value.code == "note_contradicts_fields"
    assert all(s in caught.value.detail for s in sides)


@pytest.mark.parametrize("note", ["ypN0 after chemo", "cN2", "pN3c", "N1mi"])
def test_a_note_naming_another_n_stage_is_refused(note: str) -> None:
    with pytest.raises(NoteContradictsFieldsError, match="n_stage N1"):
        parse_clinical(_record(note=note))


@pytest.mark.parametrize(
    "note",
    ["left breast, pN1a", "N1, cT2, left side", "left-sided tumour, nodes N1b", "T2 N1 M0"],
)
def test_agreeing_notes_pass(note: str) -> None:
    assert parse_clinical(_record(note=note)).note == note


def test_bilateral_fields_allow_both_sides_in_the_note() -> None:
    body = _record(note="left N1, right N0")
    body["diagnoses"].append(
        {"side": "right", "surgery": "total_mastectomy", "t_stage": "1", "n_stage": "0"}
    )
    assert parse_clinical(body).note == "left N1, right N0"


class _CharTokenizer:
    """One token per character (digits in real tokenizers behave like this)."""

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[ord(c) for c in t] for t in texts]


def _engine() -> ContourEngine:
    context = SimpleNamespace(has_encoder=True, encoder=_CharTokenizer())
    predictor = SimpleNamespace(
        network=SimpleNamespace(alignment=object()), context=context, mirrors=False
    )
    return ContourEngine(predictor)  # type: ignore[arg-type]


def test_worker_refuses_a_note_over_the_token_limit() -> None:
    engine = _engine()
    engine.check_note("1" * MAX_NOTE_TOKENS)  # exactly the limit passes
    with pytest.raises(NoteTooLongError, match=f"{MAX_NOTE_TOKENS + 1} tokens"):
        engine.check_note("1" * (MAX_NOTE_TOKENS + 1))
