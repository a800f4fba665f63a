"""``llmctv phantoms``: write a synthetic breast-RT cohort, or a synthetic department's export.

The options are parsed here and the work is done by :mod:`model.lab.phantoms.cohort` and
:mod:`model.lab.department`; nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import ConfigurationError

if TYPE_CHECKING:
    from model.lab.phantoms.cohort import WrittenCase


def register_phantoms(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``phantoms``: write a synthetic breast-RT cohort."""
    from model.lab.phantoms.sites import SITES, SPEC_VERSION

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
    parser.add_argument(
        "--department-export",
        type=int,
        metavar="FIRST",
        help="site S only: write the synthetic department's export instead (rt-utils RTSTRUCTs "
        "with its ROI names, PTV, BODY, union; cases FIRST, FIRST+1, ...; docs/site-adaptation.md)",
    )
    parser.set_defaults(func=cmd_phantoms)
    return parser


def _report_case(written: WrittenCase) -> None:
    """Print one line per written case."""
    diagnoses = written.summary["prompt"]
    print(f"{written.case_id}: {len(written.ct_files)} slices; {diagnoses}", flush=True)


def cmd_phantoms(args: argparse.Namespace) -> int:
    """Write the cohort described by ``args``; errors propagate to the CLI (exit 2)."""
    start = time.perf_counter()
    if args.department_export is not None:
        from model.lab.department import DEPARTMENT_SITE, write_department_export

        if args.site != DEPARTMENT_SITE or args.counterfactuals:
            raise ConfigurationError("--department-export: --site S, without --counterfactuals")
        exported = write_department_export(
            args.out, args.cases, args.seed, args.scale, first=args.department_export
        )
        elapsed = time.perf_counter() - start
        print(
            f"wrote the department export of {len(exported)} cases to {args.out} in {elapsed:.1f} s"
        )
        return 0
    from model.lab.phantoms.cohort import write_cohort

    written = write_cohort(
        args.out,
        args.cases,
        args.site,
        args.seed,
        args.scale,
        progress=_report_case,
        counterfactuals=args.counterfactuals,
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {len(written)} cases to {args.out} in {elapsed:.1f} s")
    return 0
