"""Runs of DICOM tools that no one here wrote (dicom3tools, plastimatch), for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="no dciodvfy")
needs_plastimatch = pytest.mark.skipif(shutil.which("plastimatch") is None, reason="no plastimatch")


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines dciodvfy prints for ``path``."""
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def plastimatch_mask(rtstruct: Path, ct_folder: Path, out: Path, roi: str) -> Path:
    """Rasterise ``roi`` with plastimatch (``--xor-contours``: holes); the .mha written."""
    subprocess.run(
        [
            "plastimatch",
            "convert",
            "--input",
            str(rtstruct),
            "--referenced-ct",
            str(ct_folder),
            "--output-prefix",
            str(out),
            "--prefix-format",
            "mha",
            "--xor-contours",
        ],
        capture_output=True,
        timeout=300,
        check=True,
    )
    return out / f"{roi}.mha"
