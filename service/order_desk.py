"""The order desk: matches orders with received studies, starts jobs, sends results back.

It polls (every second, and at once when a series completes or an order arrives), so it works
whether jobs run in this process or on Celery workers, and it picks up where it left off after
a restart: everything it needs is in the order records, the job store and the received-series
manifests (``series.json`` written next to a completed CT series' instances).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from model.dicom.series import inspect_ct_series
from model.errors import LlmctvError
from service.dicomnet.assembly import ReceivedSeries
from service.dicomnet.destinations import destinations_from_settings, resolve_destination
from service.dicomnet.sender import send_instances
from service.orders import Order, OrderStatus, OrderStore, SendState, SendStatus
from service.settings import Settings
from workers.atomic_write import write_atomically
from workers.dispatch import JobDispatcher
from workers.jobs import Job, JobFiles, JobStatus, JobStore, utcnow
from workers.pipeline import fail_job

log = logging.getLogger(__name__)
MANIFEST = "series.json"


def received_root(settings: Settings) -> Path:
    """Where the DICOM listener stores instances (``<storage>/dicom/received``)."""
    return settings.storage_dir / "dicom" / "received"


def write_manifest(series: ReceivedSeries) -> None:
    """Mark a completed series as usable (atomically), with what matching needs."""
    manifest = {
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "accession_number": series.accession_number,
        "modality": series.modality,
        "instance_count": series.instance_count,
        "cycle": series.cycle,
        "completed_at": utcnow().isoformat(),
    }
    write_atomically(series.folder / MANIFEST, json.dumps(manifest).encode())


def record_series(series: ReceivedSeries) -> bool:
    """Listener callback without a desk: write the manifest of a completed CT series.

    Returns whether the series was recorded (non-CT series, e.g. RTSTRUCT, are not).
    """
    if series.modality != "CT":
        log.info("ignoring a completed %s series (not CT)", series.modality)
        return False
    write_manifest(series)
    log.info(
        "CT series %s complete: %d instances", series.series_instance_uid, series.instance_count
    )
    return True


def _manifests(root: Path, order: Order) -> list[tuple[Path, dict[str, Any]]]:
    study = order.study_instance_uid or "*"
    pattern = f"{study}/*/{MANIFEST}"
    found = []
    for path in root.glob(pattern):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("modality") != "CT":
            continue
        if order.accession_number and manifest.get("accession_number") != order.accession_number:
            continue
        if order.series_instance_uid and (
            manifest.get("series_instance_uid") != order.series_instance_uid
        ):
            continue
        found.append((path.parent, manifest))
    return found


def _link_or_copy(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.dcm")):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


class OrderDesk:
    """Runs the matching, expiry and send-back loop in a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        orders: OrderStore,
        store: JobStore,
        files: JobFiles,
        dispatcher: JobDispatcher,
        poll_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.orders = orders
        self.store = store
        self.files = files
        self.dispatcher = dispatcher
        self.poll_s = poll_s
        self.root = received_root(settings)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmctv-send")
        self._sending: set[str] = set()

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop."""
        self._thread = threading.Thread(target=self._loop, name="llmctv-orders", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (a send in progress finishes)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sender.shutdown(wait=True)

    def poke(self) -> None:
        """Run the next round now (a series completed, an order arrived)."""
        self._wake.set()

    def on_series_complete(self, series: ReceivedSeries) -> None:
        """The DICOM listener's callback: record a completed CT series and wake the loop."""
        if series.modality != "CT":
            log.info("ignoring a completed %s series (not CT)", series.modality)
            return
        write_manifest(series)
        log.info(
            "CT series %s complete: %d instances", series.series_instance_uid, series.instance_count
        )
        self.poke()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except (LlmctvError, OSError, ValueError) as exc:
                log.error("order desk round failed: %s", exc)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # --- one round ---------------------------------------------------------------------------
    def run_once(self) -> None:
        """Match waiting orders, expire old ones, send finished results."""
        for order in self.orders.all():
            if order.status is OrderStatus.WAITING:
                self._match(order)
            elif order.status is OrderStatus.MATCHED:
                self._deliver(order)

    def _match(self, order: Order) -> None:
        if utcnow() >= order.expires_at:
            self.orders.update(order.order_id, status=OrderStatus.EXPIRED)
            log.info("order %s expired unmatched", order.order_id)
            return
        candidates = _manifests(self.root, order)
        if not candidates:
            return
        folder, manifest = max(candidates, key=lambda c: int(c[1].get("instance_count", 0)))
        warnings = []
        if len(candidates) > 1:
            warnings.append(
                f"the study holds {len(candidates)} CT series; contoured the largest, "
                f"{manifest['series_instance_uid']} (name one in the order to choose)"
            )
        self._start_job(order, folder, manifest, warnings)

    def _start_job(
        self, order: Order, folder: Path, manifest: dict[str, Any], warnings: list[str]
    ) -> None:
        job = Job(
            job_id=order.order_id,
            clinical=order.clinical,
            series_instance_uid=manifest["series_instance_uid"],
            source="dicom",
            warnings=warnings,
        )
        target = self.files.input_dir(job.job_id)
        _link_or_copy(folder, target)
        try:
            inspect_ct_series(target, series_instance_uid=job.series_instance_uid)
        except LlmctvError as exc:
            self.files.remove(job.job_id)
            error = {"code": exc.code, "detail": exc.detail}
            self.orders.update(order.order_id, status=OrderStatus.FAILED, error=error)
            log.warning("order %s: the received series was refused [%s]", order.order_id, exc.code)
            return
        self.store.create(job)
        self.orders.update(
            order.order_id, status=OrderStatus.MATCHED, job_id=job.job_id, matched_at=utcnow()
        )
        try:
            self.dispatcher.submit(job.job_id)
        except LlmctvError as exc:
            fail_job(self.store, job.job_id, exc)
            log.warning("order %s: the job could not be queued [%s]", order.order_id, exc.code)
            return
        log.info("order %s matched; job %s queued", order.order_id, job.job_id)

    def _deliver(self, order: Order) -> None:
        if order.send.status is not SendStatus.PENDING or order.job_id is None:
            return
        job = self.store.get(order.job_id)
        if job.status is JobStatus.FAILED:
            code = job.error.code if job.error else "unknown"
            send = order.send.model_copy(
                update={"status": SendStatus.FAILED, "reason": f"the job failed [{code}]"}
            )
            self.orders.update(order.order_id, send=send)
        elif job.status is JobStatus.SUCCEEDED and order.order_id not in self._sending:
            self._sending.add(order.order_id)
            self._sender.submit(self._send, order.order_id)

    def _send(self, order_id: str) -> None:
        try:
            order = self.orders.get(order_id)
            sending = order.send.model_copy(update={"status": SendStatus.SENDING})
            self.orders.update(order_id, send=sending)
            self.orders.update(order_id, send=self._attempt(order, sending))
        finally:
            self._sending.discard(order_id)

    def _attempt(self, order: Order, state: SendState) -> SendState:
        s = self.settings
        try:
            destination = resolve_destination(
                order.destination or "", destinations_from_settings(s)
            )
            result = send_instances(
                [self.files.rtstruct(order.job_id or "")],
                destination,
                calling_ae=s.dicom_ae_title,
                retries=s.dicom_send_retries,
                backoff_s=s.dicom_send_backoff_s,
            )
        except LlmctvError as exc:
            attempts = state.attempts + int(getattr(exc, "attempts", 1) or 1)
            log.warning("order %s: send-back failed [%s]", order.order_id, exc.code)
            return state.model_copy(
                update={"status": SendStatus.FAILED, "reason": exc.detail, "attempts": attempts}
            )
        log.info("order %s: RTSTRUCT sent to %s", order.order_id, destination.name)
        return state.model_copy(
            update={
                "status": SendStatus.SENT,
                "attempts": state.attempts + result.attempts,
                "reason": None,
                "sent_at": utcnow(),
            }
        )


def order_expiry(settings: Settings) -> timedelta:
    """How long an order waits for its study."""
    return timedelta(hours=settings.order_expiry_hours)
