"""Experiments: perturbation measures, the Fig. 5 study, the report and its figures."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.dicom.rtstruct.reader import RoiRule
from model.errors import ConfigurationError, DatasetError
from model.imaging.geometry import Grid, Volume
from model.inference import Prediction, Predictor
from model.lab.experiment_runs import register, run
from model.lab.experiments import (
    SYNTHETIC_STATEMENT,
    text_dependent_breakdown,
    training_summary,
    write_experiment_report,
)
from model.lab.perturbation import (
    iter_cohort,
    nodal_ratio,
    perturbation_study,
    side_fraction,
    volume_in_region_cc,
)
from model.lab.phantoms import (
    LATERALITY_FLIP,
    N_SWITCH,
    eligible_perturbations,
    perturb,
    write_cohort,
)
from model.network.checkpoint import save_checkpoint
from model.network.config import preset
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.text.clinical import Side
from model.text.encoders import tiny_llama
from model.workflows import evaluate_cases

META = {
    "text_encoder_name": "tiny-llama",
    "preprocessing": {"target_spacing": [6.0, 8.0, 8.0], "hu_window": [-1000.0, 1000.0]},
}
# x of column i is origin_x + 10 * i: columns 0-4 lie at x = -50..-10 (right), 5 at x = 0,
# 6-10 at x = +10..+50 (the patient's left, LPS +x).
GRID = Grid(shape=(2, 3, 11), origin=(-50.0, 0.0, 0.0), spacing=(2.0, 5.0, 10.0))


# --- measures on hand-made masks ---------------------------------------------------------------
def test_side_fraction_of_a_mask_on_the_left() -> None:
    mask = np.zeros(GRID.shape, dtype=bool)
    mask[:, :, 7:] = True  # x = +20..+50: the patient's left
    assert side_fraction(mask, GRID, Side.LEFT, 0.0) == 1.0
    assert side_fraction(mask, GRID, Side.RIGHT, 0.0) == 0.0


def test_side_fraction_splits_at_the_midline_and_skips_voxels_on_it() -> None:
    mask = np.zeros(GRID.shape, dtype=bool)
    mask[0, 0, 3:8] = True  # x = -20, -10, 0, +10, +20
    assert side_fraction(mask, GRID, Side.LEFT, 0.0) == pytest.approx(2 / 5)
    assert side_fraction(mask, GRID, Side.RIGHT, 0.0) == pytest.approx(2 / 5)
    # A midline at x = +15 (e.g. a shifted body centre) moves three voxels to the right.
    assert side_fraction(mask, GRID, Side.RIGHT, 15.0) == pytest.approx(4 / 5)


def test_side_fraction_of_an_empty_mask_is_undefined_and_shape_is_checked() -> None:
    assert math.isnan(side_fraction(np.zeros(GRID.shape, bool), GRID, Side.LEFT, 0.0))
    with pytest.raises(ConfigurationError):
        side_fraction(np.zeros((2, 3, 10), bool), GRID, Side.LEFT, 0.0)


def test_nodal_volume_counts_only_the_region() -> None:
    voxel_cc = 2.0 * 5.0 * 10.0 / 1000.0
    region = np.zeros(GRID.shape, dtype=bool)
    region[0, :, :2] = True  # 6 voxels
    mask = np.zeros(GRID.shape, dtype=bool)
    mask[0, 0, :] = True  # 11 voxels, 2 of them in the region
    assert volume_in_region_cc(mask, region, GRID) == pytest.approx(2 * voxel_cc)
    assert volume_in_region_cc(region, region, GRID) == pytest.approx(6 * voxel_cc)
    assert volume_in_region_cc(np.zeros_like(mask), region, GRID) == 0.0


def test_nodal_ratio() -> None:
    assert nodal_ratio(1.0, 40.0) == pytest.approx(0.025)
    assert nodal_ratio(40.0, 40.0) == 1.0
    assert math.isnan(nodal_ratio(3.0, 0.0))


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms") / "A"
    write_cohort(out, 3, "A", seed=2, scale=0.125)  # N+ left, N0 right, N+ left
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    cfg = preset("tiny")
    ctx = PromptContext(cfg, tiny_llama()).eval()
    save_checkpoint(root / "mm", ContourNet(cfg).eval(), ctx, text_encoder=ctx.identity, meta=META)
    vision = ContourNet(preset("tiny", multimodal=False)).eval()
    save_checkpoint(root / "vision", vision, None, text_encoder=None, meta=META)
    return {"multimodal": root / "mm", "vision": root / "vision"}


def _digest(volume: Volume) -> str:
    return hashlib.sha256(np.ascontiguousarray(volume.array).tobytes()).hexdigest()


class _TablePredictor(Predictor):
    """Returns a stored mask per (CT, note); records every CT it is given."""

    def __init__(self, table: dict[tuple[str, str], np.ndarray], follow_text: bool) -> None:
        self.network = SimpleNamespace(alignment=object())  # type: ignore[assignment]
        self.table = table
        self.follow_text = follow_text
        self.seen: list[tuple[str, str]] = []

    def predict(self, volume: Volume, note: str | None = None, **_: Any) -> Prediction:
        key = (_digest(volume), note or "")
        self.seen.append(key)
        mask = self.table[key] if self.follow_text else self.table[(key[0], "original")]
        return Prediction(mask, mask.astype(np.float32))


@pytest.fixture(scope="module")
def truth_table(cohort: Path) -> dict[tuple[str, str], np.ndarray]:
    """Ground-truth CTV of every (CT digest, note) the study can ask for."""
    table = {}
    for case in iter_cohort(cohort):
        digest = _digest(case.volume)
        table[(digest, case.clinical.prompt_text())] = case.masks["CTV"]
        table[(digest, "original")] = case.masks["CTV"]
        for kind in eligible_perturbations(case.clinical):
            other = perturb(case, kind)
            table[(digest, other.clinical.prompt_text())] = other.masks["CTV"]
    return table


# --- the study with exact and with text-blind predictions ----------------------------------------
def test_a_text_following_oracle_meets_both_targets_on_the_same_ct(
    cohort: Path, truth_table: dict[tuple[str, str], np.ndarray]
) -> None:
    oracle = _TablePredictor(truth_table, follow_text=True)
    study = perturbation_study({"oracle": oracle}, cohort, split="internal")
    rows = study["cases"]
    assert {r["kind"] for r in rows} == {LATERALITY_FLIP, N_SWITCH} and len(rows) == 6
    assert all(r["meets_target"] for r in rows)
    for r in rows:
        if r["kind"] == LATERALITY_FLIP:
            assert r["side_fraction_original"] == 1.0 and r["side_fraction_flipped"] == 1.0
            assert r["dice_original"] == 1.0 and r["dice_perturbed"] == 1.0
        else:
            # The breast CTV may overlap the nodal region: a perfect model reaches the floor.
            assert r["nodal_ratio"] == pytest.approx(r["nodal_ratio_truth"])
            assert r["nodal_ratio_truth"] < 0.05
            assert r["nodal_cc_node_positive"] == pytest.approx(r["nodal_region_cc"])
    # Each case was contoured on one CT only, whatever the note.
    per_case = {}
    for digest, note in oracle.seen:
        per_case.setdefault(digest, set()).add(note)
    assert len(per_case) == 3 and all(len(notes) == 3 for notes in per_case.values())
    summary = study["summary"]["oracle"]
    assert summary[LATERALITY_FLIP]["fraction_meeting"] == 1.0
    assert summary[N_SWITCH]["nodal_ratio"]["mean"] < 0.05


def test_a_text_blind_model_misses_both_targets(
    cohort: Path, truth_table: dict[tuple[str, str], np.ndarray]
) -> None:
    blind = _TablePredictor(truth_table, follow_text=False)
    study = perturbation_study({"blind": blind}, cohort)
    rows = study["cases"]
    assert not any(r["meets_target"] for r in rows)
    flips = [r for r in rows if r["kind"] == LATERALITY_FLIP]
    assert all(r["side_fraction_flipped"] == 0.0 for r in flips)
    switches = [r for r in rows if r["kind"] == N_SWITCH]
    # The same mask for both notes: ratio 1, or undefined when it has no nodal volume at all.
    assert all(r["nodal_ratio"] == 1.0 or math.isnan(r["nodal_ratio"]) for r in switches)
    assert study["summary"]["blind"][N_SWITCH]["cases_meeting"] == 0


def test_a_cohort_index_that_does_not_match_the_generator_is_refused(
    cohort: Path, tmp_path: Path
) -> None:
    doc = json.loads((cohort / "cohort.json").read_text())
    doc["cases"][0]["prompt"] = "N3, cT4, total mastectomy surgery, left side"
    (tmp_path / "cohort.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError):
        list(iter_cohort(tmp_path))


# --- real (untrained) checkpoints: study, report and figures -----------------------------------
def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG" and image.size[0] > 100


def test_study_and_report_with_tiny_checkpoints(
    cohort: Path, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    predictors = {n: Predictor.from_checkpoint(p, device="cpu") for n, p in checkpoints.items()}
    study = perturbation_study(
        predictors,
        cohort,
        split="internal",
        overlay_dir=tmp_path / "report" / "figures",
        max_overlays=1,
    )
    assert study["models"] == {"multimodal": "multimodal", "vision": "vision-only"}
    assert len(study["cases"]) == 12  # 2 models x 3 cases x 2 kinds
    vision = [r for r in study["cases"] if r["model"] == "vision"]
    assert all(
        r["nodal_ratio"] in (1.0,) or math.isnan(r["nodal_ratio"])
        for r in vision
        if r["kind"] == N_SWITCH
    ), "vision-only ignores the note"
    table1 = {"internal": evaluate_cases(predictors, cohort, RoiRule(include=(r"^ctv$",)))}
    breakdown = text_dependent_breakdown(table1["internal"], kinds=study["models"])
    assert breakdown["groups"]["N+ (N1-N3)"]["vision"]["n"] == 2
    assert breakdown["paired"]["N0 / N1mi"]["multimodal - vision"]["n"] == 1

    out = tmp_path / "report"
    tuning = {"Table 4a: tuning modes": table1}
    text = {
        "Table 4a: tuning modes": {
            "perturbation": study,
            "training": {"multimodal": "500 steps x batch 2, lr 0.001, tuning multi_prompt"},
        }
    }
    json_path, md_path = write_experiment_report(out, table1, study, tuning, extra_text=text)
    doc = json.loads(json_path.read_text())
    assert doc["synthetic_data"] == SYNTHETIC_STATEMENT
    assert set(doc["table1"]["internal"]) == {"multimodal", "vision"}
    rows = doc["perturbation"]["cases"]
    assert {"side_fraction_flipped", "dice_perturbed"} <= set(rows[0]) | set(rows[1])
    assert any("nodal_ratio" in r and "nodal_cc_node_positive" in r for r in rows)
    assert doc["ran"]["Table 3: data efficiency"] == "not run"
    following = doc["extra_text_following"]["Table 4a: tuning modes"]
    assert set(following["summary"]) == {"multimodal", "vision"}
    statuses = {t["status"] for t in doc["targets"]}
    assert statuses <= {"PASS", "MISS", "NOT MEASURED"}
    assert any(t["target"].startswith("Multimodal Dice") for t in doc["targets"])

    md = md_path.read_text()
    assert "SYNTHETIC" in md and "No patient data" in md
    for needle in (
        "Multimodal Dice >= 0.85 (multimodal, internal)",
        "Vision-only clearly below multimodal on N+ cases (multimodal - vision, internal)",
        "Vision-only clearly below multimodal on perturbed notes",
        "of CTV voxels on the newly named side after a laterality flip (multimodal)",
        "shrinks the nodal-region volume to < 5% of its N+ value (multimodal)",
        "Table 3: data efficiency: not run",
        "Table 4a: tuning modes: ran: multimodal, vision",
        "Table 4a: tuning modes — does the model follow the text?",
        "| 500 steps x batch 2, lr 0.001, tuning multi_prompt |",
    ):
        assert needle in md, needle
    figures = doc["figures"]
    assert "figures/summary.png" in figures and len(figures) == 3  # summary + 1 per kind
    for rel in figures:
        assert f"]({rel})" in md and _is_png(out / rel)


# --- command line ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmctv")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_the_sub_command_parses_its_options_and_refuses_bad_ones(tmp_path: Path) -> None:
    args = _parser().parse_args(
        [
            "experiments",
            "--model",
            "mm=ck/mm",
            "--model",
            "vision=ck/v",
            "--internal",
            "A",
            "--out",
            str(tmp_path),
            "--max-overlays",
            "1",
            "--data-efficiency",
            "40%=ck/40",
        ]
    )
    assert args.func is run and args.model == ["mm=ck/mm", "vision=ck/v"]
    assert args.internal == Path("A") and args.external is None and args.seed == 0
    no_split = _parser().parse_args(["experiments", "--model", "mm=x", "--out", str(tmp_path)])
    with pytest.raises(ConfigurationError, match="--internal"):
        run(no_split)
    bad = _parser().parse_args(
        ["experiments", "--model", "mm", "--internal", "A", "--out", str(tmp_path)]
    )
    with pytest.raises(ConfigurationError, match="NAME=CHECKPOINT"):
        run(bad)


def test_training_summary_states_the_budget_of_a_row() -> None:
    config = {
        "training": {
            "steps_per_epoch": 20,
            "epoch": 25,
            "batch_size": 2,
            "lr": 0.001,
            "pair_fraction": 0.5,
        },
        "split": {"train": ["a", "b", "c"]},
        "network": {"tuning": "lora"},
        "init_from": {"checkpoint": "out/x/best", "weights_digest": "d"},
    }
    line = training_summary(config)
    assert line == (
        "500 steps x batch 2, lr 0.001, 3 training cases, tuning lora, paired notes 50%, "
        "warm start from out/x/best"
    )


def test_rows_are_cached_and_reused_for_the_report(
    cohort: Path, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    rows = ["--data-efficiency", f"40%={checkpoints['multimodal']}"]
    rows += ["--tuning-modes", f"none={checkpoints['vision']}"]
    base = ["experiments", "--internal", str(cohort), "--device", "cpu", "--seed", "0"]
    args = _parser().parse_args([*base, *rows, "--out", str(tmp_path / "x"), "--rows-only"])
    with pytest.raises(ConfigurationError, match="--cache"):
        run(args)
    args.cache = cache
    assert run(args) == 0
    assert len(list(cache.glob("*.json"))) == 4, "2 rows x (table + perturbation)"
    assert not (tmp_path / "x" / "report.md").exists(), "rows only: no report"

    from model.lab import experiment_runs

    real = experiment_runs._predictors

    def only_main_models(specs: dict[str, Path], a: argparse.Namespace) -> dict[str, Any]:
        assert set(specs) == {"mm"}, f"cached rows were evaluated again: {set(specs)}"
        return real(specs, a)

    monkeypatch.setattr(experiment_runs, "_predictors", only_main_models)
    out = tmp_path / "report"
    main = ["--model", f"mm={checkpoints['multimodal']}", "--max-overlays", "0"]
    argv = [*base, *main, *rows, "--cache", str(cache), "--out", str(out)]
    assert run(_parser().parse_args(argv)) == 0
    doc = json.loads((out / "report.json").read_text())
    assert set(doc["extra_tables"]["Table 3: data efficiency"]["internal"]) == {"40%"}
    following = doc["extra_text_following"]["Table 4a: tuning modes"]
    assert set(following["summary"]) == {"none"}
    assert following["training"]["none"] == "steps unknown, lr ?, vision-only"
