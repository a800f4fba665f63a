"""The model a worker process runs, loaded from its settings.

Every path that loads the network goes through here: the embedded worker, the Celery pool
processes, the spawned preflight check and the embedding-cache warmer. torch is imported only
when a function here is called, never at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from model.errors import ModelNotFoundError
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine
    from model.inference import Predictor
    from model.network.context import ContextStore

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]  # workers/ is one level below the repository
#: The shipped CPU demo model, used when no checkpoint is configured.
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"


def checkpoint_folder(settings: WorkerSettings) -> Path:
    """The configured checkpoint, or the shipped CPU demo model.

    Raises
    ------
    ModelNotFoundError
        The folder holds no ``model.safetensors``.
    """
    folder = settings.model.checkpoint or DEMO_CHECKPOINT
    if not (Path(folder) / "model.safetensors").is_file():
        raise ModelNotFoundError(f"no checkpoint (model.safetensors) in {folder}")
    return Path(folder)


def load_predictor(
    settings: WorkerSettings,
    *,
    cache: ContextStore | None = None,
    device: str | None = None,
    with_text_encoder: bool = True,
) -> Predictor:
    """The checkpoint of ``settings`` with its text encoder (unless ``with_text_encoder`` is
    false: then g comes from ``cache`` only)."""
    from model.inference import Predictor

    return Predictor.from_checkpoint(
        checkpoint_folder(settings),
        text_encoder=settings.model.text_encoder,
        device=device or settings.model.device,
        overlap=settings.contouring.overlap,
        sw_batch_size=settings.contouring.sw_batch_size,
        cache=cache,
        with_text_encoder=with_text_encoder,
    )


def load_engine(
    settings: WorkerSettings, cache: ContextStore | None = None, *, with_text_encoder: bool = True
) -> ContourEngine:
    """The engine of one worker process.

    g is cached in ``cache``; by default in Redis when ``redis_url`` is set, else in this
    process. Without ``with_text_encoder`` (a Celery worker with ``worker_text_encoder=false``)
    the language model is never loaded.
    """
    from model.contouring.engine import ContourEngine
    from workers.embedding_cache import context_cache_for

    predictor = load_predictor(
        settings,
        cache=cache if cache is not None else context_cache_for(settings),
        with_text_encoder=with_text_encoder,
    )
    log.info("model loaded (checkpoint %s)", predictor.checkpoint_hash)
    return ContourEngine(predictor)
