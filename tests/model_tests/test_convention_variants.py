"""The department's N-stage rule: counterfactual notes in training (``llmctv train
--convention-variants``) and the rule in the served version (:mod:`model.dataset.stage_rule`).

Labels are network-grid class maps ``(k, j, i)``: 1 breast, 2 chest wall, 3 axilla, 4 SCF,
5 IMN (the structure map's order). The department draws the IMN for N2-N3 only.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from model.contouring.attention import attention_findings
from model.dataset.prescription import Prescription
from model.dataset.stage_rule import StageRule
from model.dataset.structure_map import parse_structure_map
from model.errors import ConfigurationError
from model.lab.department import SITE_STRUCTURE_MAP
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery
from model.training.convention_variants import convention_variants
from model.training.sampling import TrainingCase, random_crop
from model.training.trainer import TrainConfig
from model.workflows import _stage_rule

SITE_RULE = {3: ("1", "2", "3"), 4: ("1", "2", "3"), 5: ("2", "3")}
ROI = (4, 6, 6)


def _case(case_id: str, note: str, classes: tuple[int, ...]) -> TrainingCase:
    label = np.zeros(ROI, dtype=np.uint8)
    for k, c in enumerate(classes):
        label[k, 1:5, 1:5] = c
    image = np.linspace(0, 1, label.size, dtype=np.float32).reshape(ROI)
    return TrainingCase(case_id, image, label, note, (6.0, 4.0, 4.0), group=f"ct-{case_id}")


def _classes(case: TrainingCase) -> set[int]:
    _, label = random_crop(case, ROI, np.random.default_rng(0), 0.0)
    return {int(c) for c in np.unique(label)} - {0}


def test_variants_follow_the_site_rule_and_never_invent_a_structure() -> None:
    """N2 -> N1 (without IMN) and N0 (no nodes); N1 -> N0 only (the IMN of N2 was never
    drawn); N0, N1mi and free text give nothing. The node-negative variant is written N0 and
    N1mi in turn. Variants share their CT's group."""
    note = "{}, cT2, breast conserving surgery, left side"
    cases = [
        _case("n2", note.format("N2a"), (1, 3, 4, 5)),
        _case("n1", note.format("N1"), (1, 3, 4)),
        _case("n0", note.format("N0"), (1,)),
        _case("mi", note.format("N1mi"), (1,)),
        _case("free", "left breast, four positive nodes", (1, 3, 4, 5)),
    ]
    variants = {v.case_id: v for v in convention_variants(cases, SITE_RULE)}
    assert set(variants) == {"n2~N0", "n2~N1", "n1~N1mi"}
    assert variants["n2~N1"].note == "N1, cT2, breast conserving surgery, left side"
    assert variants["n1~N1mi"].note == "N1mi, cT2, breast conserving surgery, left side"
    assert _classes(variants["n2~N1"]) == {1, 3, 4}
    assert _classes(variants["n2~N0"]) == {1}
    assert _classes(variants["n1~N1mi"]) == {1}
    assert _classes(cases[0]) == {1, 3, 4, 5}  # the case itself is untouched (shared arrays)
    assert variants["n2~N1"].label is cases[0].label
    assert {v.group for v in variants.values()} == {"ct-n2", "ct-n1"}
    # At the spec's rule (IMN for N1-N3) N2 and N1 have the same target: no N1 variant.
    spec = {3: ("1", "2", "3"), 4: ("1", "2", "3"), 5: ("1", "2", "3")}
    assert {v.case_id for v in convention_variants(cases, spec)} == {"n2~N0", "n1~N1mi"}


def test_a_variant_keeps_its_dropped_classes_through_a_worker_process(tmp_path: Path) -> None:
    """DataLoader workers get cases by pickling; a memory-mapped case pickles as its path,
    and the derived case must still drop its classes there."""
    case = _case("n2", "N2, cT2, breast conserving surgery, left side", (1, 3, 4, 5))
    source = tmp_path / "n2.npz"
    np.savez(source, image=case.image, label=case.label, meta=json.dumps({}))
    mapped = TrainingCase(case.case_id, case.image, case.label, case.note, case.spacing,
                          group=case.group, source=str(source))  # fmt: skip
    (variant,) = (v for v in convention_variants([mapped], SITE_RULE) if v.case_id.endswith("N1"))
    again = pickle.loads(pickle.dumps(variant))
    assert again.dropped_classes == (5,)
    assert _classes(again) == {1, 3, 4}


def test_the_rule_comes_from_the_map_and_refuses_what_contradicts_it() -> None:
    site_map = parse_structure_map(SITE_STRUCTURE_MAP)
    assert _stage_rule(site_map, TrainConfig()) == (
        (3, ("1", "2", "3")),
        (4, ("1", "2", "3")),
        (5, ("2", "3")),
    )
    with pytest.raises(ConfigurationError, match="need --structure-map"):
        _stage_rule(None, TrainConfig())
    with pytest.raises(ConfigurationError, match="--note-augment"):
        _stage_rule(site_map, TrainConfig(note_augment=0.5))


@pytest.mark.parametrize(
    ("value", "message"),
    [('["4"]', "distinct stages"), ("[]", "non-empty"), ('["2", "2"]', "distinct")],
)
def test_bad_n_stages_are_refused(value: str, message: str) -> None:
    text = SITE_STRUCTURE_MAP.replace('n_stages = ["2", "3"]', f"n_stages = {value}")
    with pytest.raises(ConfigurationError, match=message):
        parse_structure_map(text)
    breast = SITE_STRUCTURE_MAP.replace(
        'patterns = ["CTV Breast"]', 'patterns = ["CTV Breast"]\nn_stages = ["2"]'
    )
    with pytest.raises(ConfigurationError, match="only a nodal structure"):
        parse_structure_map(breast)


# --- the rule in the served version ---------------------------------------------------------------
def _record(*sides: tuple[str, str]) -> ClinicalRecord:
    return ClinicalRecord(
        diagnoses=tuple(
            Diagnosis(side=Side(s), surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage=n)
            for s, n in sides
        )
    )


def test_the_served_rule_removes_what_the_site_does_not_draw_and_says_so() -> None:
    """IMN drawn for an N1 side is removed (with its cc and why); the N2 side keeps its IMN;
    a map without n_stages has no rule; attention does not ask for the IMN of N1."""
    rule = StageRule.of_map(parse_structure_map(SITE_STRUCTURE_MAP))
    assert rule is not None and rule.stages == (("imn", ("2", "3")),)
    assert StageRule.of_map(parse_structure_map(SITE_STRUCTURE_MAP.replace(
        'n_stages = ["2", "3"]', ""))) is None  # fmt: skip
    shape = (4, 6, 6)
    blob = np.zeros(shape, dtype=bool)
    blob[1:3, 1:3, 1:3] = True  # 8 voxels
    structures = {(n, s): blob.copy() for n in ("breast", "axilla", "scf", "imn") for s in "LR"}
    record = _record(("left", "1"), ("right", "2a"))
    confidence = dict.fromkeys(structures, 0.9)
    prescription = Prescription.of_map(parse_structure_map(SITE_STRUCTURE_MAP))
    assert prescription.stage_rule == rule and prescription.nodal == {"axilla", "scf", "imn"}
    outcome = prescription.apply(structures, confidence, record, (5.0, 10.0, 10.0))  # 0.5 cc
    assert outcome is not None
    kept = outcome.structures
    assert set(structures) - set(kept) == {("imn", "L")} and set(outcome.confidence) == set(kept)
    assert outcome.removed_cc == {"site rule: imn L: N1, drawn for N2-N3": 4.0}
    assert outcome.union.sum() == 8
    both_n2_n3 = _record(("left", "3"), ("right", "2"))
    assert prescription.apply(structures, confidence, both_n2_n3, (5.0, 10.0, 10.0)) is None
    required = attention_findings(record, kept, None, 0.5, 1.0, rule=rule)
    assert not any("imn" in finding for finding in required)
    without_rule = attention_findings(record, kept, None, 0.5, 1.0)
    assert any("internal" in f or "imn" in f for f in without_rule)
