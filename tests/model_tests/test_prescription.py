"""What the note calls for (:mod:`model.dataset.prescription`): the rule itself, and the served
model on a CT and a note where the network draws more than the note asks for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rtstruct_factories import LUNG1_CT

from model.dataset.prescription import NOTE_RULE, SPEC_PRESCRIPTION, Prescription
from model.dataset.structure_map import parse_structure_map
from model.dicom.series import read_ct_series
from model.inference import Predictor
from model.lab.department import SITE_STRUCTURE_MAP
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery

REPO = Path(__file__).resolve().parents[2]
SHAPE = (4, 6, 6)


def _record(*clauses: tuple[str, Surgery, str]) -> ClinicalRecord:
    return ClinicalRecord(
        diagnoses=tuple(
            Diagnosis(side=Side(side), surgery=surgery, t_stage="2", n_stage=n)
            for side, surgery, n in clauses
        )
    )


def _blobs(*keys: tuple[str, str]) -> dict[tuple[str, str], np.ndarray]:
    """One distinct 2-voxel blob per key, so that the union tells which were kept."""
    masks = {}
    for index, key in enumerate(keys):
        mask = np.zeros(SHAPE, dtype=bool)
        mask.flat[2 * index : 2 * index + 2] = True
        masks[key] = mask
    return masks


def test_a_left_breast_conserving_n0_note_keeps_only_the_left_breast() -> None:
    """Other side, other surgery's structure and nodes for N0 are removed, each with its cc
    and reason; the union and the confidence follow what is kept."""
    keys = [("breast", "L"), ("breast", "R"), ("chest_wall", "L"), ("axilla", "L"), ("imn", "R")]
    structures = _blobs(*keys)
    confidence = dict.fromkeys(keys, 0.9)
    record = _record(("left", Surgery.BREAST_CONSERVING, "0"))
    outcome = SPEC_PRESCRIPTION.apply(structures, confidence, record, (5.0, 10.0, 10.0))
    assert outcome is not None
    assert set(outcome.structures) == {("breast", "L")}
    assert set(outcome.confidence) == {("breast", "L")}
    assert np.array_equal(outcome.union, structures[("breast", "L")])
    assert outcome.removed_cc == {
        f"{NOTE_RULE}: breast R: the note names no right side": 1.0,
        f"{NOTE_RULE}: chest_wall L: breast-conserving surgery (breast CTV)": 1.0,
        f"{NOTE_RULE}: axilla L: N0, no nodal CTV": 1.0,
        f"{NOTE_RULE}: imn R: the note names no right side": 1.0,
    }


def test_mastectomy_n1_keeps_chest_wall_and_nodes_and_n1mi_is_node_negative() -> None:
    keys = [("breast", "R"), ("chest_wall", "R"), ("axilla", "R"), ("scf", "R"), ("imn", "R")]
    structures = _blobs(*keys)
    record = _record(("right", Surgery.TOTAL_MASTECTOMY, "1"))
    outcome = SPEC_PRESCRIPTION.apply(structures, {}, record, (1.0, 1.0, 1.0))
    assert outcome is not None and set(outcome.structures) == set(keys) - {("breast", "R")}
    n1mi = _record(("right", Surgery.TOTAL_MASTECTOMY, "1mi"))
    outcome = SPEC_PRESCRIPTION.apply(structures, {}, n1mi, (1.0, 1.0, 1.0))
    assert outcome is not None and set(outcome.structures) == {("chest_wall", "R")}


def test_what_the_note_calls_for_is_left_alone() -> None:
    """A bilateral record that calls for everything drawn: nothing removed (``None``); a
    single-CTV network's entries are never judged."""
    structures = _blobs(("breast", "L"), ("axilla", "L"), ("chest_wall", "R"))
    record = _record(
        ("left", Surgery.BREAST_CONSERVING, "2a"), ("right", Surgery.TOTAL_MASTECTOMY, "0")
    )
    assert SPEC_PRESCRIPTION.apply(structures, {}, record, (1.0, 1.0, 1.0)) is None
    ctv = _blobs(("ctv", "L"), ("ctv", "R"))
    left_only = _record(("left", Surgery.BREAST_CONSERVING, "0"))
    assert SPEC_PRESCRIPTION.apply(ctv, {}, left_only, (1.0, 1.0, 1.0)) is None


def test_a_site_structure_is_judged_by_side_and_by_its_map() -> None:
    """A department's own class: nodal when its map says so (removed for N0), kept for N1 on
    the named side, removed on the other side; the map's N-stage rule is part of it."""
    extra = '\n[structures.interpectoral]\npatterns = ["CTVn IP"]\nnodal = true\n'
    prescription = Prescription.of_map(parse_structure_map(SITE_STRUCTURE_MAP + extra))
    assert prescription.nodal == {"axilla", "scf", "imn", "interpectoral"}
    structures = _blobs(("interpectoral", "L"), ("interpectoral", "R"), ("imn", "L"))
    n0 = _record(("left", Surgery.BREAST_CONSERVING, "0"))
    outcome = prescription.apply(structures, {}, n0, (1.0, 1.0, 1.0))
    assert outcome is not None and not outcome.structures
    n1 = _record(("left", Surgery.BREAST_CONSERVING, "1"))
    outcome = prescription.apply(structures, {}, n1, (1.0, 1.0, 1.0))
    assert outcome is not None
    assert set(outcome.structures) == {("interpectoral", "L")}
    assert set(outcome.removed_cc) == {
        f"{NOTE_RULE}: interpectoral R: the note names no right side",
        "site rule: imn L: N1, drawn for N2-N3",
    }


@pytest.mark.skipif(not LUNG1_CT.is_dir(), reason=f"shared data absent: {LUNG1_CT}")
def test_the_served_model_on_a_real_ct_draws_only_what_the_note_calls_for() -> None:
    """The shipped model on the real LUNG1 CT (a man: no breast) with a left breast-conserving
    N1 note draws right-sided pieces and a left chest wall (measured: the network alone keeps
    them); as served, only left breast and left nodes remain, and the removals are reported."""
    volume = read_ct_series(LUNG1_CT).volume
    predictor = Predictor.from_checkpoint(REPO / "checkpoints" / "demo", device="cpu")
    record = _record(("left", Surgery.BREAST_CONSERVING, "1"))
    served = predictor.predict_record(volume, record)
    allowed = {("breast", "L"), ("axilla", "L"), ("scf", "L"), ("imn", "L")}
    print("\nLUNG1 left BCS N1, removed by the note rule:", json.dumps(served.rule_removed_cc))
    assert set(served.structures) <= allowed
    assert served.rule_removed_cc and all(k.startswith(NOTE_RULE) for k in served.rule_removed_cc)
    union = np.zeros(volume.grid.shape, dtype=bool)
    for mask in served.structures.values():
        union |= mask
    assert np.array_equal(served.mask, union)
    alone = predictor.predict_record(volume, record, prescribed=False)  # the network alone
    assert set(alone.structures) - allowed, "the network alone draws more than the note asks"
    print("the network alone:", sorted(set(alone.structures) - allowed), file=sys.stderr)
