"""The ``phantoms`` sub-command: write a synthetic breast-RT cohort.

``llmctv phantoms --out DIR --cases N --site A|B --seed S [--scale F]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from model.lab.phantoms.cohort import WrittenCase, write_cohort
from model.lab.phantoms.sites import SITES, SPEC_VERSION


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add the ``phantoms`` sub-command to ``subparsers``; returns its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "phantoms",
        help="write a synthetic breast-RT cohort (CT + ground-truth RTSTRUCT + clinical CSV)",
        description=(
            f"Generate synthetic breast phantoms (spec v{SPEC_VERSION}): per case an axial CT "
            "series and a ground-truth RTSTRUCT, plus clinical.csv and cohort.json."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--cases", type=int, required=True, help="number of cases")
    parser.add_argument("--site", choices=sorted(SITES), required=True, help="scanner profile")
    parser.add_argument("--seed", type=int, required=True, help="cohort seed (>= 0)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="matrix scale in (0, 1]: 0.25 gives 128x128 slices over the same field of view",
    )
    parser.add_argument(
        "--counterfactuals",
        action="store_true",
        help="also write each case's text perturbations (same CT, recomputed target): training",
    )
    parser.set_defaults(func=run)
    return parser


def _report(written: WrittenCase) -> None:
    """Print one line per written case."""
    diagnoses = written.summary["prompt"]
    print(f"{written.case_id}: {len(written.ct_files)} slices; {diagnoses}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Write the cohort described by ``args``; errors propagate to the CLI (exit 2)."""
    start = time.perf_counter()
    written = write_cohort(
        args.out,
        args.cases,
        args.site,
        args.seed,
        args.scale,
        progress=_report,
        counterfactuals=args.counterfactuals,
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {len(written)} cases to {args.out} in {elapsed:.1f} s")
    return 0
