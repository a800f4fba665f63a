"""Ingest time of LUNG1 (134 CT slices, 67 MB): STOW-RS against C-STORE on this machine.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ingest.py [--runs 3] [--ct DIR]

One gateway (embedded worker, DICOM listener on) runs in this process on free loopback ports.
Each run stores the whole series and is timed from the client's start to its exit, when every
instance has been acknowledged as stored (fsynced and renamed into place):

- ``C-STORE``: dcmtk ``storescu`` (one association, every file);
- ``STOW-RS``: ``curl`` posting one ``multipart/related; type="application/dicom"`` body of
  every file (built once beforehand, from a file, so both clients are C programs reading disk).

The storage folder is emptied between runs. Prints a table with the median and every run.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LUNG1_CT = REPO.parent / "shared" / "data" / "lung1_ct_rtstruct" / "LUNG1-001" / "image"
TOKEN = "bench-ingest-token-0123456789"
BOUNDARY = "llmctv-bench-boundary"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _multipart(files: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for path in files:
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            out.write(path.read_bytes())
            out.write(b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())


def _c_store(port: int, ct: Path) -> float:
    command = ["storescu", "-aet", "BENCH", "-aec", "LLMCTV", "+sd", "+r", "127.0.0.1", str(port)]
    started = time.perf_counter()
    subprocess.run([*command, str(ct)], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


def _stow(url: str, body: Path) -> float:
    content_type = f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    command = [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", content_type,
        "-H", f"Authorization: Bearer {TOKEN}", "--data-binary", f"@{body}",
        f"{url}/dicomweb/studies",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.stdout.strip() != "200":
        raise RuntimeError(f"STOW-RS answered {done.stdout.strip()}")
    return elapsed


def _serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=settings.http.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{settings.http.port}"
    while time.monotonic() < deadline:  # started, and the model loaded (no CPU use after)
        if server.started:
            facts = httpx.get(f"{url}/health/live", timeout=5).json()["dispatcher"]
            if facts.get("model_loaded") or facts.get("model_error"):
                return server, thread
        time.sleep(0.2)
    raise RuntimeError("the gateway did not start")


def _empty(received: Path) -> None:
    if received.exists():
        shutil.rmtree(received)
    received.mkdir(parents=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ct", type=Path, default=LUNG1_CT)
    args = parser.parse_args()
    files = sorted(args.ct.glob("*.dcm"))
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        settings = Settings.from_env(
            api_tokens=[TOKEN],
            storage_dir=root / "storage",
            port=_free_port(),
            dicom_listener=True,
            dicom_port=_free_port(),
            dicom_series_timeout_s=1.0,
            storage_min_free_bytes=1,
        )
        body = root / "stow-body.bin"
        _multipart(files, body)
        server, thread = _serve(settings)
        url = f"http://127.0.0.1:{settings.http.port}"
        received = settings.storage.storage_dir / "dicom" / "received"
        times: dict[str, list[float]] = {"C-STORE (storescu)": [], "STOW-RS (curl)": []}
        try:
            for _ in range(args.runs):
                for name in times:
                    _empty(received)
                    if name.startswith("C-STORE"):
                        times[name].append(_c_store(settings.dicom.dicom_port, args.ct))
                    else:
                        times[name].append(_stow(url, body))
                    stored = len(list(received.glob("*/*/*.dcm")))
                    if stored != len(files):
                        raise RuntimeError(f"{name}: {stored} of {len(files)} stored")
                    time.sleep(settings.dicom.dicom_series_timeout_s * 1.5)  # let the series settle
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    print(f"LUNG1: {len(files)} instances, {size_mb:.1f} MB, {args.runs} runs each")
    print(f"{'transport':<22}{'median s':>10}{'MB/s':>8}   runs (s)")
    for name, runs in times.items():
        median = statistics.median(runs)
        shown = ", ".join(f"{t:.2f}" for t in runs)
        print(f"{name:<22}{median:>10.2f}{size_mb / median:>8.1f}   {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
