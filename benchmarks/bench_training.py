"""Training throughput with 1 and 2 DDP processes, and memory of the case cache; prints tables.

Not a test. Each measurement is a real ``torchrun --standalone --nproc_per_node=P`` job of
:class:`model.training.trainer.Trainer` (gloo on a CPU, nccl on CUDA devices) on a case cache:
``--cache DIR`` (e.g. ``out/demo-model/structures-dr/cache``; the first ``--cases`` entries), or
synthetic entries of ``--shape`` voxels written like ``build_cache`` does. The rate is global
training crops per second over the steps of a run (data loading included; the first step,
validation and saving excluded: :attr:`TrainResult.samples_per_second`); the table gives the
median and the range of ``--runs`` runs. ``--batch-size`` is the global batch, so 2 processes
do the same work per step as 1.

``--rss`` measures the cache's memory instead: the resident memory of one process that loads
every entry of ``--cache`` read into RAM, or memory-mapped (:func:`load_cached`), and then
builds ``--steps`` batches of crops from them.

Usage::

    python benchmarks/bench_training.py [--cache DIR] [--cases 12] [--procs 1 2] [--runs 3]
        [--steps 6] [--preset cpu] [--text-encoder smollm2] [--batch-size 2] [--workers 0]
        [--device auto]
    python benchmarks/bench_training.py --rss --cache DIR [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def memory_kb() -> dict[str, int]:
    """RssAnon (private), RssFile (file-backed, e.g. memory maps) and VmHWM of this process."""
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile", "VmHWM"):
                found[key] = int(line.split()[1])
    return found


def synthetic_cache(folder: Path, cases: int, shape: tuple[int, int, int]) -> None:
    """``cases`` entries as ``build_cache`` writes them: a smooth CT, one CTV block, a note."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    k, j, i = shape
    for n in range(cases):
        rng = np.random.default_rng(n)
        image = (rng.random(shape) * 0.1).astype(np.float32)
        side = "left" if n % 2 else "right"
        cols = slice(i // 2 + 4, i - 8) if side == "left" else slice(8, i // 2 - 4)
        image[k // 4 : 3 * k // 4, j // 4 : 3 * j // 4, 8 : i - 8] += 0.5
        label = np.zeros(shape, np.uint8)
        label[k // 4 : 3 * k // 4, j // 4 : 3 * j // 4, cols] = 1
        meta = {
            "case_id": f"S{n:04d}",
            "note": f"N{n % 2}, cT2, breast conserving surgery, {side} side",
            "spacing": [3.0, 1.0, 1.0],
            "group": f"ct{n}",
        }
        np.savez(
            folder / f"S{n:04d}.npz",
            image=image.astype(np.float16),
            label=label,
            meta=np.array(json.dumps(meta)),
        )


# --- one rank of a torchrun job -------------------------------------------------------------
def rank_run(args: argparse.Namespace) -> int:
    """Train ``--steps`` steps as one rank; rank 0 writes ``OUT/result.json``."""
    import numpy as np
    import torch

    from model.inference import resolve_device
    from model.network.config import preset
    from model.network.structures import BREAST_STRUCTURES
    from model.text.encoders import load_text_encoder
    from model.training.dataset import load_cached
    from model.training.distributed import distributed
    from model.training.trainer import TrainConfig, Trainer

    out = Path(args.rank_run)
    ids = sorted(p.stem for p in Path(args.cache).glob("*.npz") if not p.name.startswith("."))
    cases = load_cached(Path(args.cache), ids[: args.cases])
    classes = max(int(np.max(c.label)) for c in cases)
    names = BREAST_STRUCTURES[:classes] if classes > 1 else ()
    with distributed(resolve_device(args.device), required=True) as dist:
        encoder = load_text_encoder(args.text_encoder)
        config = preset(args.preset, text_dim=encoder.hidden_size).with_structures(names)
        train = TrainConfig(
            epochs=1,
            steps_per_epoch=args.steps,
            batch_size=args.batch_size,
            device=args.device,
            val_fraction=0.01,  # one CT: validation is not measured
            workers=args.workers,
        )
        trainer = Trainer(config, train, out, encoder, {}, dist=dist)
        result = trainer.fit(cases)
        memory = memory_kb()
        rss = torch.tensor([memory["RssAnon"], memory["RssFile"]], dtype=torch.float64)
        if dist.enabled:
            rss = rss.to(trainer.device)
            torch.distributed.all_reduce(rss)
        if dist.is_main:
            doc = {
                "samples_per_second": result.samples_per_second,
                "steps": result.steps,
                "world_size": dist.world_size,
                "device": str(trainer.device),
                "rss_anon_mb_all_ranks": float(rss[0]) / 1024,
                "rss_file_mb_all_ranks": float(rss[1]) / 1024,
            }
            (out / "result.json").write_text(json.dumps(doc))
    return 0


def one_job(args: argparse.Namespace, procs: int, cache: Path, device: str) -> dict[str, Any]:
    """One torchrun job of ``procs`` ranks; its rank-0 result."""
    with tempfile.TemporaryDirectory() as tmp:
        threads = max(1, (os.cpu_count() or 1) // procs)
        # The thread count goes to the child through env(1): nothing here reads the environment.
        command = ["env", f"OMP_NUM_THREADS={threads}"]
        command += [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={procs}", str(HERE), "--rank-run", tmp]
        command += ["--cache", str(cache), "--cases", str(args.cases), "--steps", str(args.steps)]
        command += ["--preset", args.preset, "--text-encoder", args.text_encoder]
        command += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        command += ["--device", device]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"torchrun failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads((Path(tmp) / "result.json").read_text())
        result["wall_s"] = time.perf_counter() - start
        result["threads_per_rank"] = threads
        return result


def throughput(args: argparse.Namespace) -> None:
    """The table of crops/s per process count (CPU, and CUDA when present)."""
    import torch

    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        if not args.cache:
            shape = (args.shape[0], args.shape[1], args.shape[2])
            synthetic_cache(cache, args.cases, shape)
        print(
            f"cache {cache if args.cache else 'synthetic ' + 'x'.join(map(str, args.shape))}, "
            f"{args.cases} cases; preset {args.preset}, text encoder {args.text_encoder}; "
            f"global batch {args.batch_size}, {args.steps} steps per run, {args.runs} runs, "
            f"{args.workers} DataLoader workers per rank; {os.cpu_count()} CPU cores"
        )
        print(
            f"{'device':<8} {'procs':>5} {'thr/rank':>8} {'crops/s median':>15} {'min':>7} "
            f"{'max':>7} {'vs 1 proc':>9} {'RssAnon MB (all)':>17}"
        )
        for device in devices:
            gpus = torch.cuda.device_count() if device == "cuda" else 0
            base = None
            for procs in args.procs:
                if device == "cuda" and procs > gpus:
                    print(f"{device:<8} {procs:>5} skipped: {gpus} CUDA device(s)")
                    continue
                runs = [one_job(args, procs, cache, device) for _ in range(args.runs)]
                rates = [r["samples_per_second"] for r in runs]
                median = statistics.median(rates)
                base = median if base is None else base
                rss = statistics.median(r["rss_anon_mb_all_ranks"] for r in runs)
                print(
                    f"{device:<8} {procs:>5} {runs[0]['threads_per_rank']:>8} {median:>15.3f} "
                    f"{min(rates):>7.3f} {max(rates):>7.3f} {median / base:>8.2f}x {rss:>17.0f}",
                    flush=True,
                )


# --- memory of the cache ----------------------------------------------------------------------
def rss_probe(args: argparse.Namespace) -> int:
    """Child: load the cache (read or mapped), build batches; print memory after each."""
    from model.training.batches import BatchPlan, StepBatches
    from model.training.dataset import load_cached

    before = memory_kb()
    start = time.perf_counter()
    cases = load_cached(Path(args.cache), mmap=args.rss_probe == "mmap")
    loaded = memory_kb()
    load_s = time.perf_counter() - start
    batches = StepBatches(cases, BatchPlan(roi=(32, 128, 128), batch_size=args.batch_size))
    start = time.perf_counter()
    for step in range(args.steps):
        batches[step]
    cropped = memory_kb()
    doc = {
        "cases": len(cases),
        "bytes": sum(c.image.nbytes + c.label.nbytes for c in cases),
        "before": before,
        "loaded": loaded,
        "cropped": cropped,
        "load_s": load_s,
        "crop_s": (time.perf_counter() - start) / max(1, args.steps),
    }
    print(json.dumps(doc))
    return 0


def rss_table(args: argparse.Namespace) -> None:
    """Read-into-RAM against memory-mapped cache, each in a fresh process."""
    if not args.cache:
        raise SystemExit("--rss needs --cache DIR")
    print(f"cache {args.cache}; {args.steps} batches of {args.batch_size} crops of 32x128x128")
    print(
        f"{'mode':<6} {'cases':>5} {'data MB':>8} {'load s':>7} {'RssAnon after load':>19} "
        f"{'RssFile after load':>19} {'RssAnon after crops':>20} {'RssFile after crops':>20}"
    )
    for mode in ("read", "mmap"):
        command = [sys.executable, str(HERE), "--rss-probe", mode, "--cache", args.cache]
        command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
        doc = json.loads(done.stdout.strip().splitlines()[-1])

        def mb(stage: str, key: str, doc: dict[str, Any] = doc) -> str:
            return f"{(doc[stage][key] - doc['before'][key]) / 1024:+.0f} MB"

        print(
            f"{mode:<6} {doc['cases']:>5} {doc['bytes'] / 2**20:>8.0f} {doc['load_s']:>7.1f} "
            f"{mb('loaded', 'RssAnon'):>19} {mb('loaded', 'RssFile'):>19} "
            f"{mb('cropped', 'RssAnon'):>20} {mb('cropped', 'RssFile'):>20}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=None, help="a case cache folder (default: synthetic)")
    parser.add_argument("--cases", type=int, default=12, help="cache entries to train on")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 160, 160], metavar="N")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--text-encoder", default="smollm2")
    parser.add_argument("--batch-size", type=int, default=2, help="global batch")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank")
    parser.add_argument("--device", default="auto", help="auto (CPU, and CUDA if any) | cpu | cuda")
    parser.add_argument("--rss", action="store_true", help="measure the cache's memory instead")
    parser.add_argument("--rank-run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-probe", choices=["read", "mmap"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_run:
        return rank_run(args)
    if args.rss_probe:
        return rss_probe(args)
    if args.rss:
        rss_table(args)
    else:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
