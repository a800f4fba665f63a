"""What each worker process tells the gateway about itself, through Redis.

Every pool process writes ``llmctv:worker:<node>:<pid>`` (JSON, expires after
:data:`FACTS_TTL_S`) when its model is loaded, after each job, and every
:data:`HEARTBEAT_S` from a daemon thread. ``GET /health`` lists them: which workers hold the
language model, their device, memory, and LLM forward passes (0 per job on a cache hit).
No patient data is ever part of these facts.
"""

from __future__ import annotations

import json
import logging
import resource
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from workers.jobs import utcnow

log = logging.getLogger(__name__)

PREFIX = "llmctv:worker:"
HEARTBEAT_S = 15.0
FACTS_TTL_S = 60


def rss_mb() -> float:
    """Resident memory of this process in MiB (``/proc``; peak RSS where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class WorkerFacts:
    """One worker process, as ``GET /health`` shows it."""

    node: str
    pid: int
    queues: list[str]
    text_encoder: bool
    device: str = ""
    checkpoint: str = ""
    model_error: str | None = None
    rss_mb: float = 0.0
    jobs: int = 0
    llm_forward_calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    updated_at: str = ""


def publish(client: redis.Redis, facts: WorkerFacts) -> None:
    """Write ``facts`` with a fresh expiry (RSS and time refreshed here)."""
    facts.rss_mb = rss_mb()
    facts.updated_at = utcnow().isoformat(timespec="seconds")
    key = f"{PREFIX}{facts.node}:{facts.pid}"
    client.set(key, json.dumps(asdict(facts)), ex=FACTS_TTL_S)


def withdraw(client: redis.Redis, facts: WorkerFacts) -> None:
    """Remove a process's facts (on a clean shutdown)."""
    client.delete(f"{PREFIX}{facts.node}:{facts.pid}")


def read_all(client: redis.Redis) -> list[dict[str, Any]]:
    """Facts of every live worker process, sorted by node and pid."""
    keys = sorted(client.scan_iter(match=PREFIX + "*", count=100))
    if not keys:
        return []
    found = [json.loads(raw) for raw in client.mget(keys) if raw is not None]
    return sorted(found, key=lambda f: (str(f.get("node")), int(f.get("pid", 0))))


class Heartbeat:
    """Calls ``beat`` every ``interval_s`` in a daemon thread until stopped.

    ``beat`` runs at a thread boundary: a Redis error is logged and the next beat retries.
    """

    def __init__(self, beat: Callable[[], None], interval_s: float = HEARTBEAT_S) -> None:
        self.beat = beat
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmctv-facts", daemon=True)

    def start(self) -> None:
        """Begin beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("cannot publish worker facts: %s", exc)
