"""The ``llmctv`` console script: the model's commands plus ``serve``.

``llmctv serve`` starts the HTTP gateway under uvicorn (and the DICOM listener when enabled).
Options override the ``LLMCTV_*`` settings for this process only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import main as model_main
from model.cli import option_overrides
from model.errors import LlmctvError
from model.settings import with_overrides
from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from service.dicomnet.assembly import ReceivedSeries

log = logging.getLogger("llmctv")


def settings_with(args: argparse.Namespace, names: Sequence[str]) -> Settings:
    """The process settings with the given command-line options applied (when set)."""
    updates = option_overrides(args, names)
    if getattr(args, "dev", False):
        updates["allow_no_auth"] = True
    return with_overrides(get_settings(), updates)


def cmd_selftest(args: argparse.Namespace) -> int:
    """Contour a generated phantom through the whole service; PASS (0) or FAIL (1)."""
    from service.selftest import Selftest

    settings = settings_with(args, ("checkpoint",))
    report = Selftest(settings, timeout_s=args.timeout).run()
    for line in report.lines():
        print(line)
    return 0 if report.passed else 1


def register_selftest(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``selftest``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "selftest", help="contour a generated phantom through the whole service: PASS or FAIL"
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="default: LLMCTV_CHECKPOINT")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the job")
    p.set_defaults(func=cmd_selftest)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted."""
    import uvicorn

    from service.app import create_app
    from service.http_server import server_config
    from workers.preflight import explain, load_engine

    settings = settings_with(args, ("host", "port", "checkpoint", "storage_dir", "redis_url"))
    try:  # embedded: the model loads before the port opens, or the process exits with why
        engine = None if settings.redis_url else load_engine(settings)
    except LlmctvError as exc:
        print(explain(exc), file=sys.stderr)
        return 2
    app = create_app(settings, engine=engine)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.Server(server_config(app, settings, args.log_level)).run()
    return 0


def register_serve(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``serve``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="HTTP gateway (and DICOM listener); embedded worker unless LLMCTV_REDIS_URL is set",
    )
    p.add_argument("--host", default=None, help="bind address (default LLMCTV_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: shipped demo model")
    p.add_argument("--storage-dir", type=Path, default=None, help="jobs' files and records")
    p.add_argument("--redis-url", default=None, help="use Celery workers on this Redis")
    p.add_argument("--log-level", default="info", help="uvicorn log level (access log at info)")
    p.add_argument(
        "--dev", action="store_true", help="allow running without API tokens (development only)"
    )
    p.set_defaults(func=cmd_serve)
    return p


def register_dicom_listener(
    subparsers: argparse._SubParsersAction[Any],
) -> argparse.ArgumentParser:
    """Add ``dicom-listener``: the listener alone; the gateway's order desk picks series up."""
    from service.dicomnet.command import register
    from service.order_desk import record_series

    def on_complete(series: ReceivedSeries) -> None:
        record_series(series)

    return register(subparsers, on_complete=on_complete)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmctv`` console script."""
    from workers.cli import register_embed_cache, register_worker

    extra = (
        register_serve,
        register_dicom_listener,
        register_worker,
        register_embed_cache,
        register_selftest,
    )
    return model_main(argv, extra=extra)
