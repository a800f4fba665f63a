"""``llmctv dataset check DATA --structure-map MAP --out DIR [--min-cc X]``.

Writes ``DIR/inventory.json`` and ``DIR/inventory.html`` and prints a short summary. Exit
status: 0 when the export has no blocking problem, 1 when it has one (the problems of
:data:`model.dataset.problems.PROBLEM_CODES` marked blocking), 2 for an error that stops the
check (a missing data folder or CSV, an invalid structure map: ``error [code]: ...``).
Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: How many blocking problems the terminal summary lists (the report has them all).
_SHOWN = 20


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add the ``dataset`` command (sub-command ``check``) to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dataset", help="check a department's export (CT + RTSTRUCT + clinical.csv)"
    )
    commands = parser.add_subparsers(dest="dataset_command", required=True)
    check = commands.add_parser(
        "check",
        help="inventory an export and list its problems (HTML and JSON)",
        description=(
            "Inventory every case of DATA (DATA/clinical.csv and DATA/<case_id>/ with the CT "
            "and RTSTRUCT): structures and sides found with their volumes, unmatched ROIs, "
            "disagreements with the CSV, empty, tiny and outside-the-body contours, frame of "
            "reference and series mismatches, patients in several cases. Exit 0 without "
            "blocking problems, 1 with, 2 on an error."
        ),
    )
    check.add_argument("data", type=Path, metavar="DATA", help="the export's folder")
    check.add_argument(
        "--structure-map", type=Path, required=True, metavar="MAP", help="the site's TOML map"
    )
    check.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    check.add_argument(
        "--min-cc",
        type=float,
        default=0.5,
        metavar="X",
        help="a structure below X cc is reported as tiny (default 0.5)",
    )
    check.add_argument(
        "--csv", type=Path, default=None, help="clinical CSV (default DATA/clinical.csv)"
    )
    check.set_defaults(func=run_check)
    return parser


def run_check(args: argparse.Namespace) -> int:
    """Run ``dataset check``; 0 without blocking problems, 1 with."""
    from model.dataset.inventory import check_dataset
    from model.dataset.inventory_report import write_report
    from model.dataset.problems import CheckOptions
    from model.dataset.structure_map import load_structure_map

    options = CheckOptions(min_cc=float(args.min_cc))
    structure_map = load_structure_map(args.structure_map)
    inventory = check_dataset(args.data, structure_map, options, csv_path=args.csv)
    json_path, html_path = write_report(inventory, args.out)
    summary = inventory.summary
    blocking = inventory.blocking
    for p in blocking[:_SHOWN]:
        where = " ".join(x for x in (p.case, p.roi and repr(p.roi)) if x)
        print(f"  blocking [{p.code}] {where}: {p.detail}")
    if len(blocking) > _SHOWN:
        print(f"  ... and {len(blocking) - _SHOWN} more blocking problems in the report")
    print(
        f"dataset check: {summary['cases']} cases, {summary['cases_checked']} checked, "
        f"{summary['blocking']} blocking problems, {summary['warnings']} warnings"
    )
    print(f"report: {html_path} and {json_path}")
    return 1 if blocking else 0
