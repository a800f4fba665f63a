"""The ``dicom-listener`` sub-command: run the DICOM listener alone, in the foreground.

``llmctv dicom-listener [--host H] [--port P] [--ae-title T]``

Runs until SIGINT or SIGTERM. The options override the ``dicom_*`` settings for this run;
everything else (allow-list, transfer syntaxes, timeout, storage) comes from the settings.
By default completed series are only logged; :func:`register` takes the callback to use
instead (the gateway hands one that creates jobs).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import threading
from types import FrameType
from typing import Any

from service.dicomnet.assembly import OnComplete, ReceivedSeries, printable
from service.dicomnet.listener import DicomListener
from service.dicomnet.settings import DicomSettings, get_settings

logger = logging.getLogger(__name__)


def log_completed_series(series: ReceivedSeries) -> None:
    """The default callback: one line per completed series on stdout (UIDs and counts only).

    stdout rather than the log, so that it shows without ``--verbose``.
    """
    print(
        f"series complete: {series.series_instance_uid} (study {series.study_instance_uid}), "
        f"{series.instance_count} {printable(series.modality)} instance(s) from "
        f"{printable(series.calling_ae)}, "
        f"cycle {series.cycle}, in {series.folder}",
        flush=True,
    )


def register(
    subparsers: argparse._SubParsersAction[Any],
    on_complete: OnComplete = log_completed_series,
) -> argparse.ArgumentParser:
    """Add the ``dicom-listener`` sub-command to ``subparsers``; returns its parser.

    Parameters
    ----------
    subparsers
        The CLI's sub-parsers.
    on_complete
        Called for each completed series (default: log it).
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
    parser.set_defaults(func=functools.partial(run, on_complete=on_complete))
    return parser


def _settings_for(args: argparse.Namespace) -> DicomSettings:
    """The process settings with the command-line overrides applied."""
    overrides = {
        "dicom_host": args.host,
        "dicom_port": args.port,
        "dicom_ae_title": args.ae_title,
    }
    settings = get_settings()
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace, on_complete: OnComplete = log_completed_series) -> int:
    """Run the listener until SIGINT or SIGTERM; errors propagate to the CLI (exit 2)."""
    listener = DicomListener.from_settings(_settings_for(args), on_complete)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
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
