"""Readiness: whether the gateway can contour now, checked in the background.

``GET /health/ready`` (:mod:`service.health`) answers 200 when every check passes, else 503
problem+json ``not_ready`` listing every failing check:

- ``model``: embedded, the model is loaded and the worker thread is not stuck; Celery, at
  least one worker published a loaded model;
- ``redis``: Celery mode only, the broker answered the last background refresh;
- ``jobs``: Celery mode only, no running job has gone without progress past its lease
  (``job_stall_timeout``): a stuck worker (:mod:`workers.lease_watchdog`);
- ``storage``: the storage folder takes a write and is not full (at least
  ``storage_min_free_bytes`` free, at most ``storage_max_used_fraction`` used);
- ``dicom_listener``: when enabled, the listener is bound;
- ``destinations``: the configured DICOM destinations parse.

The checks run in a background thread every :data:`REFRESH_S` seconds (a hung NFS mount or
Redis must never block a probe); the endpoints return the latest results.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.errors import ConfigurationError
from service.dicomnet.destinations import destinations_from_settings
from service.dicomnet.settings import DicomSettings
from service.settings import Settings
from workers.dispatch import JobDispatcher
from workers.settings import StorageSettings
from workers.storage_space import StorageWatermark

log = logging.getLogger(__name__)
REFRESH_S = 2.0


@dataclass(frozen=True)
class Check:
    """One readiness check's latest result."""

    name: str
    ok: bool
    detail: str


def model_check(facts: dict[str, Any]) -> Check:
    """The model (embedded) or the workers (Celery) from the dispatcher's facts."""
    if isinstance(facts.get("workers"), list):
        workers = [w for w in facts["workers"] if isinstance(w, dict)]
        loaded = [w for w in workers if w.get("model_error") is None]
        if loaded:
            return Check("model", True, f"{len(loaded)} worker process(es) with a loaded model")
        errors = sorted({str(w.get("model_error")) for w in workers})
        detail = f"workers cannot load the model [{', '.join(errors)}]" if errors else ""
        return Check("model", False, detail or "no live worker (start `llmctv worker`)")
    if facts.get("model_error"):
        return Check("model", False, f"the model cannot be loaded [{facts['model_error']}]")
    if not facts.get("model_loaded"):
        return Check("model", False, "the model is loading")
    if facts.get("worker_alive") is False:
        return Check("model", False, "the worker thread has stopped")
    limit, idle = facts.get("job_time_limit_s"), facts.get("last_progress_age_s")
    if isinstance(limit, int | float) and isinstance(idle, int | float) and idle > limit:
        return Check("model", False, f"the running job made no progress for {idle:.0f} s")
    return Check("model", True, "loaded")


def stall_check(facts: dict[str, Any]) -> Check:
    """Celery: running jobs whose lease expired without progress (a stuck or dead worker)."""
    stalled = int(facts.get("stalled_jobs") or 0)
    if not stalled:
        return Check("jobs", True, "no stalled job")
    return Check(
        "jobs",
        False,
        f"{stalled} running job(s) made no progress for over "
        f"{facts.get('job_stall_timeout_s')} s (longest {facts.get('longest_stall_s')} s past "
        "its lease): a worker is stuck or gone; the jobs were queued again",
    )


def storage_check(settings: StorageSettings, watermark: StorageWatermark) -> Check:
    """The storage folder takes a write and has the free space of the watermark."""
    folder = settings.storage_dir
    probe = folder / f".ready-{os.getpid()}-{threading.get_ident()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        return Check("storage", False, f"storage folder not writable: {exc.strerror or exc}")
    space = watermark.state()  # the backpressure watermark (service.storage_guard)
    if space.full:
        return Check("storage", False, f"full, below the watermark: {space.detail}")
    return Check("storage", True, f"writable, {space.detail}")


def destinations_check(settings: DicomSettings) -> Check:
    """The configured DICOM destinations parse (none configured is fine: no send-back)."""
    try:
        names = sorted(destinations_from_settings(settings))
    except ConfigurationError as exc:
        return Check("destinations", False, exc.detail)
    return Check("destinations", True, ", ".join(names) or "none configured (no send-back)")


class Readiness:
    """The readiness checks of one gateway, refreshed in the background.

    Parameters
    ----------
    settings
        The gateway's settings.
    dispatcher
        Its dispatcher (:meth:`~workers.dispatch.JobDispatcher.describe` must be fast).
    listener_running
        Whether the DICOM listener is bound (set by the application's start-up).
    listener_associations
        How many DICOM associations are open now (the listener's admission).
    storage_writable
        Called after each passing storage check (stores job states kept in memory while the
        storage refused writes).
    """

    def __init__(
        self,
        settings: Settings,
        dispatcher: JobDispatcher,
        refresh_s: float = REFRESH_S,
        watermark: StorageWatermark | None = None,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.watermark = watermark or StorageWatermark.from_settings(settings.storage)
        self.refresh_s = refresh_s
        self.listener_running: Callable[[], bool] = lambda: False
        self.listener_associations: Callable[[], int] = lambda: 0
        self.storage_writable: Callable[[], None] = lambda: None
        self._latest: list[Check] = [Check("startup", False, "checks not run yet")]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def gather(self) -> list[Check]:
        """Run every check now (blocking: the background thread's work)."""
        facts = self.dispatcher.describe()
        checks = [model_check(facts)]
        if facts.get("mode") == "celery":
            broker = facts.get("broker")
            checks.append(Check("redis", broker == "ok", f"broker {broker}"))
            checks.append(stall_check(facts))
        storage = storage_check(self.settings.storage, self.watermark)
        checks.append(storage)
        if storage.ok:
            self.storage_writable()
        if self.settings.dicom.dicom_listener:
            bound = self.listener_running()
            detail = f"bound, {self.listener_associations()} association(s) open"
            checks.append(Check("dicom_listener", bound, detail if bound else "not bound"))
        checks.append(destinations_check(self.settings.dicom))
        return checks

    def refresh(self) -> None:
        """Gather once and keep the result."""
        try:
            found = self.gather()
        except Exception as exc:  # thread boundary: a failing check is a failed check
            log.exception("readiness checks failed")
            found = [Check("checks", False, f"the checks failed: {type(exc).__name__}")]
        with self._lock:
            self._latest = found

    def latest(self) -> list[Check]:
        """The latest results (never blocks)."""
        with self._lock:
            return list(self._latest)

    def start(self) -> None:
        """Start the background refresh (the first one at once)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llmctv-ready", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refresh."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        self.refresh()
        while not self._stop.wait(self.refresh_s):
            self.refresh()
