"""Sub-commands ``llmctv worker`` and ``llmctv embed-cache`` (registered by ``service.cli``).

``llmctv worker`` runs a Celery worker: prefork pool, one process per GPU (concurrency 1 by
default), the model loaded once in each pool process. With the text encoder (the default) it
consumes the contour and text queues; with ``--no-text-encoder`` (or
``LLMCTV_WORKER_TEXT_ENCODER=false``) it never loads the language model and consumes only the
contour queue.

Heavy modules (Celery, torch) are imported when a sub-command runs, not when it is registered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from model.errors import ConfigurationError, LlmctvError
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)
SETTING_OPTIONS = ("redis_url", "checkpoint", "storage_dir")


def _settings(args: argparse.Namespace, names: tuple[str, ...]) -> WorkerSettings:
    from model.cli import option_overrides
    from model.settings import with_overrides
    from workers.settings import get_settings

    return with_overrides(get_settings(), option_overrides(args, names))


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """Process settings with the command-line options applied."""
    from model.settings import with_overrides

    settings = _settings(args, SETTING_OPTIONS)
    if args.no_text_encoder:
        settings = with_overrides(settings, {"worker_text_encoder": False})
    return settings


def worker_queues(settings: WorkerSettings, requested: str | None) -> list[str]:
    """Queues to consume: both with the text encoder, the contour queue without it.

    Raises
    ------
    ConfigurationError
        A worker without the text encoder asked to consume the text queue (it would hand
        uncached notes back to itself forever).
    """
    jobs = settings.jobs
    if requested:
        queues = [q.strip() for q in requested.split(",") if q.strip()]
    elif jobs.worker_text_encoder:
        queues = [jobs.worker_queue, jobs.text_queue]
    else:
        queues = [jobs.worker_queue]
    if not jobs.worker_text_encoder and jobs.text_queue in queues:
        raise ConfigurationError(
            f"a worker without the text encoder cannot consume the {jobs.text_queue!r} queue"
        )
    return queues


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker until it is stopped (SIGTERM: finish the job, then exit)."""
    from celery.signals import worker_process_init, worker_process_shutdown
    from celery.utils.nodenames import host_format

    from workers import preflight, runtime
    from workers.celery_app import create_celery_app
    from workers.tasks import register_tasks

    settings = worker_settings(args)
    node = host_format(args.node or runtime.default_node(settings.jobs.worker_text_encoder))
    if args.check:
        return check_worker(settings, node)
    try:  # the model (or, cache-only, the embedding cache) is checked before the pool starts
        preflight.check_worker_model(settings)
    except LlmctvError as exc:
        print(preflight.explain(exc), file=sys.stderr)
        return 2
    queues = worker_queues(settings, args.queues)
    app = create_celery_app(settings)
    register_tasks(app)
    runtime.configure(runtime.WorkerOptions(settings, node, queues))
    worker_process_init.connect(runtime.on_process_init, weak=False)
    worker_process_shutdown.connect(runtime.on_process_shutdown, weak=False)
    argv = [
        "worker",
        "--pool=prefork",
        f"--concurrency={args.concurrency}",
        f"--queues={','.join(queues)}",
        f"--hostname={node}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def check_worker(settings: WorkerSettings, node: str) -> int:
    """Health check: 0 when a pool process of ``node`` has loaded its model and is beating."""
    from workers.facts import read_all
    from workers.redis_store import connect

    if not settings.jobs.redis_url:
        raise ConfigurationError("LLMCTV_REDIS_URL is not set")
    found = [f for f in read_all(connect(settings.jobs.redis_url)) if f.get("node") == node]
    healthy = bool(found) and all(f.get("model_error") is None for f in found)
    print(f"{node}: {'ok' if healthy else 'not ready'} ({len(found)} pool process(es))")
    return 0 if healthy else 1


def register_worker(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``worker``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="Celery GPU worker on LLMCTV_REDIS_URL (the model loads once per process)"
    )
    p.add_argument("--redis-url", default=None, help="broker and job store (LLMCTV_REDIS_URL)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: shipped demo model")
    p.add_argument("--storage-dir", type=Path, default=None, help="shared storage folder")
    p.add_argument(
        "--no-text-encoder",
        action="store_true",
        help="never load the language model; serve cached notes only (contour queue)",
    )
    p.add_argument("--queues", default=None, help="comma-separated queues (default by role)")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes (one per GPU)")
    p.add_argument(
        "--node", default=None, help="Celery node name, %%h = host (default llmctv-<role>@host)"
    )
    p.add_argument("--loglevel", default="INFO", help="Celery log level")
    p.add_argument(
        "--check", action="store_true", help="health check of this host's worker, then exit"
    )
    p.set_defaults(func=cmd_worker)
    return p


def cmd_embed_cache(args: argparse.Namespace) -> int:
    """``embed-cache warm|stats|clear``."""
    from workers.embedding_cache import RedisContextCache
    from workers.redis_store import connect
    from workers.warm import lookup_stats

    settings = _settings(args, ("redis_url", "checkpoint"))
    if args.action == "warm":
        return _warm(settings, args)
    if not settings.jobs.redis_url:
        raise ConfigurationError("LLMCTV_REDIS_URL is not set; the shared cache lives in Redis")
    cache = RedisContextCache(connect(settings.jobs.redis_url))
    if args.action == "clear":
        print(f"removed {cache.clear()} cached embeddings")
        return 0
    stats = lookup_stats(cache)
    print(
        f"{stats.entries} cached embeddings; lookup (GET + decode) over {stats.sampled} keys: "
        f"median {stats.median_ms:.3f} ms, p99 {stats.p99_ms:.3f} ms"
    )
    return 0


def _warm(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from workers.warm import N_STAGES, T_STAGES, load_for_warming, template_notes, warm

    notes = template_notes(args.n_stages or N_STAGES, args.t_stages or T_STAGES, args.bilateral)
    print(f"{len(notes)} template notes (bilateral pairs: {args.bilateral})")
    if args.dry_run:
        return 0
    predictor, cache = load_for_warming(settings)
    report = warm(predictor, cache, notes, args.batch_size)
    print(
        f"{report.already_cached} already cached, {report.computed} computed in "
        f"{report.encoder_calls} encoder calls (batch {args.batch_size}), {report.seconds:.1f} s"
    )
    return 0


def register_embed_cache(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``embed-cache``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "embed-cache", help="the shared context-embedding cache in Redis"
    )
    p.add_argument("action", choices=["warm", "stats", "clear"])
    p.add_argument("--redis-url", default=None, help="LLMCTV_REDIS_URL")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: shipped demo model")
    p.add_argument(
        "--bilateral", default="main", choices=["none", "main", "all"], help="bilateral pairs"
    )
    p.add_argument("--n-stages", nargs="+", default=None, help="restrict N stages (warm)")
    p.add_argument("--t-stages", nargs="+", default=None, help="restrict T stages (warm)")
    p.add_argument("--batch-size", type=int, default=32, help="notes per encoder call")
    p.add_argument("--dry-run", action="store_true", help="count the notes only")
    p.set_defaults(func=cmd_embed_cache)
    return p
