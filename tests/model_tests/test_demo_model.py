"""The shipped demo model follows the clinical note on phantoms it never saw.

The central claim, checked on ``checkpoints/demo``: on the same CT, a flipped side moves the
CTV to the newly named side, and an N0 note removes the nodal CTV that the N+ note adds.
The cohort's seed is not one the model was trained or validated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from model.inference import Predictor
from model.lab.perturbation import perturbation_study
from model.lab.phantoms import LATERALITY_FLIP, N_SWITCH, write_cohort


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cohort = tmp_path_factory.mktemp("demo") / "A"
    write_cohort(cohort, 4, "A", seed=909, scale=0.25)
    predictor = Predictor.from_checkpoint(REPO / "checkpoints" / "demo", device="cpu")
    return perturbation_study({"demo": predictor}, Path(cohort), split="unseen", seed=0)


def test_a_flipped_side_moves_the_ctv(study: dict[str, Any]) -> None:
    flips = study["summary"]["demo"][LATERALITY_FLIP]
    assert flips["n_cases"] >= 1
    assert flips["side_fraction_flipped"]["mean"] >= 0.9, flips


def test_an_n0_note_removes_the_nodal_ctv(study: dict[str, Any]) -> None:
    switches = [r for r in study["cases"] if r["kind"] == N_SWITCH]
    assert switches
    for row in switches:
        assert row["nodal_cc_node_positive"] > 20.0, row["original_note"]
        assert row["nodal_ratio"] < 0.25, (row["original_note"], row["perturbed_note"])
