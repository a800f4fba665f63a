"""Counters and histograms of job execution, kept where the gateway's ``/metrics`` reads them.

Embedded mode keeps them in the gateway process (:class:`LocalMetrics`). In Celery mode every
process (gateway and workers) adds to one Redis hash, ``llmctv:metrics``
(:class:`RedisMetrics`, ``HINCRBYFLOAT``), and the gateway exposes that hash; so worker-side
numbers reach the gateway's endpoint without a second exporter, and survive restarts of the
gateway. :mod:`service.prometheus` turns a :meth:`snapshot` into Prometheus metric families.

A field is one series: ``[name, {label: value}]`` as JSON for counters; histograms add
``"le"`` (the bucket's upper bound, counts per bucket, not cumulative), ``"sum"`` or
``"count"``. Labels hold codes and stage names only, never patient data.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Protocol

import redis

log = logging.getLogger(__name__)
REDIS_KEY = "llmctv:metrics"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Upper bounds (seconds) of the duration histograms."""

Labels = Mapping[str, str]


def series_key(name: str, labels: Labels, part: str | None = None) -> str:
    """The field of one series (``part``: ``le=<bound>``, ``sum`` or ``count``)."""
    key: list[object] = [name, dict(sorted(labels.items()))]
    if part is not None:
        key.append(part)
    return json.dumps(key, separators=(",", ":"))


def parse_key(field: str) -> tuple[str, dict[str, str], str | None]:
    """``series_key`` backwards."""
    loaded = json.loads(field)
    part = loaded[2] if len(loaded) > 2 else None
    return str(loaded[0]), {str(k): str(v) for k, v in loaded[1].items()}, part


def bucket_of(value: float) -> str:
    """``le=<bound>`` of the smallest bucket holding ``value`` (``le=+Inf`` above all)."""
    index = bisect.bisect_left(BUCKETS, value)
    return f"le={BUCKETS[index]}" if index < len(BUCKETS) else "le=+Inf"


def histogram_fields(name: str, labels: Labels, value: float) -> dict[str, float]:
    """The increments one observation makes."""
    return {
        series_key(name, labels, bucket_of(value)): 1.0,
        series_key(name, labels, "sum"): float(value),
        series_key(name, labels, "count"): 1.0,
    }


class MetricsSink(Protocol):
    """Where counters and histograms go."""

    def incr(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        """Add to a counter."""

    def observe(self, name: str, labels: Labels, value: float) -> None:
        """Add one observation to a histogram."""

    def snapshot(self) -> dict[str, float]:
        """Every field and its value."""


class LocalMetrics:
    """Metrics in this process (embedded mode)."""

    def __init__(self) -> None:
        self._values: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def _add(self, increments: Mapping[str, float]) -> None:
        with self._lock:
            for field, amount in increments.items():
                self._values[field] += amount

    def incr(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        """Add to a counter."""
        self._add({series_key(name, labels): amount})

    def observe(self, name: str, labels: Labels, value: float) -> None:
        """Add one observation to a histogram."""
        self._add(histogram_fields(name, labels, value))

    def snapshot(self) -> dict[str, float]:
        """Every field and its value."""
        with self._lock:
            return dict(self._values)


class RedisMetrics:
    """Metrics in the Redis hash :data:`REDIS_KEY`, shared by the gateway and every worker.

    A failing Redis loses the increment (logged), never the job.
    """

    def __init__(self, client: redis.Redis, key: str = REDIS_KEY) -> None:
        self.client = client
        self.key = key

    def _add(self, increments: Mapping[str, float]) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for field, amount in increments.items():
                    pipe.hincrbyfloat(self.key, field, amount)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics not recorded (Redis): %s", exc)

    def incr(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        """Add to a counter."""
        self._add({series_key(name, labels): amount})

    def observe(self, name: str, labels: Labels, value: float) -> None:
        """Add one observation to a histogram."""
        self._add(histogram_fields(name, labels, value))

    def snapshot(self) -> dict[str, float]:
        """Every field and its value (raises ``redis.RedisError`` when Redis is down)."""
        raw = self.client.hgetall(self.key)
        return {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()}
