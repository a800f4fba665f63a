"""Latency breakdown of one contouring job as a worker runs it (prints one table).

The job goes through :func:`workers.pipeline.run_job` with the worker's engine, job records in
Redis and g in the Redis embedding cache, exactly as under Celery (queueing aside). Stages are
those the job records: DICOM ingest, preprocessing, embedding (Redis lookup when cached, one LLM
forward pass when not), network (sliding window), postprocessing (body mask, islands, structures
on the CT grid), anatomical plausibility, consistency warnings, RTSTRUCT writing, PNG preview;
"all but network" is their sum without the network. Median of ``--repeats`` jobs per row; an N0
one-sided note (a structure-set model never runs a second, nodal-check pass; a single-CTV model
does for an N+ note, and a bilateral note is contoured side by side: two passes).

Cases: a generated phantom and the real LUNG1 CT (134 x 512 x 512) when ``../shared/data`` is
present. ``redis-server`` is started on a free loopback port (``--redis-url`` to use another;
without either, an in-process cache stands in and the table says so).

``python benchmarks/bench_job.py [--repeats 3] [--scale 0.5] [--device auto] [--threads N]``
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import torch

from model.contouring.engine import ContourEngine
from model.dicom.series import read_ct_series
from model.lab.phantoms.cohort import write_cohort
from model.network.context import ContextCache, context_key
from model.settings import with_overrides
from workers.embedding_cache import RedisContextCache
from workers.jobs import FileJobStore, Job, JobFiles, JobStore, new_job_id
from workers.model_loading import load_engine
from workers.pipeline import run_job
from workers.redis_store import RedisJobStore, connect
from workers.runtime import build_engine
from workers.settings import WorkerSettings

LUNG1_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "lung1_ct_rtstruct"
LUNG1_CT = LUNG1_CT / "LUNG1-001" / "image"
CLINICAL = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "0"}]
}
NOTE = "N0, cT2, breast conserving surgery, left side"
STAGES = (
    "ingest",
    "preprocess",
    "context",
    "network",
    "postprocess",
    "plausibility",
    "consistency",
    "rtstruct",
    "preview",
)
HEADERS = (
    "ingest",
    "preproc",
    "embedding",
    "network",
    "postproc",
    "plausibility",
    "consistency",
    "rtstruct",
    "preview",
)


@contextmanager
def redis_url(given: str | None, folder: Path) -> Iterator[str | None]:
    """``given``, else a throw-away ``redis-server`` on a free port, else ``None``."""
    server = shutil.which("redis-server")
    if given or server is None:
        yield given
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    process = subprocess.Popen([*args, "--save", ""], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            try:
                connect(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@dataclass
class Bench:
    """What every job of the benchmark shares."""

    engine: ContourEngine
    store: JobStore
    files: JobFiles
    settings: WorkerSettings
    cache: RedisContextCache | None


def one_job(bench: Bench, ct: Path) -> dict[str, float]:
    """Run one job on a copy of ``ct``; its recorded seconds per stage."""
    job_id = new_job_id()
    shutil.copytree(ct, bench.files.input_dir(job_id))
    bench.store.create(Job(job_id=job_id, clinical=CLINICAL))
    run_job(job_id, bench.store, bench.files, bench.engine, bench.settings)
    job = bench.store.get(job_id)
    if job.error is not None:
        raise RuntimeError(f"job failed: {job.error.code}")
    bench.files.remove(job_id)
    return job.timings


def forget_note(bench: Bench) -> None:
    """Remove the note's g from the cache so the next job computes it."""
    predictor = bench.engine.predictor
    if predictor.context is None or bench.cache is None:
        predictor.cache = ContextCache()
        return
    key = context_key(predictor.context.identity, predictor.context.digest(), NOTE)
    bench.cache.client.delete(bench.cache.prefix + key)


def row(bench: Bench, label: str, ct: Path, cached: bool, runs: int) -> list[str]:
    """Median milliseconds per stage over ``runs`` jobs."""
    samples = []
    for _ in range(runs):
        if not cached:
            forget_note(bench)
        samples.append(one_job(bench, ct))
    medians = [statistics.median(s.get(k, 0.0) for s in samples) for k in STAGES]
    cells = [f"{1000 * m:.1f}" for m in medians]
    but_network = sum(m for k, m in zip(STAGES, medians, strict=True) if k != "network")
    totals = [f"{1000 * but_network:.0f}", f"{1000 * sum(medians):.0f}"]
    return [label, "cached" if cached else "computed", *cells, *totals]


def print_table(rows: list[list[str]], title: str) -> None:
    """Markdown table, milliseconds."""
    head = ["case", "g", *HEADERS, "all but network", "total"]
    print(title)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def build_bench(settings: WorkerSettings, url: str | None) -> Bench:
    """The worker's engine, store and cache (Redis when ``url`` is given)."""
    files = JobFiles(settings.storage.storage_dir)
    if url is None:
        return Bench(load_engine(settings), FileJobStore(files), files, settings, None)
    cache = RedisContextCache(connect(url))
    store = RedisJobStore(connect(url))
    return Bench(build_engine(settings, cache), store, files, settings, cache)


def cases(root: Path, scale: float) -> dict[str, Path]:
    """A generated phantom, and LUNG1-001 when the shared data are present."""
    phantom = write_cohort(root / "ph", 1, "A", 5, scale=scale)[0].directory / "ct"
    found = {"phantom": phantom}
    if LUNG1_CT.is_dir():
        found["LUNG1-001"] = LUNG1_CT
    return found


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.5, help="phantom matrix scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: demo model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--no-text-encoder",
        action="store_true",
        help="a worker without the LLM: cached rows only (the note must be in --redis-url)",
    )
    return parser.parse_args()


def main() -> int:
    """Run the benchmark and print the table."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, redis_url(args.redis_url, Path(tmp)) as url:
        root = Path(tmp)
        settings = WorkerSettings.from_env(
            redis_url=url,
            storage_dir=root / "store",
            device=args.device,
            worker_text_encoder=not args.no_text_encoder,
        )
        if args.checkpoint is not None:
            settings = with_overrides(settings, {"checkpoint": args.checkpoint})
        bench = build_bench(settings, url)
        conditions = (True,) if args.no_text_encoder else (True, False)
        rows = []
        for name, ct in cases(root, args.scale).items():
            shape = read_ct_series(ct).volume.array.shape
            label = f"{name} {'x'.join(map(str, shape))}"
            one_job(bench, ct)  # warm-up (allocations, page cache)
            for cached in conditions:
                rows.append(row(bench, label, ct, cached, args.repeats))
        engine = bench.engine
        device = engine.predictor.device
        gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        where = "Redis" if url else "an in-process cache (no redis-server)"
        where += ", LLM not loaded" if args.no_text_encoder else ""
        print_table(
            rows,
            f"job latency in ms, median of {args.repeats}; device {device.type}{gpu}, "
            f"{torch.get_num_threads()} CPU threads; g from {where}; checkpoint "
            f"{engine.checkpoint_hash}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
