"""Fill, inspect and clear the shared embedding cache (``llmctv embed-cache``).

Every note the template can render (:meth:`model.text.clinical.ClinicalRecord.prompt_text`) is
enumerated from the contract's stage patterns:

* one side: 14 N stages x 13 T stages x 2 surgeries x 2 sides = **728 notes**;
* both sides (bilateral, rare): every combination would be 364 x 364 = 132,496 notes, so
  ``--bilateral main`` (the default) pairs only the main stages, N in {0, 1mi, 1, 2, 3} and T in
  {is, 1, 2, 3, 4}, with either surgery: 50 x 50 = **2,500 notes** (the N0 notes that the
  nodal check renders for these are among them). ``--bilateral all`` and ``none`` exist too.

Verbatim free-text notes cannot be enumerated; a worker with the language model computes and
caches them on first use.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from model.errors import ConfigurationError
from model.inference import Predictor
from model.network.context import context_key, contexts_for
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery
from workers.embedding_cache import RedisContextCache
from workers.model_loading import load_predictor
from workers.redis_store import connect
from workers.settings import WorkerSettings

N_STAGES = ("0", "1mi", "1", "1a", "1b", "1c", "2", "2a", "2b", "2c", "3", "3a", "3b", "3c")
T_STAGES = ("is", "1mi", "1", "1a", "1b", "1c", "2", "3", "4", "4a", "4b", "4c", "4d")
MAIN_N_STAGES = ("0", "1mi", "1", "2", "3")
MAIN_T_STAGES = ("is", "1", "2", "3", "4")
BILATERAL_CHOICES = ("none", "main", "all")


def _sides(side: Side, n_stages: Sequence[str], t_stages: Sequence[str]) -> list[Diagnosis]:
    return [
        Diagnosis(side=side, surgery=surgery, t_stage=t, n_stage=n)
        for n, t, surgery in itertools.product(n_stages, t_stages, Surgery)
    ]


def template_notes(
    n_stages: Sequence[str] = N_STAGES,
    t_stages: Sequence[str] = T_STAGES,
    bilateral: str = "main",
) -> list[str]:
    """Every note the template renders for these stages, unilateral first, no duplicates."""
    if bilateral not in BILATERAL_CHOICES:
        raise ConfigurationError(f"bilateral must be one of {BILATERAL_CHOICES}")
    records = [
        ClinicalRecord(diagnoses=(d,)) for side in Side for d in _sides(side, n_stages, t_stages)
    ]
    if bilateral != "none":
        pair_n = n_stages if bilateral == "all" else [n for n in n_stages if n in MAIN_N_STAGES]
        pair_t = t_stages if bilateral == "all" else [t for t in t_stages if t in MAIN_T_STAGES]
        left, right = _sides(Side.LEFT, pair_n, pair_t), _sides(Side.RIGHT, pair_n, pair_t)
        records += [ClinicalRecord(diagnoses=(a, b)) for a, b in itertools.product(left, right)]
    notes = (
        n for r in records for n in (r.prompt_text(), *(p.prompt_text() for p in r.per_side()))
    )
    return list(dict.fromkeys(notes))


@dataclass
class WarmReport:
    """What :func:`warm` did."""

    notes: int
    already_cached: int
    computed: int
    encoder_calls: int
    seconds: float


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def warm(
    predictor: Predictor, cache: RedisContextCache, notes: Sequence[str], batch_size: int = 32
) -> WarmReport:
    """Compute and store g for every note not yet cached, ``batch_size`` notes per LLM call."""
    context = predictor.context
    if context is None or not context.has_encoder:
        raise ConfigurationError("warming the cache needs a multimodal checkpoint and its encoder")
    t0 = time.perf_counter()
    digest = context.digest()
    keys = [context_key(context.identity, digest, n) for n in notes]
    found = [v is not None for v in cache.get_many(keys)]
    todo = [n for n, hit in zip(notes, found, strict=True) if not hit]
    calls = context.forward_calls
    for chunk in _chunks(todo, max(batch_size, 1)):
        contexts_for(context, chunk, cache)
    return WarmReport(
        notes=len(notes),
        already_cached=sum(found),
        computed=len(todo),
        encoder_calls=context.forward_calls - calls,
        seconds=time.perf_counter() - t0,
    )


def load_for_warming(settings: WorkerSettings) -> tuple[Predictor, RedisContextCache]:
    """The checkpoint with its text encoder, and the Redis cache of ``settings``."""
    if not settings.jobs.redis_url:
        raise ConfigurationError("LLMCTV_REDIS_URL is not set; the shared cache lives in Redis")
    cache = RedisContextCache(connect(settings.jobs.redis_url))
    predictor = load_predictor(settings, cache=cache)
    return predictor, cache


@dataclass
class LookupStats:
    """Cached entries and the latency of looking one up (GET + decode)."""

    entries: int
    sampled: int
    median_ms: float
    p99_ms: float


def lookup_stats(cache: RedisContextCache, samples: int = 200, seed: int = 0) -> LookupStats:
    """Time :meth:`RedisContextCache.get` on up to ``samples`` random cached keys."""
    keys = list(cache.keys())
    chosen = random.Random(seed).sample(keys, min(samples, len(keys)))
    times = []
    for key in chosen:
        t0 = time.perf_counter()
        cache.get(key)
        times.append((time.perf_counter() - t0) * 1000)
    if not times:
        return LookupStats(len(keys), 0, 0.0, 0.0)
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return LookupStats(len(keys), len(times), statistics.median(times), p99)
