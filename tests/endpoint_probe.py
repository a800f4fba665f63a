"""Polls one gateway endpoint in a thread while a test does something else."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np


class EndpointProbe:
    """GETs ``url + path`` every ``interval_s``; keeps (time, status) and every latency."""

    def __init__(self, url: str, path: str = "/health", interval_s: float = 0.1) -> None:
        self.target = url + path
        self.interval_s = interval_s
        self.seen: list[tuple[float, int]] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> EndpointProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.interval_s):
                t0 = time.perf_counter()
                status = client.get(self.target).status_code
                self.latencies.append(time.perf_counter() - t0)
                self.seen.append((time.monotonic(), status))

    @property
    def slowest(self) -> float:
        """The slowest answer (s)."""
        return max(self.latencies, default=0.0)

    @property
    def failures(self) -> int:
        """Answers other than 200."""
        return sum(status != 200 for _, status in self.seen)

    def p99_ms(self) -> float:
        """99th percentile latency in milliseconds."""
        return 1000 * float(np.percentile(self.latencies, 99))

    def not_ready_seconds(self) -> float:
        """Time from the first to the last 503 the probe saw."""
        times = [t for t, s in self.seen if s == 503]
        return times[-1] - times[0] if times else 0.0
