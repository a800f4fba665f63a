"""The commissioning report: surface metrics, acceptance, statistics, the command end to end.

Surface metrics are checked on shapes with known answers and against an independent
implementation (MONAI's ``compute_surface_dice``, ``compute_average_surface_distance`` and
``compute_hausdorff_distance``); the command runs on tiny phantoms with an oracle, a degraded
model and tiny real checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from PIL import Image
from scipy import ndimage

from model import commission
from model.dataset.structure_map import load_structure_map
from model.dataset.structure_targets import map_meta
from model.dicom.rtstruct.reader import RoiRule
from model.errors import ConfigurationError
from model.evaluation.commissioning import (
    CTV,
    Acceptance,
    Bootstrap,
    CaseResult,
    MetricConfig,
    categories_of,
    load_acceptance,
    parse_acceptance,
    structure_metrics,
    summarize_commissioning,
    worst_cases,
)
from model.evaluation.commissioning_report import json_safe, write_commissioning_report
from model.evaluation.metrics import hd95
from model.evaluation.surface import (
    added_path_length,
    face_distances,
    mean_surface_distance,
    path_lengths,
    surface_dice,
    surface_dices,
)
from model.imaging.geometry import Volume
from model.inference import Prediction, Predictor
from model.lab.phantoms import write_cohort
from model.network.checkpoint import save_checkpoint
from model.network.config import preset
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.network.structures import BREAST_STRUCTURES, PHANTOM_ROI_PATTERNS
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery
from model.text.encoders import tiny_llama
from model.training.dataset import TargetRule, iter_cases, load_case

BoolArray = npt.NDArray[np.bool_]
#: Largest |ours - MONAI| of one surface Dice on the random blobs below: the two surface
#: samplings differ (exact distances between voxel faces here; marching-cubes surfels between
#: voxel corners in MONAI's use_subvoxels=True, after DeepMind's surface-distance). Measured
#: 0.0135 at most over 24 blob pairs (mean 0.006).
SDSC_TOLERANCE = 0.02


def _ball(shape: tuple[int, int, int], spacing: tuple[float, ...], radius: float) -> BoolArray:
    """A ball of ``radius`` mm about the grid centre (in mm)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    k, j, i = np.meshgrid(*axes, indexing="ij")
    return np.asarray(k**2 + j**2 + i**2 <= radius**2)


def _blob(seed: int, shape: tuple[int, int, int] = (16, 40, 40)) -> BoolArray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 3.0)
    return np.asarray(field > np.quantile(field, 0.6))


def _tensor(mask: BoolArray) -> torch.Tensor:
    return torch.from_numpy(mask[None, None].astype(np.float32))


# --- surface metrics on shapes with known answers ------------------------------------------------
def test_concentric_spheres_are_the_gap_apart() -> None:
    spacing = (1.0, 1.0, 1.0)
    inner = _ball((40, 40, 40), spacing, 10.0)
    outer = _ball((40, 40, 40), spacing, 14.0)
    assert mean_surface_distance(inner, outer, spacing) == pytest.approx(4.0, abs=0.5)
    assert hd95(inner, outer, spacing) == pytest.approx(4.0, abs=1.0)
    below, above = surface_dices(inner, outer, spacing, (2.0, 6.0))
    assert below < 0.05
    assert above == 1.0
    assert surface_dice(inner, outer, spacing, 2.0) == below


def test_shifted_cubes_have_exact_face_distances() -> None:
    """Two 10-voxel cubes 3 voxels apart along i (1 mm voxels).

    The far end faces of each cube are 3 mm from the other cube (100 faces each), and so are
    the 4 x 4 central faces of the end face that lies inside the other cube; every other face
    is nearer. 232 of 1200 faces (1 mm² each) lie exactly 3 mm away.
    """
    spacing = (1.0, 1.0, 1.0)
    a = np.zeros((14, 14, 18), dtype=bool)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = True
    b[2:12, 2:12, 5:15] = True
    distances = face_distances(a, b, spacing)
    assert distances.pred_area.sum() == distances.truth_area.sum() == 600.0
    assert distances.pred_to_truth.max() == distances.truth_to_pred.max() == 3.0
    at_three = np.count_nonzero(distances.pred_to_truth == 3.0)
    assert at_three + np.count_nonzero(distances.truth_to_pred == 3.0) == 232
    assert surface_dice(a, b, spacing, 3.0) == 1.0
    assert surface_dice(a, b, spacing, 2.99) == pytest.approx(968 / 1200)
    assert surface_dice(a, a, spacing, 0.0) == 1.0


def test_a_slice_added_on_top_is_measured_to_the_faces() -> None:
    """A 4-slice box (3 mm slices, 1 mm pixels) and the same box one slice taller.

    The extra slice's side faces (120 mm²) lie 1.5 mm from the reference (half a slice, to the
    edge of its top face), not 1.58 mm (to the nearest face centre); the reference top face is
    as far from the predicted walls as from the nearest box wall in plane, at most 3 mm.
    Total area 800 + 680 mm². Within 1.45 mm: 580 + 616 mm²; within 1.55 mm: 700 + 644 mm².
    """
    truth = np.zeros((8, 14, 14), dtype=bool)
    truth[2:6, 2:12, 2:12] = True
    pred = truth.copy()
    pred[6, 2:12, 2:12] = True
    spacing = (3.0, 1.0, 1.0)
    assert surface_dice(pred, truth, spacing, 1.45) == pytest.approx(1196 / 1480)
    assert surface_dice(pred, truth, spacing, 1.55) == pytest.approx(1344 / 1480)
    assert surface_dice(pred, truth, spacing, 3.0) == 1.0


def test_a_shortcut_tolerance_gives_the_exact_surface_dice() -> None:
    """Distances made exact only near the tolerances decide like exact ones."""
    a, b = _blob(3), _blob(4)
    spacing = (3.0, 1.0, 0.8)
    exact = face_distances(a, b, spacing)
    quick = face_distances(a, b, spacing, tolerances_mm=(1.0, 4.0))
    for tolerance in (1.0, 4.0):
        assert quick.surface_dice(tolerance) == exact.surface_dice(tolerance)
    with pytest.raises(ConfigurationError):
        quick.surface_dice(2.0)


def test_empty_masks_have_documented_values() -> None:
    spacing = (2.0, 1.0, 1.0)
    empty = np.zeros((4, 8, 8), dtype=bool)
    full = empty.copy()
    full[1:3, 2:6, 2:6] = True
    both = structure_metrics(empty, empty, spacing)
    assert both.values == {
        "dice": 1.0,
        "surface_dice_2mm": 1.0,
        "surface_dice_3mm": 1.0,
        "msd_mm": 0.0,
        "hd95_mm": 0.0,
        "apl_mm": 0.0,
    }
    assert not both.evaluated
    missed = structure_metrics(empty, full, spacing)
    spurious = structure_metrics(full, empty, spacing)
    for result in (missed, spurious):
        assert result.evaluated
        assert result.values["dice"] == 0.0 and result.values["surface_dice_3mm"] == 0.0
        assert math.isinf(result.values["msd_mm"]) and math.isinf(result.values["hd95_mm"])
    assert missed.reference_path_mm > 0
    assert missed.values["apl_mm"] == pytest.approx(missed.reference_path_mm)
    assert spurious.values["apl_mm"] == 0.0
    assert missed.reference_cc == pytest.approx(2 * 4 * 4 * 2.0 / 1000)


def test_added_path_length_on_squares_and_discs() -> None:
    spacing = (3.0, 0.5, 0.5)
    square = np.zeros((3, 30, 30), dtype=bool)
    square[:, 5:25, 5:25] = True
    # Marching squares: the 20-pixel square with its corners cut by half-pixel diagonals.
    per_slice = (4 * 20 - 4 * (1 - math.sqrt(0.5))) * 0.5
    assert added_path_length(square, square, spacing) == 0.0
    assert added_path_length(np.zeros_like(square), square, spacing) == pytest.approx(3 * per_slice)
    half = square.copy()
    half[0] = False
    assert added_path_length(half, square, spacing) == pytest.approx(per_slice)
    assert added_path_length(square, np.zeros_like(square), spacing) == 0.0  # deleting is free

    # One pixel (0.5 mm) larger all round: the sides are 0.5 mm away, the cut corners 0.71 mm.
    grown = np.zeros_like(square)
    grown[:, 4:26, 4:26] = True
    assert added_path_length(grown, square, spacing, 0.4) == pytest.approx(3 * per_slice)
    assert added_path_length(grown, square, spacing, 0.75) == 0.0

    shape, pixel = (2, 80, 80), (3.0, 1.0, 1.0)
    disc = np.broadcast_to(_ball((1, 80, 80), pixel, 20.0), shape)
    wider = np.broadcast_to(_ball((1, 80, 80), pixel, 23.0), shape)
    lengths = path_lengths(np.zeros(shape, bool), disc, pixel)
    circle = 2 * 2 * math.pi * 20.0
    assert circle <= lengths.reference_mm <= 1.07 * circle  # staircase polygons run ~5% long
    assert lengths.added_mm == lengths.reference_mm
    assert added_path_length(wider, disc, pixel, 2.0) == pytest.approx(lengths.reference_mm)
    assert added_path_length(wider, disc, pixel, 4.0) == 0.0


def test_metric_arguments_are_checked() -> None:
    a = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(ConfigurationError):
        surface_dice(a, a[:1], (1.0, 1.0, 1.0), 2.0)
    with pytest.raises(ConfigurationError):
        surface_dice(a, a, (1.0, 0.0, 1.0), 2.0)
    with pytest.raises(ConfigurationError):
        surface_dice(a, a, (1.0, 1.0, 1.0), -1.0)
    with pytest.raises(ConfigurationError):
        added_path_length(a, a, (1.0, 1.0, 1.0), math.nan)
    with pytest.raises(ConfigurationError):
        face_distances(a, np.zeros_like(a), (1.0, 1.0, 1.0))


# --- against MONAI -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_surface_metrics_agree_with_monai(seed: int) -> None:
    spacing = [(1.0, 1.0, 1.0), (3.0, 1.0, 0.8), (2.5, 0.9, 0.9)][seed % 3]
    truth = _blob(seed)
    grown = ndimage.binary_dilation(truth, iterations=1)
    pred = grown if seed % 2 else _blob(seed + 100) | truth
    ours = surface_dices(pred, truth, spacing, (2.0, 3.0))
    for tolerance, value in zip((2.0, 3.0), ours, strict=True):
        reference = compute_surface_dice(
            _tensor(pred),
            _tensor(truth),
            [tolerance],
            include_background=True,
            spacing=list(spacing),
            use_subvoxels=True,
        )
        assert value == pytest.approx(float(reference.item()), abs=SDSC_TOLERANCE)
    asd = compute_average_surface_distance(
        _tensor(pred),
        _tensor(truth),
        include_background=True,
        symmetric=True,
        spacing=list(spacing),
    )
    assert mean_surface_distance(pred, truth, spacing) == pytest.approx(
        float(asd.item()), rel=1e-5, abs=1e-5
    )
    hd = compute_hausdorff_distance(
        _tensor(pred), _tensor(truth), include_background=True, percentile=95, spacing=list(spacing)
    )
    assert hd95(pred, truth, spacing, pooling="max") == pytest.approx(float(hd.item()), rel=1e-5)


# --- acceptance ----------------------------------------------------------------------------------
def test_acceptance_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[acceptance]\nstatistic = "ci"\nmin_cases = 2\nsurface_dice_3mm = 0.9\nhd95_mm = 12\n'
        "[acceptance.imn]\nsurface_dice_3mm = 0.8\napl_mm = 500\n"
        "[metrics]\nsurface_dice_tolerances_mm = [1.5, 3]\napl_tolerance_mm = 2.0\n"
    )
    acceptance = load_acceptance(path)
    assert acceptance.statistic == "ci" and acceptance.min_cases == 2
    assert acceptance.criteria("breast") == {"surface_dice_3mm": 0.9, "hd95_mm": 12.0}
    assert acceptance.criteria("imn") == {
        "surface_dice_3mm": 0.8,
        "hd95_mm": 12.0,
        "apl_mm": 500.0,
    }
    assert acceptance.metrics.names == (
        "dice",
        "surface_dice_1.5mm",
        "surface_dice_3mm",
        "msd_mm",
        "hd95_mm",
        "apl_mm",
    )
    assert load_acceptance(None).criteria("ctv") == {"surface_dice_3mm": 0.9}
    with pytest.raises(ConfigurationError):
        acceptance.check_structures(["ctv", "breast"])  # imn is not evaluated: a typo?
    for bad in (
        {"acceptance": {"surface_dice_4mm": 0.9}},  # not a computed tolerance
        {"acceptance": {"dice": "high"}},
        {"acceptance": {"statistic": "median", "dice": 0.8}},
        {"acceptance": {}},
        {"acceptance": {"dice": 0.8}, "extra": {}},
        {"acceptance": {"dice": 0.8}, "metrics": {"apl_tolerance_mm": -1}},
    ):
        with pytest.raises(ConfigurationError):
            parse_acceptance(bad)
    (tmp_path / "broken.toml").write_text("[acceptance\n")
    with pytest.raises(ConfigurationError):
        load_acceptance(tmp_path / "broken.toml")


# --- statistics ----------------------------------------------------------------------------------
def _result(dice: float, *, ref: bool = True, pred: bool = True) -> Any:
    values = {
        "dice": dice,
        "surface_dice_2mm": dice,
        "surface_dice_3mm": dice,
        "msd_mm": 1.0 if ref and pred else math.inf,
        "hd95_mm": 2.0 if ref and pred else math.inf,
        "apl_mm": 10.0,
    }
    if not ref and not pred:
        values = {**values, "msd_mm": 0.0, "hd95_mm": 0.0, "apl_mm": 0.0}
    from model.evaluation.commissioning import StructureResult

    return StructureResult(values, ref, pred, 1.0 * ref, 1.0 * pred, 100.0 * ref)


def test_verdicts_counts_and_paired_differences() -> None:
    cases = []
    for n in range(6):
        case = CaseResult(
            f"c{n}", {"surgery": "breast_conserving", "n_stage": "N1", "side": "left"}
        )
        node_positive = n < 4
        case.models["new"] = {
            CTV: _result(0.95),
            "imn": _result(0.93) if node_positive else _result(1.0, ref=False, pred=False),
        }
        case.models["old"] = {
            CTV: _result(0.85),
            # the old model draws IMN for every case: spurious where the reference has none
            "imn": _result(0.9) if node_positive else _result(0.0, ref=False, pred=True),
        }
        cases.append(case)
    acceptance = Acceptance(defaults={"surface_dice_3mm": 0.9})
    summary = summarize_commissioning(
        cases, ["new", "old"], [CTV, "imn"], acceptance, Bootstrap(n_resamples=200)
    )
    new, old = summary["results"]["new"], summary["results"]["old"]
    assert new["imn"]["counts"] == {
        "cases": 6,
        "evaluated": 4,
        "reference_present": 4,
        "missed": 0,
        "spurious": 0,
        "agreed_absent": 2,
    }
    assert new["imn"]["metrics"]["surface_dice_3mm"]["mean"] == pytest.approx(0.93)
    assert old["imn"]["counts"]["spurious"] == 2
    assert old["imn"]["metrics"]["surface_dice_3mm"]["mean"] == pytest.approx(3.6 / 6)
    assert old["imn"]["metrics"]["hd95_mm"]["n_infinite"] == 2
    assert (new["imn"]["verdict"], old["imn"]["verdict"]) == ("PASS", "FAIL")
    assert summary["verdicts"] == {"new": "PASS", "old": "FAIL"}
    assert "surface Dice 3 mm" in old["imn"]["reason"]
    assert old[CTV]["verdict"] == "FAIL" and new[CTV]["verdict"] == "PASS"
    paired = summary["paired"]["imn"]
    assert paired["cases"] == 6
    assert paired["dice"]["mean"] == pytest.approx((4 * 0.03 + 2 * 1.0) / 6)
    assert paired["dice"]["favours"] == "new"
    assert summary["paired"][CTV]["dice"]["mean"] == pytest.approx(0.1)
    levels = new["imn"]["categories"]["n_stage"]
    assert list(levels) == ["N1"] and levels["N1"]["counts"]["evaluated"] == 4

    strict = Acceptance(defaults={"surface_dice_3mm": 0.9}, statistic="ci", min_cases=5)
    judged = summarize_commissioning(cases, ["new"], [CTV, "imn"], strict, Bootstrap(100))
    assert judged["results"]["new"]["imn"]["verdict"] == "FAIL"  # 4 cases < 5
    assert judged["results"]["new"][CTV]["verdict"] == "PASS"
    ranked = worst_cases(cases, "old", "surface_dice_3mm", n=2)
    assert [(c.case_id, v, s) for c, v, s in ranked] == [("c4", 0.0, "imn"), ("c5", 0.0, "imn")]
    nothing = [CaseResult("x", {}, {"new": {"imn": _result(1.0, ref=False, pred=False)}})]
    verdict = summarize_commissioning(nothing, ["new"], ["imn"], acceptance, Bootstrap(10))
    assert verdict["results"]["new"]["imn"]["verdict"] == "NOT_EVALUATED"
    assert verdict["verdicts"]["new"] == "NOT_EVALUATED"


def test_categories_of_one_and_two_sides() -> None:
    left = Diagnosis(side=Side.LEFT, surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage="1a")
    right = Diagnosis(side=Side.RIGHT, surgery=Surgery.TOTAL_MASTECTOMY, t_stage="1", n_stage="1mi")
    assert categories_of(ClinicalRecord(diagnoses=(left,))) == {
        "surgery": "breast_conserving",
        "n_stage": "N1",
        "side": "left",
    }
    assert categories_of(ClinicalRecord(diagnoses=(left, right))) == {
        "surgery": "mixed",
        "n_stage": "N1",
        "side": "bilateral",
    }
    assert categories_of(ClinicalRecord(diagnoses=(right,)))["n_stage"] == "N1mi"


def test_json_is_strict() -> None:
    doc = json_safe({"a": math.inf, "b": [math.nan, 1.5, np.float64(2.0)], "c": (np.int64(3),)})
    assert json.loads(json.dumps(doc, allow_nan=False)) == {
        "a": None,
        "b": [None, 1.5, 2.0],
        "c": [3],
    }


# --- end to end on phantoms ----------------------------------------------------------------------
TARGET = TargetRule(
    union=RoiRule(include=(r"^ctv$",)),
    structures=tuple((n, RoiRule(include=p)) for n, p in PHANTOM_ROI_PATTERNS.items()),
)
META = {
    "text_encoder_name": "tiny-llama",
    "preprocessing": {"target_spacing": [6.0, 8.0, 8.0], "hu_window": [-1000.0, 1000.0]},
    "roi_rule": {"include": ["^ctv$"], "exclude": []},
    "structure_rules": {name: list(p) for name, p in PHANTOM_ROI_PATTERNS.items()},
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms") / "A"
    write_cohort(out, 3, "A", seed=2, scale=0.125)  # N1 left, N0 right, N1 left
    return out


def _digest(volume: Volume) -> str:
    return hashlib.sha256(np.ascontiguousarray(volume.array).tobytes()).hexdigest()


class _LabelPredictor(Predictor):
    """Returns the reference label map of each CT (optionally without some structures)."""

    def __init__(
        self,
        labels: dict[str, npt.NDArray[np.uint8]],
        drop: tuple[str, ...],
        classes: tuple[str, ...] = BREAST_STRUCTURES,
    ) -> None:
        config = SimpleNamespace(structures=classes)
        self.network = SimpleNamespace(config=config)  # type: ignore[assignment]
        self.labels = labels
        self.drop = drop

    def predict_record(self, volume: Volume, record: ClinicalRecord, **_: Any) -> Prediction:
        label = self.labels[_digest(volume)]
        structures = {
            (name, "L"): label == index
            for index, name in enumerate(BREAST_STRUCTURES, start=1)
            if name not in self.drop and (label == index).any()
        }
        mask = np.zeros(label.shape, dtype=bool)
        for part in structures.values():
            mask |= part
        removed = {f"note rule: {name} R: the note names no right side": 1.0 for name in self.drop}
        prediction = Prediction(mask, mask.astype(np.float32), structures=structures)
        prediction.rule_removed_cc = removed
        return prediction


def test_an_oracle_passes_and_a_model_that_misses_imn_fails(cohort: Path, tmp_path: Path) -> None:
    labels = {}
    for _, folder, record in iter_cases(cohort):
        case = load_case(folder, record, TARGET)
        labels[_digest(case.ct.volume)] = case.mask
    predictors = {
        "oracle": _LabelPredictor(labels, drop=()),
        "no_imn": _LabelPredictor(labels, drop=("imn",)),
    }
    removals: dict[str, dict[str, int]] = {}
    cases, snapshots, skipped, _ = commission.evaluate_models(
        predictors, cohort, TARGET, worst=2, rule_removals=removals
    )
    assert len(cases) == 3 and not skipped and len(snapshots) == 2
    assert removals == {"oracle": {}, "no_imn": {"note rule": 3}}  # one per case
    structures = [CTV, *BREAST_STRUCTURES]
    acceptance = parse_acceptance(
        {"acceptance": {"surface_dice_3mm": 0.9, "imn": {"dice": 0.8}}}, "site.toml"
    )
    summary = summarize_commissioning(
        cases, list(predictors), structures, acceptance, Bootstrap(100)
    )
    oracle, no_imn = summary["results"]["oracle"], summary["results"]["no_imn"]
    for name in structures:
        if name == "chest_wall":  # breast-conserving cases only: never drawn, never referenced
            assert oracle[name]["verdict"] == "NOT_EVALUATED"
            continue
        assert oracle[name]["verdict"] == "PASS", name
        assert oracle[name]["metrics"]["dice"]["mean"] == 1.0
        assert oracle[name]["metrics"]["apl_mm"]["mean"] == 0.0
    assert no_imn["imn"]["verdict"] == "FAIL" and no_imn["imn"]["counts"]["missed"] == 2
    assert no_imn["breast"]["verdict"] == "PASS"
    assert summary["verdicts"] == {"oracle": "PASS", "no_imn": "FAIL"}
    assert summary["paired"]["imn"]["surface_dice_3mm"]["mean"] == 1.0

    out = tmp_path / "report"
    files = write_commissioning_report(
        out,
        summary=summary,
        cases=cases,
        snapshots=snapshots,
        models={
            n: {
                "role": n,
                "path": "-",
                "structures": structures,
                "note_rule": True,
                "note_rule_removed": sum(removals[n].values()),
            }
            for n in predictors
        },
        data=str(cohort),
        skipped=skipped,
        generated_at="2026-01-01T00:00:00Z",
        software_version="test",
    )
    doc = json.loads((out / "report.json").read_text())
    assert doc["verdicts"]["no_imn"]["structures"]["imn"] == "FAIL"
    page = (out / "report.html").read_text()
    assert "<th>note rule</th>" in page and "on (removed 3 structure(s))" in page
    assert {c["case_id"] for c in doc["cases"]} == {"A0001", "A0002", "A0003"}
    assert doc["summary"]["results"]["no_imn"]["imn"]["metrics"]["hd95_mm"]["mean"] is None
    for path in files[2:]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_commission_command_with_tiny_checkpoints(cohort: Path, tmp_path: Path) -> None:
    cfg = preset("tiny").with_structures(BREAST_STRUCTURES)
    context = PromptContext(cfg, tiny_llama()).eval()
    save_checkpoint(
        tmp_path / "new", ContourNet(cfg).eval(), context, text_encoder=context.identity, meta=META
    )
    vision = ContourNet(preset("tiny", multimodal=False)).eval()
    save_checkpoint(tmp_path / "old", vision, None, text_encoder=None, meta=META)
    site = tmp_path / "site.toml"
    site.write_text("[acceptance]\ndice = 0.0\n[acceptance.imn]\nsurface_dice_2mm = 1.01\n")
    csv = tmp_path / "two.csv"  # two of the three cases (one N1 with IMN), to save time
    csv.write_text("\n".join((cohort / "clinical.csv").read_text().splitlines()[:3]) + "\n")
    parser = argparse.ArgumentParser(prog="llmctv")
    commission.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "commission",
            "--model",
            f"candidate={tmp_path / 'new'}",
            "--model",
            f"current={tmp_path / 'old'}",
            "--data",
            str(cohort),
            "--csv",
            str(csv),
            "--out",
            str(tmp_path / "report"),
            "--acceptance",
            str(site),
            "--bootstrap",
            "50",
            "--worst",
            "1",
            "--device",
            "cpu",
        ]
    )
    started = time.perf_counter()
    assert args.func(args) == 0
    elapsed = time.perf_counter() - started
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    verdicts = doc["verdicts"]["candidate"]["structures"]
    assert set(verdicts) == {CTV, *BREAST_STRUCTURES}
    assert set(verdicts.values()) <= {"PASS", "FAIL", "NOT_EVALUATED"}
    assert verdicts["imn"] == "FAIL"  # no surface Dice exceeds 1
    assert doc["verdicts"]["current"]["structures"] == {CTV: "PASS"}  # Dice >= 0 always
    assert doc["current"] == "current" and CTV in doc["summary"]["paired"]
    assert doc["models"]["candidate"]["structures"] == list(BREAST_STRUCTURES)
    html = (tmp_path / "report" / "report.html").read_text()
    for name in (CTV, *BREAST_STRUCTURES):
        assert f"<td>{name}</td>" in html, name
    assert "FAIL" in html and "figures/box_plots.png" in html and "figures/worst_1.png" in html
    assert elapsed < 60, elapsed

    with pytest.raises(ConfigurationError):
        commission.commission(
            commission.CommissionOptions(
                models={"a": tmp_path / "new", "b": tmp_path / "old", "c": tmp_path / "old"},
                data=cohort,
                out=tmp_path / "x",
            )
        )
    with pytest.raises(ConfigurationError):
        commission.structure_options(["ctv=^ctv$"])
    assert commission.structure_options(["phantom"]) == tuple(PHANTOM_ROI_PATTERNS.items())
    assert MetricConfig().names[0] == "dice"


PHANTOM_MAP = """
[union]
patterns = ["CTV"]

[structures.breast]
patterns = ["CTV_Breast"]

[structures.chest_wall]
patterns = ["CTV_ChestWall"]

[structures.axilla]
patterns = ["CTV_LN_Axilla"]

[structures.scf]
patterns = ["CTV_LN_SCF"]

[structures.imn]
patterns = ["CTV_LN_IMN"]
"""


def test_a_structure_map_chooses_the_reference(cohort: Path, tmp_path: Path) -> None:
    path = tmp_path / "site-map.toml"
    path.write_text(PHANTOM_MAP)
    target = commission.reference_rule({}, structure_map=path)
    assert [name for name, _ in target.structures] == list(BREAST_STRUCTURES)
    trained = commission.reference_rule({"structure_map": map_meta(load_structure_map(path))})
    assert [name for name, _ in trained.structures] == list(BREAST_STRUCTURES)
    with pytest.raises(ConfigurationError):
        commission.reference_rule({}, structures=[("breast", ("x",))], structure_map=path)
    with pytest.raises(ConfigurationError):  # a structure network that records no ROI rules
        commission.reference_rule({"network": {"structures": ["breast"]}})

    labels = {}
    for _, folder, record in iter_cases(cohort):
        case = load_case(folder, record, TARGET)
        labels[_digest(case.ct.volume)] = case.mask
    four = tuple(n for n in BREAST_STRUCTURES if n != "imn")
    models = {
        "oracle": _LabelPredictor(labels, drop=()),
        "four_classes": _LabelPredictor(labels, drop=("imn",), classes=four),
        "ctv_only": _LabelPredictor(labels, drop=(), classes=()),
    }
    cases, snapshots, _, _ = commission.evaluate_models(models, cohort, target, worst=0)
    assert not snapshots
    for case in cases:
        for name, result in case.models["oracle"].items():
            assert result.values["dice"] == 1.0, (case.case_id, name)
        # a structure network without an IMN class misses the reference IMN
        imn = case.models["four_classes"]["imn"]
        assert not imn.predicted_present and imn.values["dice"] == float(not imn.reference_present)
        assert list(case.models["ctv_only"]) == [CTV]
