"""End to end from DICOM: cache, train, evaluate, predict — through the ``llmctv`` CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA

from model.cli import main
from model.dicom.rtstruct.reader import RoiRule, read_structure_set
from model.dicom.series import read_ct_series
from model.imaging.preprocessing import PreprocessConfig
from model.lab.phantoms.cohort import write_cohort
from model.training.dataset import build_cache, load_cached, load_case
from model.training.sampling import group_cases

PRE = PreprocessConfig(target_spacing=(6.0, 8.0, 8.0))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms") / "A"
    write_cohort(out, 3, "A", seed=7, scale=0.125)
    return out


def test_cache_is_built_once_and_reused(cohort: Path, tmp_path: Path) -> None:
    first = build_cache(cohort, tmp_path, preprocess=PRE)
    assert sorted(first.built) == ["A0001", "A0002", "A0003"]
    second = build_cache(cohort, tmp_path, preprocess=PRE)
    assert second.built == [] and len(second.reused) == 3
    cases = load_cached(tmp_path)
    assert all(c.label.any() for c in cases)
    assert all(", cT" in c.note for c in cases), "each case carries its rendered note"
    assert len({c.group_key for c in cases}) == 3
    assert all(c.group.startswith("1.2.") for c in cases), "grouped by SeriesInstanceUID"


def test_counterfactual_notes_of_one_ct_share_its_group(tmp_path: Path) -> None:
    data = tmp_path / "cf"
    write_cohort(data, 2, "A", seed=101, scale=0.125, counterfactuals=True)
    build_cache(data, tmp_path / "cache", preprocess=PRE)
    groups = group_cases(load_cached(tmp_path / "cache"))
    assert len(groups) == 2
    assert sorted(len(g) for g in groups.values()) >= [2, 2], "each CT with its variants"


def test_unreadable_case_is_reported_not_silently_dropped(cohort: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    (data / "A0002" / "rtstruct.dcm").unlink()
    report = build_cache(data, tmp_path / "cache", preprocess=PRE)
    assert [s[0] for s in report.skipped] == ["A0002"]
    assert report.skipped[0][1] == "invalid_rtstruct"
    assert "skipped A0002" in report.summary()


def test_train_evaluate_predict_through_the_cli(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(cohort),
                "--out",
                str(run),
                "--preset",
                "tiny",
                "--text-encoder",
                "tiny-llama",
                "--epochs",
                "2",
                "--steps-per-epoch",
                "2",
                "--spacing",
                "6",
                "8",
                "8",
                "--device",
                "cpu",
                "--lr",
                "1e-2",
            ]
        )
        == 0
    )
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["preprocessing"]["target_spacing"] == [6.0, 8.0, 8.0]
    assert config["text_encoder_name"] == "tiny-llama"

    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(cohort),
                "--model",
                f"mm={run / 'best'}",
                "--out",
                str(report),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    doc = json.loads((report / "report.json").read_text())
    cases = doc["models"]["mm"]["cases"]
    assert len(cases) == 3
    assert all(0.0 <= c["dice"] <= 1.0 for c in cases)
    assert "Dice [95% CI]" in (report / "report.md").read_text()

    clinical = tmp_path / "clinical.json"
    clinical.write_text(
        json.dumps(
            {
                "diagnoses": [
                    {"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}
                ]
            }
        )
    )
    out = tmp_path / "mask.nii.gz"
    ct_dir = cohort / "A0001" / "ct"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "best"),
                "--ct",
                str(ct_dir),
                "--clinical",
                str(clinical),
                "--out",
                str(out),
                "--rtstruct",
                str(tmp_path / "rtss.dcm"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ct = read_ct_series(ct_dir)
    grid = ct.volume.grid
    structures = read_structure_set(tmp_path / "rtss.dcm")
    assert structures.roi_names == ("CTV",)
    assert structures.frame_of_reference_uid == ct.frame_of_reference_uid
    assert structures.rois[0].interpreted_type == "CTV"
    image = nib.load(str(out))
    assert image.shape == grid.shape[::-1], "NIfTI stores (i, j, k)"
    np.testing.assert_allclose(image.affine, grid.affine_ras(), atol=1e-4)
    corner = image.affine @ np.array([0.0, 0.0, 0.0, 1.0])
    lps = grid.index_to_lps([0, 0, 0])
    np.testing.assert_allclose(corner[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)


def test_cli_reports_errors_with_their_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "none"),
            "--ct",
            str(tmp_path),
            "--clinical",
            "{}",
            "--out",
            str(tmp_path / "m.nii.gz"),
        ]
    )
    assert code == 2
    assert "error [invalid_clinical]" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "lung1_ct_rtstruct").is_dir(), reason="shared data absent")
def test_real_clinical_dicom_is_training_input() -> None:
    case_dir = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001"
    from model.text.clinical import parse_clinical

    record = parse_clinical(
        {
            "diagnoses": [
                {"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "0"}
            ]
        }
    )
    case = load_case(case_dir, record, RoiRule(include=(r"^gtv",)))
    spacing = case.ct.volume.grid.spacing
    volume_cc = case.mask.sum() * spacing[0] * spacing[1] * spacing[2] / 1000
    assert case.mask.shape == (134, 512, 512)
    assert 140 < volume_cc < 170
