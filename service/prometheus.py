"""``GET /metrics``: Prometheus text format, for administrators.

Counters and histograms come from the :class:`~workers.counters.MetricsSink` of the deployment
(in-process in embedded mode; the Redis hash ``llmctv:metrics`` in Celery mode, to which the
workers add their own numbers). Gauges are read at scrape time from facts that are already in
memory: the dispatcher's queue lengths and embedding-cache counters (gathered in the
background in Celery mode), the readiness checks, and the storage folder's free space.

Exposed names (all ``llmctv_``): ``jobs_submitted_total{source}``,
``jobs_finished_total{status,code}``, ``job_duration_seconds{status}``,
``job_queue_wait_seconds``, ``job_stage_duration_seconds{stage}``,
``dicom_associations_total{outcome,reason}``, ``rtstruct_sends_total{outcome}``,
``dicomweb_instances_total{outcome}``,
``queue_depth{queue}``, ``embedding_cache_hits_total``, ``embedding_cache_misses_total``,
``workers_alive``, ``jobs_stalled``, ``jobs_requeued_total{reason}``,
``jobs_needing_attention_total``, ``storage_free_bytes``,
``ready{check}``, ``metrics_store_up``.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from service.deps import Admin, MetricsDep
from service.readiness import Readiness
from workers.counters import BUCKETS, MetricsSink, parse_key
from workers.dispatch import JobDispatcher

router = APIRouter()
PREFIX = "llmctv_"
HELP = {
    "jobs_submitted": "Jobs accepted, by source (http, dicom).",
    "jobs_finished": "Jobs that reached a final state, by status and error code.",
    "dicom_associations": "DICOM associations, accepted or rejected, by reason.",
    "rtstruct_sends": "RTSTRUCT send-backs to a destination, by outcome.",
    "dicomweb_instances": "Instances received over STOW-RS, stored or refused.",
    "jobs_requeued": "Jobs queued again, by reason (stalled: no progress within the lease).",
    "jobs_needing_attention": "Succeeded jobs with needs-attention findings (held for review).",
    "dicom_instances_quarantined": "Instances kept aside: their series held another patient.",
    "job_duration_seconds": "Seconds from a job's start to its final state.",
    "job_queue_wait_seconds": "Seconds a job waited in the queue before a worker started it.",
    "job_stage_duration_seconds": "Seconds per pipeline stage (from the job record's timings).",
}


def _counter_and_histogram_families(values: dict[str, float]) -> Iterator[Metric]:
    counters: defaultdict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    histograms: defaultdict[str, dict[tuple[tuple[str, str], ...], dict[str, float]]]
    histograms = defaultdict(lambda: defaultdict(dict))
    for field, value in values.items():
        name, labels, part = parse_key(field)
        if part is None:
            counters[name].append((labels, value))
        else:
            histograms[name][tuple(sorted(labels.items()))][part] = value
    for name, samples in sorted(counters.items()):
        label_names = sorted(samples[0][0])
        family = CounterMetricFamily(PREFIX + name, HELP.get(name, name), labels=label_names)
        for labels, value in samples:
            family.add_metric([labels.get(n, "") for n in label_names], value)
        yield family
    for name, series in sorted(histograms.items()):
        label_names = [k for k, _ in next(iter(series))]
        histogram = HistogramMetricFamily(PREFIX + name, HELP.get(name, name), labels=label_names)
        for label_items, parts in series.items():
            histogram.add_metric(
                [v for _, v in label_items], _cumulative(parts), parts.get("sum", 0.0)
            )
        yield histogram


def _cumulative(parts: dict[str, float]) -> list[tuple[str, float]]:
    total = 0.0
    buckets: list[tuple[str, float]] = []
    for bound in BUCKETS:
        total += parts.get(f"le={bound}", 0.0)
        buckets.append((str(bound), total))
    buckets.append(("+Inf", total + parts.get("le=+Inf", 0.0)))
    return buckets


def _queue_depths(facts: dict[str, Any]) -> dict[str, float]:
    queued = facts.get("queued")
    if isinstance(queued, dict):
        return {str(k): float(v) for k, v in queued.items()}
    return {"embedded": float(queued or 0)}


def _cache_counts(facts: dict[str, Any]) -> tuple[float, float]:
    workers = facts.get("workers")
    if isinstance(workers, list):
        hits = sum(float(w.get("cache_hits") or 0) for w in workers)
        misses = sum(float(w.get("cache_misses") or 0) for w in workers)
        return hits, misses
    return float(facts.get("cache_hits") or 0), float(facts.get("cache_misses") or 0)


class LlmctvCollector(Collector):
    """The metrics of one gateway (see the module docstring for the names)."""

    def __init__(
        self,
        sink: MetricsSink,
        dispatcher: JobDispatcher,
        storage_dir: Path,
        readiness: Readiness | None = None,
    ) -> None:
        self.sink = sink
        self.dispatcher = dispatcher
        self.storage_dir = storage_dir
        self.readiness = readiness

    def collect(self) -> Iterator[Metric]:
        """Every family, read now."""
        try:
            values, up = self.sink.snapshot(), 1.0
        except redis.RedisError:
            values, up = {}, 0.0
        yield from _counter_and_histogram_families(values)
        yield GaugeMetricFamily(
            PREFIX + "metrics_store_up", "Whether the shared metrics store answered.", value=up
        )
        facts = self.dispatcher.describe()
        depth = GaugeMetricFamily(
            PREFIX + "queue_depth", "Jobs waiting, by queue.", labels=["queue"]
        )
        for queue, n in sorted(_queue_depths(facts).items()):
            depth.add_metric([queue], n)
        yield depth
        hits, misses = _cache_counts(facts)
        yield CounterMetricFamily(
            PREFIX + "embedding_cache_hits", "Context embeddings found in the cache.", value=hits
        )
        yield CounterMetricFamily(
            PREFIX + "embedding_cache_misses", "Context embeddings computed.", value=misses
        )
        workers = facts.get("workers")
        alive = (
            float(len(workers))
            if isinstance(workers, list)
            else float(facts.get("model_loaded") is True)
        )
        yield GaugeMetricFamily(
            PREFIX + "workers_alive", "Workers with a loaded model.", value=alive
        )
        yield GaugeMetricFamily(
            PREFIX + "jobs_stalled",
            "Running jobs past their lease without progress (a stuck or dead worker).",
            value=float(str(facts.get("stalled_jobs") or 0)),
        )
        yield from self._storage_and_readiness()

    def _storage_and_readiness(self) -> Iterator[Metric]:
        try:
            free = float(shutil.disk_usage(self.storage_dir).free)
        except OSError:
            free = 0.0
        yield GaugeMetricFamily(
            PREFIX + "storage_free_bytes", "Free bytes in the storage folder.", value=free
        )
        if self.readiness is not None:
            ready = GaugeMetricFamily(
                PREFIX + "ready", "Readiness checks (1 passing, 0 failing).", labels=["check"]
            )
            for check in self.readiness.latest():
                ready.add_metric([check.name], 1.0 if check.ok else 0.0)
            yield ready


def metrics_registry(collector: LlmctvCollector) -> CollectorRegistry:
    """A registry of its own (never the process-global one) holding ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format"}},
)
def metrics(registry: MetricsDep, _: Admin) -> Response:
    """The gateway's metrics in the Prometheus text format."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
