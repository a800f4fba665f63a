"""Every rule family of the phantom spec, followed by the shipped model on unseen phantoms.

Surgery x N stage (N1mi and the a/b/c suffixes) x side x bilateral, on CTs of both sites that
no training run saw (seeds far from the training cohorts). Measured on the structures the
model returns per side, inside the body, on the CT grid.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from model.inference import Prediction, Predictor
from model.lab.phantoms import generate_case
from model.lab.phantoms.case import PhantomCase
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery
from workers.model_loading import DEMO_CHECKPOINT

NODAL = ("axilla", "scf", "imn")
_LETTER = {Side.LEFT: "L", Side.RIGHT: "R"}


@cache
def _predictor() -> Predictor:
    return Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")


def _record(*diagnoses: tuple[Side, Surgery, str]) -> ClinicalRecord:
    return ClinicalRecord(
        diagnoses=tuple(
            Diagnosis(side=s, surgery=g, t_stage="2", n_stage=n) for s, g, n in diagnoses
        )
    )


@cache
def _case(site: str, seed: int, surgery: Surgery, bilateral: bool = False) -> PhantomCase:
    sides = (Side.LEFT, Side.RIGHT) if bilateral else (Side.LEFT,)
    record = _record(*((s, surgery, "1") for s in sides))
    return generate_case(f"{site}7{seed:03d}", site, 60_000 + seed, scale=0.25, clinical=record)


def _cc(pred: Prediction, case: PhantomCase, names: tuple[str, ...], side: str) -> float:
    voxel_cc = float(np.prod(case.grid.spacing)) / 1000.0
    return sum(
        float(mask.sum()) * voxel_cc
        for (n, s), mask in pred.structures.items()
        if n in names and s == side
    )


def _contour(case: PhantomCase, record: ClinicalRecord) -> Prediction:
    return _predictor().predict_record(case.volume, record)


@pytest.mark.parametrize("site", ["A", "B"])
@pytest.mark.parametrize("surgery", [Surgery.BREAST_CONSERVING, Surgery.TOTAL_MASTECTOMY])
def test_surgery_gives_breast_or_chest_wall(site: str, surgery: Surgery) -> None:
    case = _case(site, 1, surgery)
    pred = _contour(case, _record((Side.LEFT, surgery, "0")))
    wanted, other = ("breast", "chest_wall")
    if surgery is Surgery.TOTAL_MASTECTOMY:
        wanted, other = other, wanted
    assert _cc(pred, case, (wanted,), "L") > 20.0
    assert _cc(pred, case, (other,), "L") < 0.1 * _cc(pred, case, (wanted,), "L")


@pytest.mark.parametrize("site", ["A", "B"])
@pytest.mark.parametrize(
    ("n_stage", "nodal"),
    [
        ("0", False),
        ("1mi", False),
        ("1", True),
        ("1a", True),
        ("1b", True),
        ("1c", True),
        ("2", True),
        ("2a", True),
        ("3", True),
        ("3c", True),
    ],
)
def test_n_stage_decides_the_nodal_ctv(site: str, n_stage: str, nodal: bool) -> None:
    case = _case(site, 2, Surgery.BREAST_CONSERVING)
    reference = _cc(
        _contour(case, _record((Side.LEFT, Surgery.BREAST_CONSERVING, "1"))), case, NODAL, "L"
    )
    found = _cc(
        _contour(case, _record((Side.LEFT, Surgery.BREAST_CONSERVING, n_stage))), case, NODAL, "L"
    )
    assert reference > 10.0
    if nodal:
        assert found > 0.5 * reference
    else:
        assert found <= 0.05 * reference


@pytest.mark.parametrize("site", ["A", "B"])
@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT])
def test_the_named_side_holds_the_ctv(site: str, side: Side) -> None:
    case = _case(site, 3, Surgery.BREAST_CONSERVING)
    pred = _contour(case, _record((side, Surgery.BREAST_CONSERVING, "2")))
    here = _cc(pred, case, ("breast", *NODAL), _LETTER[side])
    there = _cc(
        pred, case, ("breast", *NODAL), _LETTER[Side.RIGHT if side is Side.LEFT else Side.LEFT]
    )
    assert here >= 0.95 * (here + there)


def _bilateral(n_left: str, n_right: str) -> tuple[PhantomCase, Prediction]:
    case = _case("A", 4, Surgery.BREAST_CONSERVING, bilateral=True)
    record = _record(
        (Side.LEFT, Surgery.BREAST_CONSERVING, n_left),
        (Side.RIGHT, Surgery.BREAST_CONSERVING, n_right),
    )
    return case, _contour(case, record)


def test_bilateral_notes_give_both_breasts() -> None:
    case, pred = _bilateral("1", "1")
    assert _cc(pred, case, ("breast",), "L") > 20.0 and _cc(pred, case, ("breast",), "R") > 20.0


@pytest.mark.parametrize(("n_left", "n_right"), [("1", "0"), ("0", "1"), ("1mi", "2")])
def test_bilateral_notes_follow_each_sides_n_stage(n_left: str, n_right: str) -> None:
    case, both = _bilateral("1", "1")
    assert _cc(both, case, NODAL, "L") > 10.0 and _cc(both, case, NODAL, "R") > 10.0
    case, pred = _bilateral(n_left, n_right)
    nodal = {"L": _cc(pred, case, NODAL, "L"), "R": _cc(pred, case, NODAL, "R")}
    positive = "L" if n_left not in ("0", "1mi") else "R"
    negative = "R" if positive == "L" else "L"
    assert nodal[positive] > 0.5 * _cc(both, case, NODAL, positive)
    assert nodal[negative] <= 0.05 * _cc(both, case, NODAL, negative)
    assert _cc(pred, case, ("breast",), "L") > 20.0 and _cc(pred, case, ("breast",), "R") > 20.0
