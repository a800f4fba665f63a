"""Calibrate the structure-confidence flag on held-out phantoms of the training generator.

Cases are drawn from sites and seeds never trained on (domain-randomised site D by default:
livers, small and large breasts; its failures are what the flag must catch). For each
(structure, side) of unilateral cases the script records the model's confidence
(:mod:`model.imaging.confidence`) and the Dice against the ground truth, then reports for
each candidate threshold the recall of poor structures (Dice < 0.6) and the false alarms
among good ones (Dice >= 0.85), and proposes the largest threshold with at most 10 % false
alarms. The independent cohort (``bench_independent.py``) is never used here.

``python benchmarks/calibrate_confidence.py --sites D A B --cases 12 --scale 0.5``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.evaluation.metrics import dice  # noqa: E402
from model.imaging.geometry import Volume  # noqa: E402
from model.inference import Predictor  # noqa: E402
from model.lab.phantoms.case import generate_case  # noqa: E402

GROUND_TRUTH = {
    "CTV_Breast": "breast",
    "CTV_ChestWall": "chest_wall",
    "CTV_LN_Axilla": "axilla",
    "CTV_LN_SCF": "scf",
    "CTV_LN_IMN": "imn",
}


def pairs(
    predictor: Predictor, site: str, cases: int, seed: int, scale: float
) -> list[dict[str, Any]]:
    """(confidence, Dice) of every predicted or true structure of unilateral cases."""
    found = []
    for index in range(cases):
        case = generate_case(f"{site}{index + 1:04d}", site, seed + index, scale)
        if len(case.clinical.diagnoses) != 1:
            continue
        side = case.clinical.diagnoses[0].side.letter
        volume = Volume(array=case.hu.astype(np.float32), grid=case.grid)
        pred = predictor.predict_record(volume, case.clinical)
        for roi, name in GROUND_TRUTH.items():
            truth = case.masks.get(roi)
            mask = pred.structures.get((name, side))
            if (truth is None or not truth.any()) and mask is None:
                continue
            truth = truth if truth is not None else np.zeros(case.grid.shape, bool)
            mask = mask if mask is not None else np.zeros(case.grid.shape, bool)
            found.append(
                {
                    "case": case.case_id,
                    "site": site,
                    "structure": name,
                    "dice": dice(mask, truth),
                    "confidence": pred.confidence.get((name, side), 0.0),
                }
            )
    return found


def sweep(rows: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """(threshold, recall of Dice < 0.6, false alarms among Dice >= 0.85) per threshold."""
    poor = [r["confidence"] for r in rows if r["dice"] < 0.6]
    good = [r["confidence"] for r in rows if r["dice"] >= 0.85]
    out = []
    for tau in np.round(np.arange(0.50, 0.96, 0.01), 2):
        recall = float(np.mean([c < tau for c in poor])) if poor else float("nan")
        alarms = float(np.mean([c < tau for c in good])) if good else float("nan")
        out.append((float(tau), recall, alarms))
    return out


def main(argv: list[str] | None = None) -> int:
    """Collect, sweep, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", nargs="+", default=["D", "A", "B"])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=90210)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "confidence.json")
    args = parser.parse_args(argv)
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    rows = [
        row
        for site in args.sites
        for row in pairs(predictor, site, args.cases, args.seed, args.scale)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    poor = sum(r["dice"] < 0.6 for r in rows)
    good = sum(r["dice"] >= 0.85 for r in rows)
    print(f"{len(rows)} structures: {poor} with Dice < 0.6, {good} with Dice >= 0.85")
    print("| threshold | recall (Dice < 0.6) | false alarms (Dice >= 0.85) |\n|---|---|---|")
    chosen = None
    for tau, recall, alarms in sweep(rows):
        print(f"| {tau:.2f} | {recall:.2f} | {alarms:.2f} |")
        if alarms <= 0.10:
            chosen = tau
    print(f"\nproposed threshold (largest with <= 10 % false alarms): {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
