"""The fidelity gate: parameter counts of the paper configuration (Table S3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model.network.config import preset
from model.network.parameter_count import PAPER_TABLE_S3, parameter_report


def test_paper_counts_match_table_s3_within_3_percent() -> None:
    report = parameter_report(preset("paper", text_dim=4096))
    for part, paper_millions in PAPER_TABLE_S3.items():
        ours = report["parameters"][part] / 1e6
        assert abs(ours - paper_millions) / paper_millions < 0.03, (part, ours, paper_millions)


def test_params_cli_json_builds_without_weights() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.cli",
            "params",
            "--preset",
            "paper",
            "--text-dim",
            "4096",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    assert report["millions"]["backbone"] == pytest.approx(13.10, rel=0.03)
    assert report["millions"]["alignment"] == pytest.approx(8.32, rel=0.03)
    assert report["millions"]["prompts"] == pytest.approx(0.07, rel=0.03)


def test_vision_only_has_no_text_side() -> None:
    report = parameter_report(preset("paper", multimodal=False))
    assert report["parameters"]["alignment"] == 0
    assert report["parameters"]["prompts"] == 0
    assert report["parameters"]["backbone"] == pytest.approx(13.10e6, rel=0.03)


@pytest.mark.parametrize(
    ("tuning", "expected"),
    [
        ("multi_prompt", 2 * 8 * 4096 + 4096),
        ("single_prompt", 8 * 4096 + 4096),
        ("lora", 4096),
        ("none", 0),
    ],
)
def test_tuning_modes_train_the_right_text_parameters(tuning: str, expected: int) -> None:
    report = parameter_report(preset("paper", tuning=tuning))
    assert report["parameters"]["prompts"] == expected
