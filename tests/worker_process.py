"""Real Celery workers for tests: ``python -m workers worker`` in its own process group."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

from model.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
_names = itertools.count(1)


def worker_env(redis_url: str, storage: Path, **settings: object) -> dict[str, str]:
    """Environment of a worker: ``LLMCTV_*`` settings for one test deployment.

    The converted text encoder is reused from the real cache folder (converting it takes ~20 s).
    Threads are left at their defaults, as a user runs the worker (a thread limit of 1 hid
    the fork deadlock of issue 20: torch then never starts its OpenMP pool).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMCTV_") and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    env.update(
        PYTHONUNBUFFERED="1",
        LLMCTV_REDIS_URL=redis_url,
        LLMCTV_STORAGE_DIR=str(storage),
        LLMCTV_CACHE_DIR=str(get_settings().cache_dir),
        LLMCTV_DEVICE="cpu",
        LLMCTV_JOB_STALL_TIMEOUT="8",
        LLMCTV_VISIBILITY_TIMEOUT="40",
        LLMCTV_TASK_SOFT_TIME_LIMIT="30",
        LLMCTV_TASK_HARD_TIME_LIMIT="35",
        LLMCTV_UNACKED_RESTORE_INTERVAL="1",
    )
    env.update({f"LLMCTV_{k.upper()}": str(v).lower() for k, v in settings.items()})
    return env


class WorkerProcess:
    """``llmctv worker`` as a subprocess (its own session, so the whole group can be killed)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, *args: str) -> None:
        self.env = dict(env)
        self.node = f"llmctv-test{next(_names)}@localhost"
        self.args = ["--node", self.node, *args]
        self.log = log_dir / f"{self.node.split('@')[0]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker (returns at once; see :meth:`wait_ready`)."""
        command = [sys.executable, "-m", "workers", "worker", *self.args]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def facts(self, client: redis.Redis) -> list[dict[str, Any]]:
        """Facts this worker's pool processes published."""
        found = []
        for key in client.scan_iter(match=f"llmctv:worker:{self.node}:*"):
            raw = client.get(key)
            if raw is not None:
                found.append(json.loads(raw))
        return found

    def wait_ready(self, client: redis.Redis, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until a pool process has loaded its model; returns its facts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            loaded = [f for f in self.facts(client) if f.get("checkpoint")]
            if loaded:
                time.sleep(0.5)  # the consumer starts right after the pool
                return loaded[0]
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown (SIGTERM): the running job finishes first."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """``kill -9`` of the whole process group (main process and pool children)."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextmanager
def running_worker(
    env: Mapping[str, str], log_dir: Path, client: redis.Redis, *args: str
) -> Iterator[WorkerProcess]:
    """A started, ready worker; stopped (or killed) at the end."""
    worker = WorkerProcess(env, log_dir, *args)
    worker.start()
    try:
        worker.wait_ready(client)
        yield worker
    finally:
        worker.stop()
        worker.kill()
