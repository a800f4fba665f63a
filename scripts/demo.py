"""The main job (``make demo``): phantoms -> contours from CT + text -> report and RTSTRUCT.

1. Generates a few synthetic breast-RT phantoms (CT series, ground-truth RTSTRUCT, CSV).
2. Uses the shipped CPU demo model (``checkpoints/demo``, SmolLM2-135M text encoder); if it
   is missing, trains a small one first (``--train-epochs``).
3. Evaluates it on the phantoms (Dice, IoU, HD95 with bootstrap CIs).
4. Starts the service (``llmctv serve``: FastAPI gateway, embedded worker) and contours one
   phantom over HTTP twice, with its own note and with the side flipped: RTSTRUCT, preview PNG,
   Dice against the ground truth, and the service's consistency warnings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from demo_service import contour_over_http, running_service

from model.text.clinical import read_clinical_csv
from service.cli import main as llmctv

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "demo"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _checkpoint(out: Path, data: Path, epochs: int) -> Path:
    if (SHIPPED / "model.safetensors").is_file():
        return SHIPPED
    _step(f"no shipped model in {SHIPPED}: training a small one ({epochs} epochs)")
    run = out / "run"
    code = llmctv(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--preset",
            "cpu",
            "--text-encoder",
            "smollm2",
            "--spacing",
            "6",
            "4",
            "4",
            "--epochs",
            str(epochs),
            "--steps-per-epoch",
            "20",
            "--lr",
            "1e-3",
            "--device",
            "cpu",
        ]
    )
    if code:
        raise SystemExit(code)
    return run / "best"


def _flip(record_json: dict[str, object]) -> dict[str, object]:
    flipped: dict[str, Any] = json.loads(json.dumps(record_json))
    for d in flipped["diagnoses"]:
        d["side"] = "right" if d["side"] == "left" else "left"
    return flipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--train-epochs", type=int, default=15)
    args = parser.parse_args()
    start = time.perf_counter()
    shutil.rmtree(args.out, ignore_errors=True)
    data = args.out / "phantoms"
    _step("1. synthetic phantoms (site A)")
    if llmctv(
        [
            "phantoms",
            "--out",
            str(data),
            "--cases",
            str(args.cases),
            "--site",
            "A",
            "--seed",
            "2024",
            "--scale",
            "0.25",
        ]
    ):
        return 2
    checkpoint = _checkpoint(args.out, data, args.train_epochs)
    _step(f"2. evaluate {checkpoint}")
    if llmctv(
        [
            "evaluate",
            "--data",
            str(data),
            "--model",
            f"multimodal={checkpoint}",
            "--out",
            str(args.out / "report"),
            "--device",
            "cpu",
        ]
    ):
        return 2
    print((args.out / "report" / "report.md").read_text())
    _step("3. the service: llmctv serve, then the phantom over HTTP (as written, side flipped)")
    case_id, record = next(iter(read_clinical_csv(data / "clinical.csv").items()))
    original = json.loads(record.model_dump_json())
    with running_service(args.out / "service", checkpoint) as (url, token):
        print(f"  gateway {url} (embedded worker, model {checkpoint.name})")
        for label, clinical in (("as written", original), ("side flipped", _flip(original))):
            result = contour_over_http(url, token, data / case_id, clinical, args.out, label)
            print(f"  {label:>12}: {result}")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
