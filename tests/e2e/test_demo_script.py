"""``make demo`` end to end: phantoms, evaluation, the service over HTTP, RTSTRUCTs out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_and_writes_rtstructs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "usage:" not in done.stderr, "no child process re-ran the command line"
    for label in ("as-written", "side-flipped"):
        rtstruct = pydicom.dcmread(next(out.glob(f"*-{label}.rtstruct.dcm")))
        names = [roi.ROIName for roi in rtstruct.StructureSetROISequence]
        assert names[0] == "CTV" and len(names) > 1, names
        assert next(out.glob(f"*-{label}.preview.png")).stat().st_size > 10_000
    assert "Dice vs ground truth" in done.stdout
