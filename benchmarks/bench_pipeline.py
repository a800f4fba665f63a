"""Latency of one study through the whole pipeline on the real LUNG1 CT (prints a table).

Stages: DICOM ingest, preprocessing (resample to the network grid), context embedding
(cached / not cached), network (sliding window), postprocessing (back to the CT grid,
threshold), RTSTRUCT writing. Median of ``--repeats`` runs.

``python benchmarks/bench_pipeline.py --checkpoint out/demo-model/multimodal/best``
(without ``--checkpoint`` an untrained CPU-preset network with the tiny Llama is used,
which times everything but says nothing about accuracy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from model.dicom.rtstruct import ReferencedSeries, RoiSpec, WriterInfo, write_rtstruct
from model.dicom.series import read_ct_series
from model.inference import Predictor
from model.network.config import preset
from model.network.context import PromptContext
from model.network.segmenter import ContourNet
from model.text.encoders import tiny_llama

LUNG1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "lung1_ct_rtstruct"
NOTE = "N1, cT2, breast conserving surgery, left side"


def _predictor(checkpoint: Path | None) -> Predictor:
    if checkpoint is not None:
        return Predictor.from_checkpoint(checkpoint, device="cpu")
    cfg = preset("cpu", text_dim=64)
    return Predictor(ContourNet(cfg), PromptContext(cfg, tiny_llama()), device="cpu")


def run_once(predictor: Predictor, ct_dir: Path, out: Path, cached: bool) -> dict[str, float]:
    """One study; seconds per stage."""
    if not cached:
        predictor.cache = type(predictor.cache)()
    t = {}
    t0 = time.perf_counter()
    ct = read_ct_series(ct_dir)
    t["ingest"] = time.perf_counter() - t0
    pred = predictor.predict(ct.volume, NOTE)
    t.update(pred.timings)
    t0 = time.perf_counter()
    mask = pred.mask if pred.mask.any() else _fallback_mask(ct.volume.array)
    write_rtstruct(
        out,
        ReferencedSeries.from_datasets(ct.datasets),
        [RoiSpec(name="CTV", mask=mask)],
        WriterInfo(model_name="llmctv-bench", software_versions=("bench",)),
    )
    t["rtstruct"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["non_network"] = t["total"] - t["network"] - t["context"]
    return t


def _fallback_mask(hu: np.ndarray) -> np.ndarray:
    """An untrained network may predict nothing: time the writer on the body instead."""
    return np.asarray(hu > -300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ct_dir = LUNG1 / "LUNG1-001" / "image"
    if not ct_dir.is_dir():
        print(f"LUNG1 data not found at {ct_dir}")
        return 1
    predictor = _predictor(args.checkpoint)
    rows: dict[str, list[dict[str, float]]] = {"not cached": [], "cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_once(predictor, ct_dir, Path(tmp) / "warm.dcm", cached=False)  # warm-up
        for _ in range(args.repeats):
            rows["not cached"].append(run_once(predictor, ct_dir, Path(tmp) / "a.dcm", False))
            calls = predictor.context.forward_calls if predictor.context else 0
            rows["cached"].append(run_once(predictor, ct_dir, Path(tmp) / "b.dcm", True))
            if predictor.context and predictor.context.forward_calls != calls:
                raise RuntimeError("a cached note ran the language model")
    stages = list(rows["cached"][0])
    model = args.checkpoint or "untrained cpu preset"
    print(f"LUNG1-001 (134 x 512 x 512), model {model}, median of {args.repeats} (s)\n")
    print("| stage | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for stage in stages:
        cells = [f"{statistics.median(r[stage] for r in runs):.3f}" for runs in rows.values()]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("\nnon_network = ingest + preprocess + postprocess + rtstruct (target <= 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
