"""Benchmark the network and the context embedding; prints tables (not a test).

Measures, each configuration in its own subprocess so that peak memory is its own:

* forward time and peak memory of one sliding window, paper-size multimodal network
  (D = 4096) at the paper's 128 x 384 x 384 window, or the largest window that fits the
  ``--max-voxels`` budget (with the extrapolation stated);
* the same for the CPU preset at its own window;
* the cost of computing g with SmolLM2-135M versus looking it up in the cache;
* with ``--study``: a whole study (LUNG1-sized, 134 x 512 x 512 at 0.98 x 0.98 x 3 mm)
  through sliding-window inference at the paper size.

Usage: ``python benchmarks/bench_model.py [--device cpu|cuda] [--repeats 3] [--study]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

WINDOWS = [(128, 384, 384), (64, 192, 192), (32, 128, 128)]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_forward(
    preset_name: str, window: list[int], device: str, repeats: int
) -> dict[str, Any]:
    """Median forward time of one window, peak memory (run in a child process)."""
    import torch

    from model.network.config import preset
    from model.network.segmenter import ContourNet

    cfg = preset(preset_name, roi_size=tuple(window))
    net = ContourNet(cfg).to(device).eval()
    x = torch.rand(1, 1, *window, device=device)
    g = torch.randn(1, cfg.n_prompts, cfg.text_dim, device=device)
    amp = device == "cuda"
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device, dtype=torch.float16, enabled=amp):
                net(x, g)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # first call is warm-up
                times.append(time.perf_counter() - t0)
    out = {
        "preset": preset_name,
        "window": window,
        "device": device,
        "median_s": statistics.median(times),
        "runs": len(times),
    }
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def measure_study(device: str, repeats: int) -> dict[str, Any]:
    """A LUNG1-sized CT through preprocessing + sliding window at the paper size."""
    import numpy as np
    import torch

    from model.imaging.geometry import Grid, Volume
    from model.inference import Predictor
    from model.network.config import preset
    from model.network.segmenter import ContourNet

    cfg = preset("paper")
    net = ContourNet(cfg)
    grid = Grid((134, 512, 512), (-250.0, -250.0, -300.0), (3.0, 0.977, 0.977))
    ct = Volume(np.random.default_rng(0).normal(0, 300, grid.shape).astype(np.float32), grid)
    predictor = Predictor(net, None, device=device, sw_batch_size=4)
    g = torch.randn(1, cfg.n_prompts, cfg.text_dim)
    times, stages = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        pred = predictor.predict(ct, context=g)
        if i:
            times.append(time.perf_counter() - t0)
            stages.append(pred.timings)
    out = {
        "study_shape": list(grid.shape),
        "windows": pred.windows,
        "device": device,
        "median_s": statistics.median(times),
        "stages_median_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
    }
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def measure_context(repeats: int) -> dict[str, Any]:
    """SmolLM2 g computation versus a cache lookup (CPU)."""
    from model.network.config import preset
    from model.network.context import ContextCache, PromptContext, contexts_for
    from model.text.encoders import load_text_encoder

    t0 = time.perf_counter()
    enc = load_text_encoder("smollm2")
    load_s = time.perf_counter() - t0
    ctx = PromptContext(preset("cpu"), enc).eval()
    notes = [
        f"N{n}, cT2, breast conserving surgery, {side} side"
        for n in ("0", "1", "2", "3", "1mi")
        for side in ("left", "right")
    ]
    compute, lookup = [], []
    for i in range(repeats):
        cache = ContextCache()
        t0 = time.perf_counter()
        contexts_for(ctx, [notes[i % len(notes)]], cache)
        compute.append(time.perf_counter() - t0)
        calls = ctx.forward_calls
        t0 = time.perf_counter()
        contexts_for(ctx, [notes[i % len(notes)]], cache)
        lookup.append(time.perf_counter() - t0)
        if ctx.forward_calls != calls:
            raise RuntimeError("a cached note ran the language model")
    return {
        "encoder_load_s": load_s,
        "compute_median_ms": 1e3 * statistics.median(compute),
        "lookup_median_ms": 1e3 * statistics.median(lookup),
        "forward_calls_on_hit": 0,
        "repeats": repeats,
    }


def _child(kind: str, *params: str) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", kind, *params]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["killed"]
        return {"error": tail[0][:160], "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _print_forward_table(rows: list[dict[str, Any]]) -> None:
    print("\n| network | window (k x j x i) | device | forward median (s) | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | {r['window']} | {r['device']} | failed: {r['error']} | |")
            continue
        mem = r.get("peak_gpu_mb", r["peak_rss_mb"])
        kind = "GPU" if "peak_gpu_mb" in r else "RSS"
        win = " x ".join(map(str, r["window"]))
        print(
            f"| {r['preset']} | {win} | {r.get('gpu', r['device'])} | {r['median_s']:.3f} | "
            f"{mem:.0f} ({kind}) |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--study", action="store_true")
    parser.add_argument("--skip-context", action="store_true")
    parser.add_argument("--max-voxels", type=int, default=128 * 384 * 384)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "forward":
            result = measure_forward(rest[0], json.loads(rest[1]), rest[2], int(rest[3]))
        elif kind == "study":
            result = measure_study(rest[0], int(rest[1]))
        else:
            result = measure_context(int(rest[0]))
        print(json.dumps(result))
        return 0
    rows = []
    for window in WINDOWS:
        voxels = window[0] * window[1] * window[2]
        if voxels > args.max_voxels:
            continue
        row = _child("forward", "paper", json.dumps(window), args.device, str(args.repeats))
        rows.append({"preset": "paper", "window": window, "device": args.device, **(row or {})})
        if "error" not in rows[-1]:
            full = 128 * 384 * 384
            if voxels < full:
                print(
                    f"paper window {window}: extrapolated to 128x384x384 by voxel count: "
                    f"{rows[-1]['median_s'] * full / voxels:.1f} s"
                )
            break
    cpu = _child("forward", "cpu", json.dumps([32, 128, 128]), args.device, str(args.repeats))
    rows.append({"preset": "cpu", "window": [32, 128, 128], "device": args.device, **(cpu or {})})
    _print_forward_table(rows)
    if args.study:
        study = _child("study", args.device, str(args.repeats))
        print("\nwhole study (paper size):", json.dumps(study, indent=1))
    if not args.skip_context:
        ctx = _child("context", str(max(args.repeats, 5)))
        print("\n| g for one note (SmolLM2-135M, CPU) | median |")
        print("|---|---|")
        if ctx and "error" not in ctx:
            print(f"| computed (1 LLM forward) | {ctx['compute_median_ms']:.1f} ms |")
            print(f"| looked up (0 LLM forwards) | {ctx['lookup_median_ms']:.3f} ms |")
            print(f"| encoder load (cached safetensors) | {ctx['encoder_load_s']:.2f} s |")
        else:
            print(f"| failed | {ctx} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
