"""Equivalent training notes: the target never changes, N1mi is drawn, clause order varies."""

from __future__ import annotations

import re

import numpy as np

from model.text.clinical import ClinicalRecord
from model.training.note_variants import (
    equivalent_notes,
    shuffled_clauses,
    stage_equivalent_note,
)

BILATERAL = (
    "N0, cT1c, breast conserving surgery, left side; N2a, cT3, total mastectomy surgery, right side"
)
_CLAUSE_N = re.compile(r"N(0|1mi|[123][abc]?), cT\S+, ([a-z ]+), (left|right) side")


def _clauses(note: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in _CLAUSE_N.finditer(note)]


def _node_positive(stage: str) -> bool:
    return stage not in ("0", "1mi")


def test_rewrites_keep_side_surgery_and_nodal_class() -> None:
    rng = np.random.default_rng(7)
    original = _clauses(BILATERAL)
    seen_negative = set()
    for _ in range(300):
        variant = stage_equivalent_note(BILATERAL, rng)
        clauses = _clauses(variant)
        assert len(clauses) == 2
        for (n0, surgery0, side0), (n1, surgery1, side1) in zip(original, clauses, strict=True):
            assert (surgery1, side1) == (surgery0, side0)
            assert _node_positive(n1) == _node_positive(n0), variant
        seen_negative.add(clauses[0][0])
    assert seen_negative == {"0", "1mi"}


def test_rewritten_template_notes_still_parse_as_the_same_rule() -> None:
    record = ClinicalRecord.model_validate(
        {
            "diagnoses": [
                {"side": "left", "surgery": "total_mastectomy", "t_stage": "2", "n_stage": "1mi"}
            ]
        }
    )
    note = record.prompt_text()
    rng = np.random.default_rng(0)
    for _ in range(50):
        variant = stage_equivalent_note(note, rng)
        ((n_stage, surgery, side),) = _clauses(variant)
        assert not _node_positive(n_stage)
        assert (surgery, side) == ("total mastectomy surgery", "left")


def test_free_text_and_zero_share_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    free = "Left breast, pT2 pN1a after lumpectomy"
    assert stage_equivalent_note(free, rng) == free
    notes = [BILATERAL, free]
    assert equivalent_notes(notes, 0.0, rng) is notes
    changed = [equivalent_notes([BILATERAL], 1.0, rng)[0] for _ in range(20)]
    assert any(c != BILATERAL for c in changed)


def test_bilateral_clauses_come_in_both_orders_with_their_own_stage() -> None:
    rng = np.random.default_rng(3)
    orders = {
        tuple(side for _, _, side in _clauses(shuffled_clauses(BILATERAL, rng))) for _ in range(40)
    }
    assert orders == {("left", "right"), ("right", "left")}
    for _ in range(40):
        by_side = {side: n for n, _, side in _clauses(equivalent_notes([BILATERAL], 1.0, rng)[0])}
        assert not _node_positive(by_side["left"]) and _node_positive(by_side["right"])
