"""The shared embedding cache: Redis-backed g, workers without the LLM, the warm-up note set."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from redis_server import REDIS_SERVER, RedisServer, running_redis

from model.errors import ConfigurationError, ContextNotCachedError
from model.imaging.geometry import Grid, Volume
from model.inference import Predictor
from model.network.checkpoint import (
    attach_encoder,
    detached_context,
    load_checkpoint,
    save_checkpoint,
)
from model.network.config import preset
from model.network.context import PromptContext, context_key
from model.network.segmenter import ContourNet
from model.text.clinical import N_STAGE_PATTERN, T_STAGE_PATTERN
from model.text.encoders import tiny_llama
from workers.celery_app import check_limits
from workers.cli import worker_queues
from workers.embedding_cache import RedisContextCache
from workers.redis_store import connect
from workers.settings import WorkerSettings
from workers.warm import N_STAGES, T_STAGES, template_notes, warm

NOTE = "N1, cT2, breast conserving surgery, left side"
OTHER = "N0, cT1, total mastectomy surgery, right side"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with running_redis(tmp_path_factory.mktemp("redis"), persistent=False) as server:
        yield server


@pytest.fixture
def cache(redis_server: RedisServer) -> RedisContextCache:
    client = connect(redis_server.url)
    client.flushdb()
    return RedisContextCache(client)


def _checkpoint(folder: Path, tuning: str = "multi_prompt") -> Path:
    cfg = preset("tiny", tuning=tuning)
    ctx = PromptContext(cfg, tiny_llama()).eval()
    with torch.no_grad():
        ctx.seg.add_(torch.randn_like(ctx.seg))
    meta = {"text_encoder_name": "tiny-llama"}
    save_checkpoint(folder, ContourNet(cfg).eval(), ctx, text_encoder=ctx.identity, meta=meta)
    return folder


def test_g_round_trips_through_redis_exactly(cache: RedisContextCache) -> None:
    g = torch.randn(2, 576)
    cache.put("k1", g)
    assert torch.equal(cache.get("k1"), g)  # type: ignore[arg-type]
    assert cache.get("missing") is None
    assert (cache.hits, cache.misses) == (1, 1)
    found = cache.get_many(["missing", "k1"])
    assert found[0] is None and torch.equal(found[1], g)  # type: ignore[arg-type]
    assert cache.count() == 1 and cache.clear() == 1 and cache.count() == 0


@pytest.mark.parametrize("tuning", ["multi_prompt", "lora"])
def test_a_worker_without_the_encoder_computes_the_same_key(tmp_path: Path, tuning: str) -> None:
    folder = _checkpoint(tmp_path, tuning)
    with_llm = attach_encoder(load_checkpoint(folder), tiny_llama())
    without = detached_context(load_checkpoint(folder))
    assert not without.has_encoder
    assert (without.identity, without.digest()) == (with_llm.identity, with_llm.digest())
    assert context_key(without.identity, without.digest(), NOTE) == context_key(
        with_llm.identity, with_llm.digest(), NOTE
    )


def test_cache_only_worker_serves_cached_notes_and_refuses_others(
    tmp_path: Path, cache: RedisContextCache
) -> None:
    folder = _checkpoint(tmp_path)
    text_worker = Predictor.from_checkpoint(folder, device="cpu", cache=cache)
    cache_worker = Predictor.from_checkpoint(
        folder, device="cpu", cache=cache, with_text_encoder=False
    )
    assert cache_worker.context is not None and text_worker.context is not None
    computed = text_worker.context_for(NOTE)
    assert text_worker.context.forward_calls == 1
    served = cache_worker.context_for(NOTE)
    torch.testing.assert_close(served, computed)
    assert cache_worker.context.forward_calls == 0
    grid = Grid((8, 16, 16), (0.0, 0.0, 0.0), (3.0, 2.0, 2.0))
    volume = Volume(np.zeros(grid.shape, np.float32), grid)
    assert cache_worker.predict(volume, NOTE).mask.shape == grid.shape
    with pytest.raises(ContextNotCachedError):
        cache_worker.predict(volume, OTHER)


def test_cache_hit_costs_no_llm_call_and_a_fast_lookup(
    tmp_path: Path, cache: RedisContextCache
) -> None:
    """Two workers (two predictors) share the cache: the second never runs the LLM."""
    folder = _checkpoint(tmp_path)
    first = Predictor.from_checkpoint(folder, device="cpu", cache=cache)
    first.context_for(NOTE)
    second = Predictor.from_checkpoint(folder, device="cpu", cache=cache)
    assert second.context is not None
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        second.context_for(NOTE)
        times.append(time.perf_counter() - t0)
    assert second.context.forward_calls == 0
    median_ms = 1000 * float(np.median(times))
    print(f"\ncached g lookup through contexts_for: median {median_ms:.3f} ms (50 lookups)")
    assert median_ms < 50


def test_warm_batches_and_skips_cached_notes(tmp_path: Path, cache: RedisContextCache) -> None:
    folder = _checkpoint(tmp_path)
    predictor = Predictor.from_checkpoint(folder, device="cpu", cache=cache)
    notes = template_notes(["0", "1"], ["2"], bilateral="main")
    assert len(notes) == 2 * 2 * 2 + 4 * 4
    report = warm(predictor, cache, notes, batch_size=10)
    assert (report.computed, report.encoder_calls) == (len(notes), 3)
    assert cache.count() == len(notes)
    again = warm(predictor, cache, notes, batch_size=10)
    assert (again.already_cached, again.computed, again.encoder_calls) == (len(notes), 0, 0)


def test_template_note_counts_and_stage_lists_match_the_contract() -> None:
    candidates = {a + b for a, b in itertools.product(["is", *"012345"], ["", "mi", *"abcd"])}
    assert {c for c in candidates if N_STAGE_PATTERN.fullmatch(c)} == set(N_STAGES)
    assert {c for c in candidates if T_STAGE_PATTERN.fullmatch(c)} == set(T_STAGES)
    assert len(template_notes(bilateral="none")) == 14 * 13 * 2 * 2 == 728
    main = template_notes()
    assert len(main) == 728 + 50 * 50 and len(set(main)) == len(main)
    assert "N1mi, cT2, breast conserving surgery, left side" in main
    assert (
        "N0, cT2, total mastectomy surgery, left side; N1, cT1, breast conserving surgery, "
        "right side" in main
    )


def test_unsafe_worker_settings_are_refused() -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        check_limits(
            WorkerSettings.from_env(redis_url=url, visibility_timeout=60, task_hard_time_limit=900)
        )
    with pytest.raises(ConfigurationError):
        check_limits(WorkerSettings.from_env(redis_url=None))
    check_limits(WorkerSettings.from_env(redis_url=url))
    cache_only = WorkerSettings.from_env(redis_url=url, worker_text_encoder=False)
    assert worker_queues(cache_only, None) == ["contour"]
    assert worker_queues(WorkerSettings.from_env(redis_url=url), None) == ["contour", "text"]
    with pytest.raises(ConfigurationError, match="text"):
        worker_queues(cache_only, "contour,text")
