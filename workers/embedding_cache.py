"""Context embeddings g in Redis, shared by every worker.

A :class:`~model.network.context.ContextStore`.

Keys are ``llmctv:g:<context_key>``, where :func:`model.network.context.context_key` hashes the text
encoder identity, the digest of the checkpoint's text-side weights and the note. Values are
safetensors bytes of one float32 tensor ``(N, D)`` (4.6 kB for SmolLM2, 32 kB for
Llama-2-7b with N = 2). Entries are content-addressed and never go stale, so they do not
expire; a new checkpoint or encoder simply uses new keys (``llmctv embed-cache clear``
removes old ones).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
import torch
from safetensors.torch import load, save

from model.network.context import ContextCache, ContextStore
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

PREFIX = "llmctv:g:"
TENSOR = "g"


def _decode(raw: bytes | str) -> torch.Tensor:
    return load(raw if isinstance(raw, bytes) else raw.encode("latin-1"))[TENSOR]


class RedisContextCache:
    """g tensors in Redis, with the interface of :class:`~model.network.context.ContextCache`.

    Parameters
    ----------
    client
        A Redis client (see :func:`workers.redis_store.connect`).
    prefix
        Key prefix.
    """

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        """Cached g or ``None``."""
        raw = self.client.get(self.prefix + key)
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return _decode(raw)

    def get_many(self, keys: list[str]) -> list[torch.Tensor | None]:
        """Cached g for each key (one round trip), ``None`` where missing."""
        if not keys:
            return []
        raw = self.client.mget([self.prefix + k for k in keys])
        return [None if item is None else _decode(item) for item in raw]

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store g (as float32, on CPU)."""
        data = save({TENSOR: value.detach().to("cpu", torch.float32).contiguous()})
        self.client.set(self.prefix + key, data)

    def keys(self) -> Iterator[str]:
        """Every cached key (without the prefix), by incremental ``SCAN``."""
        for raw in self.client.scan_iter(match=self.prefix + "*", count=1000):
            yield raw.decode()[len(self.prefix) :]

    def count(self) -> int:
        """Number of cached embeddings."""
        return sum(1 for _ in self.keys())

    def clear(self) -> int:
        """Delete every cached embedding; returns how many."""
        removed = 0
        batch: list[str] = []
        for key in self.keys():
            batch.append(self.prefix + key)
            if len(batch) >= 1000:
                removed += int(self.client.delete(*batch))
                batch.clear()
        if batch:
            removed += int(self.client.delete(*batch))
        return removed


def context_cache_for(settings: WorkerSettings) -> ContextStore:
    """The Redis cache when ``redis_url`` is set, else an in-process LRU."""
    if not settings.jobs.redis_url:
        return ContextCache()
    from workers.redis_store import connect

    return RedisContextCache(connect(settings.jobs.redis_url))
