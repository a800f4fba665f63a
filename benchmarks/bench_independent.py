"""The shipped model on the independent cohort (``tests/independent``, never trained on).

The cohort's generator was written from ``shared/specs/breast-phantom.md`` by someone who never
read the training generator (other body outline, breast shapes from small/flat to
large/ptotic, a liver dome under the right lung, correlated noise). This script generates it,
contours every case with the model through :meth:`model.inference.Predictor.predict_record`
(the job's network, postprocessing, plausibility and note rule), and prints issue 22's table:
Dice and HD95 (mean with a 95 % bootstrap CI, worst case), per structure, side after a
laterality flip, nodal volume ratios, the mastectomy chest-wall volume at 512, and the
needs-attention flags. The flip and the nodal ratios are of the network alone.

Usage::

    python benchmarks/bench_independent.py --out out/independent --cases 8 --matrix 256 512

Coordinates: masks are ``(k, j, i)`` on each case's CT grid (LPS, head-first supine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from independent.generator import write_cohort  # noqa: E402

from model.contouring.attention import attention_findings  # noqa: E402
from model.dicom.series import read_ct_series  # noqa: E402
from model.evaluation.metrics import bootstrap_ci, dice, hd95  # noqa: E402
from model.imaging.postprocessing import body_mask, midline_x  # noqa: E402
from model.inference import Prediction, Predictor  # noqa: E402
from model.lab.perturbation import side_fraction  # noqa: E402
from model.network.structures import NODAL  # noqa: E402
from model.text.clinical import ClinicalRecord, Side  # noqa: E402

STRUCTURES = ("breast", "chest_wall", "axilla", "scf", "imn")


def _flip(record: ClinicalRecord) -> ClinicalRecord:
    d = record.diagnoses[0]
    other = Side.RIGHT if d.side is Side.LEFT else Side.LEFT
    return record.model_copy(update={"diagnoses": (d.model_copy(update={"side": other}),)})


def _with_n(record: ClinicalRecord, n_stage: str) -> ClinicalRecord:
    d = record.diagnoses[0]
    return record.model_copy(update={"diagnoses": (d.model_copy(update={"n_stage": n_stage}),)})


def _nodal_cc(pred: Prediction, voxel_cc: float) -> float:
    nodal = {s.value for s in NODAL}
    return sum(float(m.sum()) * voxel_cc for (n, _), m in pred.structures.items() if n in nodal)


def evaluate_case(predictor: Predictor, summary: dict[str, Any], matrix: int) -> dict[str, Any]:
    """Every measure of one case."""
    folder = Path(summary["folder"])
    ct = read_ct_series(folder / "ct")
    grid = ct.volume.grid
    spacing = grid.spacing
    voxel_cc = float(np.prod(spacing)) / 1000.0
    record = ClinicalRecord.model_validate(json.loads((folder / "clinical.json").read_text()))
    truth = np.load(folder / "truth.npz")
    t0 = time.perf_counter()
    pred = predictor.predict_record(ct.volume, record)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "case": summary["case_id"],
        "matrix": matrix,
        "note": record.prompt_text(),
        "dice": dice(pred.mask, truth["ctv"]),
        "hd95": hd95(pred.mask, truth["ctv"], spacing),
        "seconds": round(seconds, 2),
        "structures": {},
    }
    for key in truth.files:
        if key == "ctv":
            continue
        name, side = key.rsplit("_", 1)
        mask = pred.structures.get((name, side), np.zeros(grid.shape, bool))
        row["structures"][key] = {
            "dice": dice(mask, truth[key]),
            "hd95": hd95(mask, truth[key], spacing),
            "cc": round(float(mask.sum()) * voxel_cc, 1),
            "truth_cc": round(float(truth[key].sum()) * voxel_cc, 1),
            "confidence": pred.confidence.get((name, side), 0.0),
            "implausible_cc": pred.plausibility.removed_of((name, side))
            if pred.plausibility
            else 0.0,
        }
    row["attention"] = attention_findings(
        record, pred.structures, pred.plausibility, voxel_cc, min_cc=5.0
    )
    row["implausible_cc"] = pred.plausibility.removed_cc if pred.plausibility else {}
    if len(record.diagnoses) == 1:
        d = record.diagnoses[0]
        mid = midline_x(body_mask(ct.volume), grid)
        # What the network reads from the text: the network alone (the note rule would make
        # the flip and the nodal ratios hold by construction).
        if d.surgery.value == "breast_conserving":
            flipped = _flip(record)
            moved = predictor.predict_record(ct.volume, flipped, prescribed=False)
            row["side_after_flip"] = side_fraction(moved.mask, grid, flipped.diagnoses[0].side, mid)
        if not d.node_positive:
            plus = predictor.predict_record(ct.volume, _with_n(record, "1"), prescribed=False)
            alone = predictor.predict_record(ct.volume, record, prescribed=False)
            n1 = _nodal_cc(plus, voxel_cc)
            key = "n0_n1" if d.n_stage.startswith("0") else "n1mi_n1"
            row[key] = _nodal_cc(alone, voxel_cc) / n1 if n1 > 0 else float("nan")
    return row


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    mean, low, high = bootstrap_ci(values)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of issue 22's measures."""
    lines = ["| measure | value |", "|---|---|"]
    dices = [r["dice"] for r in rows]
    hds = [r["hd95"] for r in rows]
    worst = min(rows, key=lambda r: r["dice"])
    lines.append(f"| Dice, mean [95 % CI] | {_stat(dices)} (n={len(rows)}) |")
    lines.append(f"| Dice, worst case | {worst['dice']:.3f} ({worst['case']}, {worst['note']}) |")
    lines.append(f"| HD95 mm, mean [95 % CI] | {_stat(hds)} |")
    for name in STRUCTURES:
        per = [s for r in rows for k, s in r["structures"].items() if k.rsplit("_", 1)[0] == name]
        if per:
            lines.append(
                f"| {name}: Dice / HD95 mm | {np.mean([s['dice'] for s in per]):.3f} / "
                f"{np.mean([s['hd95'] for s in per]):.1f} (n={len(per)}) |"
            )
    for key, label in (
        ("side_after_flip", "side after a laterality flip"),
        ("n0_n1", "nodal volume N0/N1"),
        ("n1mi_n1", "nodal volume N1mi/N1"),
    ):
        values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if values:
            lines.append(f"| {label} | {np.mean(values):.3f} (n={len(values)}) |")
    walls = [
        (s["cc"], s["truth_cc"])
        for r in rows
        if r["matrix"] == 512
        for k, s in r["structures"].items()
        if k.startswith("chest_wall")
    ]
    if walls:
        errors = ", ".join(f"{p:.0f}/{t:.0f}" for p, t in walls)
        lines.append(f"| mastectomy chest wall at 512, cc predicted/true | {errors} |")
    flagged = sum(1 for r in rows if r["attention"])
    lines.append(f"| cases with a needs-attention finding | {flagged} of {len(rows)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Generate, contour, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "independent")
    parser.add_argument("--cases", type=int, default=8, help="cases per site and matrix")
    parser.add_argument("--sites", nargs="+", default=["A", "B"])
    parser.add_argument("--matrix", type=int, nargs="+", default=[256])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "demo")
    parser.add_argument(
        "--mirror-tta", action="store_true", help="average with the mirrored patient and note"
    )
    args = parser.parse_args(argv)
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu", mirror_tta=args.mirror_tta)
    rows = []
    for site in args.sites:
        for matrix in args.matrix:
            folder = args.out / f"{site}{matrix}"
            cohort = (
                json.loads((folder / "cohort.json").read_text())
                if (folder / "cohort.json").is_file()
                else write_cohort(folder, args.cases, site, args.seed, matrix)
            )
            for summary in cohort[: args.cases]:
                row = evaluate_case(predictor, summary, matrix)
                row["site"] = site
                rows.append(row)
                print(
                    f"{row['case']} {matrix} Dice {row['dice']:.3f} HD95 {row['hd95']:.1f} "
                    f"{row['note']} attention={len(row['attention'])}",
                    flush=True,
                )
    tta = "-tta" if args.mirror_tta else ""
    name = f"results-{args.checkpoint.parent.name}-{args.checkpoint.name}{tta}.json"
    (args.out / name).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    print()
    print(table(rows))
    for site in args.sites:
        for matrix in args.matrix:
            part = [r for r in rows if r["site"] == site and r["matrix"] == matrix]
            if part:
                print(f"\n## site {site}, {matrix}\n" + table(part))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
