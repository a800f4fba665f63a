"""The layout is the pipeline: service -> workers -> model, no cycles, a torch-free gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gateway_imports_without_torch() -> None:
    code = (
        "import sys, service.app, service.cli; "
        "bad = [m for m in ('torch', 'monai', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_linter_contracts_hold() -> None:
    """Layers (service -> workers -> model, model's subpackages), no import cycles at any
    depth, no torch in the gateway's faces: the contracts in ``pyproject.toml``."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
