"""Scenario scripts run in a private network namespace (``unshare -n``): real peers
(Orthanc, dcmtk, a browser) on loopback ports that nothing outside the test can reach.

A scenario prints one JSON report as its last line of output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

PACKAGES = {
    "unshare": "util-linux",
    "ip": "iproute2",
    "Orthanc": "orthanc",
    "storescu": "dcmtk",
    "echoscu": "dcmtk",
}


def namespace_problem(*tools: str) -> str | None:
    """Why a scenario with ``tools`` (besides unshare and ip) cannot run here, or ``None``."""
    for tool in ("unshare", "ip", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {PACKAGES.get(tool, tool)})"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.strip()[:200]}"
    return None


def run_scenario(
    scenario: Path, workdir: Path, *args: str, private: bool = True, timeout: float = 420
) -> dict[str, Any]:
    """Run ``scenario --workdir WORKDIR ARGS`` (in a private network namespace unless
    ``private`` is false) and return its report; it must exit 0."""
    command = [sys.executable, str(scenario), "--workdir", str(workdir), *args]
    if private:
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report
