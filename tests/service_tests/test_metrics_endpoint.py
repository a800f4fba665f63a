"""``GET /metrics``: Prometheus text, admin only; the numbers after real jobs, parsed back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fake_engine import FakeEngine
from gateway_client import submit, wait_finished
from live_server import serve_app
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis_server import needs_redis, running_redis

from model.errors import ModelNotFoundError
from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.prometheus import LlmctvCollector, metrics_registry
from service.readiness import Readiness
from service.settings import Settings
from workers.counters import RedisMetrics

ADMIN = "metrics-admin-0123456789"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Gateway:
    url: str
    engine: FakeEngine


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from gateway_client import TOKEN

    settings = Settings.from_env(
        api_tokens=[TOKEN, f"ops:admin:{ADMIN}"],
        storage_dir=tmp_path_factory.mktemp("storage"),
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    engine = FakeEngine()
    with serve_app(create_app(settings, engine=engine)) as url:
        yield Gateway(url, engine)


def scrape(url: str) -> dict[str, list[Sample]]:
    """Every sample of ``/metrics``, by family name, parsed with prometheus-client's parser."""
    answer = httpx.get(f"{url}/metrics", headers=ADMIN_AUTH)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(answer.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_metrics_after_one_succeeded_and_one_failed_job(
    gateway: Gateway, phantoms: list[WrittenCase]
) -> None:
    case = phantoms[0]
    job = submit(gateway.url, list(case.ct_files), case.clinical.model_dump_json()).json()
    assert wait_finished(gateway.url, job["job_id"])["status"] == "succeeded"
    gateway.engine.fail_with = ModelNotFoundError("no weights (test)")
    try:
        job = submit(gateway.url, list(case.ct_files), case.clinical.model_dump_json()).json()
        assert wait_finished(gateway.url, job["job_id"])["status"] == "failed"
    finally:
        gateway.engine.fail_with = None

    m = scrape(gateway.url)
    jobs = m["llmctv_jobs_finished"]
    assert value(jobs, "llmctv_jobs_finished_total", status="succeeded", code="") == 1
    assert value(jobs, "llmctv_jobs_finished_total", status="failed", code="model_not_found") == 1
    submitted = m["llmctv_jobs_submitted"]
    assert value(submitted, "llmctv_jobs_submitted_total", source="http") == 2
    duration = m["llmctv_job_duration_seconds"]
    assert value(duration, "llmctv_job_duration_seconds_count", status="succeeded") == 1
    assert value(duration, "llmctv_job_duration_seconds_bucket", status="succeeded", le="+Inf") == 1
    stages = m["llmctv_job_stage_duration_seconds"]
    for stage in ("ingest", "preprocess", "context", "network", "postprocess", "rtstruct"):
        assert value(stages, "llmctv_job_stage_duration_seconds_count", stage=stage) == 1
    assert value(m["llmctv_queue_depth"], "llmctv_queue_depth", queue="embedded") == 0
    assert value(m["llmctv_storage_free_bytes"], "llmctv_storage_free_bytes") > 0
    assert "llmctv_embedding_cache_hits" in m and "llmctv_embedding_cache_misses" in m
    assert value(m["llmctv_ready"], "llmctv_ready", check="storage") == 1


def test_metrics_need_an_admin(gateway: Gateway) -> None:
    from gateway_client import AUTH

    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    # The bare token of gateway_client is the "default" admin identity of earlier versions.
    assert httpx.get(f"{gateway.url}/metrics", headers=AUTH).status_code == 200


@needs_redis
def test_worker_side_numbers_reach_the_gateway_through_redis(tmp_path: Path) -> None:
    """Celery mode: a worker's increments in Redis appear in the gateway's scrape."""
    with running_redis(tmp_path / "redis", persistent=False) as server:
        worker_side = RedisMetrics(server.client())
        worker_side.incr("jobs_finished", {"status": "failed", "code": "job_timeout"})
        worker_side.observe("job_stage_duration_seconds", {"stage": "network"}, 42.0)

        class Dispatcher:
            def describe(self) -> dict[str, object]:
                return {"mode": "celery", "queued": {"contour": 3, "text": 0}, "workers": []}

        settings = Settings.from_env(api_tokens=[ADMIN], storage_dir=tmp_path, dicom_listener=False)
        collector = LlmctvCollector(
            RedisMetrics(server.client()),
            Dispatcher(),
            tmp_path,
            Readiness(settings, Dispatcher()),  # type: ignore[arg-type]
        )
        from prometheus_client import generate_latest

        text = generate_latest(metrics_registry(collector)).decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    jobs = families["llmctv_jobs_finished"]
    assert value(jobs, "llmctv_jobs_finished_total", status="failed", code="job_timeout") == 1
    stages = families["llmctv_job_stage_duration_seconds"]
    assert (
        value(stages, "llmctv_job_stage_duration_seconds_bucket", stage="network", le="30.0") == 0
    )
    assert (
        value(stages, "llmctv_job_stage_duration_seconds_bucket", stage="network", le="60.0") == 1
    )
    assert value(stages, "llmctv_job_stage_duration_seconds_sum", stage="network") == 42.0
    assert value(families["llmctv_queue_depth"], "llmctv_queue_depth", queue="contour") == 3
    assert value(families["llmctv_metrics_store_up"], "llmctv_metrics_store_up") == 1


def test_dashboard_and_scrape_config_use_exposed_names(gateway: Gateway) -> None:
    import re

    import service.prometheus

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    text = (deploy / "grafana-dashboard.json").read_text() + (deploy / "prometheus.yml").read_text()
    used = {re.sub(r"_(bucket|total|count|sum)$", "", n) for n in re.findall(r"llmctv_\w+", text)}
    documented = set(re.findall(r"``(\w+)(?:\{[^}]*\})?``", service.prometheus.__doc__ or ""))
    documented = {"llmctv_" + re.sub(r"_total$", "", n) for n in documented}
    exposed = set(scrape(gateway.url))
    assert used - {"llmctv_alerts"} <= documented | exposed, used - documented - exposed
    json.loads((deploy / "grafana-dashboard.json").read_text())
