"""The ``llmctv`` console script: the model's and the workers' commands plus the service's.

- ``llmctv serve`` starts the HTTP gateway under uvicorn (and the DICOM listener when enabled);
- ``llmctv dicom-listener`` runs the DICOM listener alone, in the foreground;
- ``llmctv selftest`` contours a generated phantom through the whole service.

Options override the ``LLMCTV_*`` settings for this process only. Heavy modules (uvicorn,
the DICOM stack, torch) are imported when a sub-command runs, not when it is registered.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from model.cli import main as model_main
from model.cli import option_overrides
from model.errors import LlmctvError
from model.settings import with_overrides
from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from service.dicomnet.assembly import OnComplete, ReceivedSeries

log = logging.getLogger("llmctv")


def settings_with(args: argparse.Namespace, names: Sequence[str]) -> Settings:
    """The process settings with the given command-line options applied (when set)."""
    updates = option_overrides(args, names)
    if getattr(args, "dev", False):
        updates["allow_no_auth"] = True
    return with_overrides(get_settings(), updates)


# --- selftest -------------------------------------------------------------------------------
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


# --- serve ----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted."""
    import uvicorn

    from service.app import create_app
    from service.http_server import server_config
    from workers.preflight import explain, load_engine

    settings = settings_with(args, ("host", "port", "checkpoint", "storage_dir", "redis_url"))
    try:  # embedded: the model loads before the port opens, or the process exits with why
        engine = None if settings.jobs.redis_url else load_engine(settings.worker)
    except LlmctvError as exc:
        print(explain(exc), file=sys.stderr)
        return 2
    app = create_app(settings, engine=engine)
    log.info("serving on http://%s:%d", settings.http.host, settings.http.port)
    uvicorn.Server(server_config(app, settings.http, args.log_level)).run()
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


# --- dicom-listener -------------------------------------------------------------------------
def record_completed_series(series: ReceivedSeries) -> None:
    """The default callback: write the series' manifest; the gateway's order desk picks it up."""
    from service.order_desk import record_series

    record_series(series)


def log_completed_series(series: ReceivedSeries) -> None:
    """A callback that prints one line per completed series (UIDs and counts only).

    stdout rather than the log, so that it shows without ``--verbose``.
    """
    from service.dicomnet.assembly import printable

    print(
        f"series complete: {series.series_instance_uid} (study {series.study_instance_uid}), "
        f"{series.instance_count} {printable(series.modality)} instance(s) from "
        f"{printable(series.calling_ae)}, "
        f"cycle {series.cycle}, in {series.folder}",
        flush=True,
    )


def cmd_dicom_listener(
    args: argparse.Namespace, on_complete: OnComplete = record_completed_series
) -> int:
    """Run the listener until SIGINT or SIGTERM; errors propagate to the CLI (exit 2).

    The options override the ``dicom_*`` settings for this run; everything else (allow-list,
    transfer syntaxes, timeout, storage) comes from the settings.
    """
    from model.settings import load_settings
    from service.dicomnet.listener import DicomListener
    from service.dicomnet.settings import get_settings as dicom_settings
    from workers.settings import StorageSettings

    given = {"dicom_host": args.host, "dicom_port": args.port, "dicom_ae_title": args.ae_title}
    dicom = with_overrides(dicom_settings(), {k: v for k, v in given.items() if v is not None})
    listener = DicomListener.from_settings(dicom, load_settings(StorageSettings), on_complete)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        listener.start()
        print(
            f"DICOM listener {listener.ae_title} on {listener.host}:{listener.port}, "
            f"storing under {listener.storage_root}",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def register_dicom_listener(
    subparsers: argparse._SubParsersAction[Any],
    on_complete: OnComplete = record_completed_series,
) -> argparse.ArgumentParser:
    """Add ``dicom-listener``: the listener alone; the gateway's order desk picks series up.

    Parameters
    ----------
    subparsers
        The CLI's sub-parsers.
    on_complete
        Called for each completed series (default: write its manifest for the order desk;
        :func:`log_completed_series` prints it instead).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dicom-listener",
        help="run the DICOM Storage SCP (C-ECHO, C-STORE) in the foreground",
        description=(
            "Accept CT series and structure sets over DICOM (C-STORE) and store them under "
            "<storage_dir>/dicom/received; a series counts as complete after "
            "LLMCTV_DICOM_SERIES_TIMEOUT_S seconds without a new instance. Stops on "
            "SIGINT/SIGTERM."
        ),
    )
    parser.add_argument("--host", default=None, help="listen address (default: dicom_host)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: dicom_port)")
    parser.add_argument("--ae-title", default=None, help="our AE title (default: dicom_ae_title)")
    parser.set_defaults(func=functools.partial(cmd_dicom_listener, on_complete=on_complete))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmctv`` console script."""
    from model.registry.registry_command import register as register_models
    from workers.cli import register_embed_cache, register_worker
    from workers.model_loading import registry_audit

    extra = (
        register_serve,
        register_dicom_listener,
        register_worker,
        register_embed_cache,
        register_selftest,
        functools.partial(register_models, events=registry_audit),
    )
    return model_main(argv, extra=extra)
