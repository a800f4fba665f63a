"""The order desk: matches orders with received studies, starts jobs, sends results back.

It runs a round every second, and at once when a series completes or an order arrives, so it
works whether jobs run in this process or on Celery workers, and it picks up where it left off
after a restart: everything it needs is in the order records, the job store and the
received-series manifests (:mod:`service.received_series`).

A round costs little when nothing changed: open orders come from the store's in-memory index
(:meth:`service.orders.OrderStore.open_orders`), manifests from :class:`ManifestIndex`, and a
waiting order is matched again only when the manifests changed.

Series completeness
-------------------
DICOM has no "end of series", so a series is complete when it has been quiet for the series
timeout; late instances start a new completion cycle with a new manifest counting every
instance. Then:

- a waiting order never matches a series that is still receiving, nor a manifest older than
  the order with fewer instances than a series needs (a stray slice of the study);
- an order whose job ran on fewer instances of the series is *superseded*: a new job runs on
  the whole series, with a warning naming the old job and both counts; the old job gets
  ``superseded_by``; when the old RTSTRUCT was already sent, the send-back is repeated with
  the new one and the old one is noted (``send.replaces_rtstruct``, ``superseded``);
- an order that failed on a partial series (e.g. ``too_few_slices``) is tried again on the
  new cycle while it has not expired.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from model.dicom.ingest_policy import IngestPolicy
from model.dicom.series import inspect_ct_series
from model.errors import LlmctvError
from service.dicomnet.assembly import ReceivedSeries
from service.dicomnet.destinations import destinations_from_settings, resolve_destination
from service.dicomnet.sender import send_instances
from service.orders import (
    ACCESSION_AMBIGUOUS,
    Order,
    OrderStatus,
    OrderStore,
    SendState,
    SendStatus,
    SupersededRun,
)
from service.received_series import Manifest, ManifestIndex, absorb_non_ct_cycle, write_manifest
from service.settings import OrderSettings, Settings
from workers.dispatch import JobDispatcher
from workers.errors import JobNotFoundError
from workers.jobs import Job, JobError, JobFiles, JobStatus, JobStore, new_job_id, utcnow
from workers.pipeline import fail_job
from workers.review import ReviewRequiredError, ReviewStatus, needs_approval
from workers.settings import StorageSettings

log = logging.getLogger(__name__)
#: Fewest instances a manifest older than the order must have to be matched.
MIN_INSTANCES = IngestPolicy().min_slices


def received_root(storage: StorageSettings) -> Path:
    """Where the DICOM listener stores instances (``<storage>/dicom/received``)."""
    return storage.storage_dir / "dicom" / "received"


def record_series(series: ReceivedSeries) -> bool:
    """Listener callback without a desk: write the manifest of a completed CT series.

    Returns whether the series was recorded (non-CT series, e.g. RTSTRUCT, are not).
    """
    if series.modality != "CT":
        if not absorb_non_ct_cycle(series):
            log.info("ignoring a completed %s series (not CT)", series.modality)
        return False
    write_manifest(series)
    log.info(
        "CT series %s complete: %d instances", series.series_instance_uid, series.instance_count
    )
    return True


def _link_or_copy(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.dcm")):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _usable_for(order: Order, manifest: Manifest) -> bool:
    """Whether a waiting order may be matched with this manifest now."""
    if manifest.completed_at < order.created_at and manifest.instance_count < MIN_INSTANCES:
        return False  # a stray instance received before the order: wait for the series
    return not manifest.still_receiving()


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
        self.root = received_root(settings.storage)
        self.manifests = ManifestIndex(self.root)
        self._tried: dict[str, int] = {}  # waiting order -> manifest generation it was tried at
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
        if record_series(series):
            self.manifests.invalidate()
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
        """Supersede partial runs, match waiting orders, expire old ones, send results."""
        if self.manifests.refresh():
            self._supersede_partial_runs()
        generation = self.manifests.generation
        open_orders = self.orders.open_orders()
        for order in open_orders:
            try:
                self._step(order, generation)
            except LlmctvError as exc:  # this order's problem (its job gone...): only it fails
                self._fail_order(order, exc)
        if len(self._tried) > len(open_orders):  # forget orders that closed
            open_ids = {o.order_id for o in open_orders}
            self._tried = {k: v for k, v in self._tried.items() if k in open_ids}

    def _step(self, order: Order, generation: int) -> None:
        """One round for one open order: expire, match, or deliver."""
        if order.status is OrderStatus.WAITING:
            if utcnow() >= order.expires_at:
                self.orders.update(order.order_id, status=OrderStatus.EXPIRED)
                log.info("order %s expired unmatched", order.order_id)
            elif self._tried.get(order.order_id) != generation:
                self._tried[order.order_id] = generation
                self._match(order)
        elif order.status is OrderStatus.MATCHED:
            self._deliver(order)

    def _fail_order(self, order: Order, exc: LlmctvError) -> None:
        """End one order with the error's code; the other orders go on."""
        error = {"code": exc.code, "detail": exc.detail}
        update: dict[str, Any] = {"error": error}
        if order.status is OrderStatus.WAITING:
            update["status"] = OrderStatus.FAILED
        else:
            reason = f"[{exc.code}] {exc.detail}"
            update["send"] = order.send.model_copy(
                update={"status": SendStatus.FAILED, "reason": reason}
            )
        self.orders.update(order.order_id, **update)
        log.warning("order %s failed alone: [%s]", order.order_id, exc.code)

    def _match(self, order: Order) -> None:
        found = self.manifests.candidates(
            order.study_instance_uid, order.accession_number, order.series_instance_uid
        )
        if not order.study_instance_uid and len({m.patient for m in found}) > 1:
            self._fail_ambiguous_accession(order, found)
            return
        candidates = [m for m in found if _usable_for(order, m)]
        if not found:
            self._fail_if_refused(order)
        if not candidates:
            return
        manifest = max(candidates, key=lambda m: m.instance_count)
        warnings = []
        if len(candidates) > 1:
            warnings.append(
                f"the study holds {len(candidates)} CT series; contoured the largest, "
                f"{manifest.series_instance_uid} (name one in the order to choose)"
            )
        self._start_job(order, manifest, warnings, order.order_id)

    def _fail_ambiguous_accession(self, order: Order, found: list[Manifest]) -> None:
        """An accession number that names studies of several patients: contour none of them."""
        patients = len({m.patient for m in found})
        detail = (
            f"accession number {order.accession_number!r} names studies of {patients} patients; "
            "name the StudyInstanceUID in the order"
        )
        error = {"code": ACCESSION_AMBIGUOUS, "detail": detail}
        self.orders.update(order.order_id, status=OrderStatus.FAILED, error=error)
        log.warning("order %s: its accession number names %d patients", order.order_id, patients)

    def _fail_if_refused(self, order: Order) -> None:
        """Fail a waiting order whose study was refused by the listener and has no CT series."""
        refusal = self.manifests.refusal(order.study_instance_uid, order.accession_number)
        if refusal is None:
            return
        detail = f"the study's instances were refused: {refusal.detail}"
        error = {"code": refusal.code, "detail": detail}
        self.orders.update(order.order_id, status=OrderStatus.FAILED, error=error)
        log.warning("order %s: its study was refused [%s]", order.order_id, refusal.code)

    def _start_job(
        self, order: Order, manifest: Manifest, warnings: list[str], job_id: str
    ) -> None:
        job = Job(
            job_id=job_id,
            clinical=order.clinical,
            series_instance_uid=manifest.series_instance_uid,
            source="dicom",
            warnings=warnings,
            submitted_by=order.created_by,
        )
        target = self.files.input_dir(job.job_id)
        _link_or_copy(manifest.folder, target)
        matched = {
            "matched_series_instance_uid": manifest.series_instance_uid,
            "matched_study_instance_uid": manifest.study_instance_uid,
            "matched_instances": manifest.instance_count,
            "matched_cycle": manifest.cycle,
        }
        try:
            inspect_ct_series(
                target,
                series_instance_uid=job.series_instance_uid,
                policy=self.settings.contouring.ingest_policy(),
            )
        except LlmctvError as exc:
            self.files.remove(job.job_id)
            error = {"code": exc.code, "detail": exc.detail}
            self.orders.update(order.order_id, status=OrderStatus.FAILED, error=error, **matched)
            log.warning("order %s: the received series was refused [%s]", order.order_id, exc.code)
            return
        self.store.create(job)
        self.orders.update(
            order.order_id,
            status=OrderStatus.MATCHED,
            job_id=job.job_id,
            matched_at=utcnow(),
            error=None,
            **matched,
        )
        try:
            self.dispatcher.submit(job.job_id)
        except LlmctvError as exc:
            fail_job(self.store, job.job_id, exc)
            log.warning("order %s: the job could not be queued [%s]", order.order_id, exc.code)
            return
        log.info("order %s matched; job %s queued", order.order_id, job.job_id)

    # --- series that grew after a job started ----------------------------------------------
    def _supersede_partial_runs(self) -> None:
        """Re-run orders whose series received more instances after they were matched."""
        for order in self.orders.all():
            if order.matched_series_instance_uid is None or order.order_id in self._sending:
                continue
            study = order.matched_study_instance_uid or order.study_instance_uid or ""
            key = (study, order.matched_series_instance_uid)
            manifest = self.manifests.by_series.get(key)  # the same study: never another's
            if (
                manifest is None
                or manifest.cycle <= (order.matched_cycle or 0)
                or manifest.instance_count <= (order.matched_instances or 0)
                or manifest.still_receiving()
            ):
                continue
            if order.status is OrderStatus.MATCHED and order.job_id is not None:
                self._supersede(order, manifest)
            elif order.status is OrderStatus.FAILED and utcnow() < order.expires_at:
                log.info("order %s: more instances arrived; matching again", order.order_id)
                self.orders.update(order.order_id, status=OrderStatus.WAITING, error=None)

    def _supersede(self, order: Order, manifest: Manifest) -> None:
        old_id = order.job_id or ""
        try:
            old = self.store.get(old_id)
        except JobNotFoundError:
            old = None
        old_uid = old.rtstruct_sop_instance_uid if old else None
        sent = order.send.status is SendStatus.SENT
        new_id = new_job_id()
        warnings = [
            f"supersedes job {old_id}, which ran on {order.matched_instances} instances of "
            f"series {manifest.series_instance_uid}; {manifest.instance_count} had arrived when "
            "the series completed again, and this job uses them all"
        ]
        send = order.send
        if sent:
            warnings.append(
                f"the RTSTRUCT {old_uid} of job {old_id} was already sent to "
                f"{order.destination}; this job's RTSTRUCT is sent too and replaces it: "
                "discard the earlier one"
            )
        if send.status is not SendStatus.NOT_REQUESTED:
            send = SendState(status=SendStatus.PENDING, replaces_rtstruct=old_uid if sent else None)
        run = SupersededRun(
            job_id=old_id,
            instances=order.matched_instances or 0,
            rtstruct_sop_instance_uid=old_uid,
            sent_at=order.send.sent_at if sent else None,
        )
        self.orders.update(order.order_id, superseded=[*order.superseded, run], send=send)
        if old is not None:
            note = f"superseded by job {new_id}: more instances of the series arrived"
            update: dict[str, object] = {"superseded_by": new_id, "warnings": [*old.warnings, note]}
            if not old.status.finished:  # no point finishing a contour on a partial series
                update |= {
                    "status": JobStatus.CANCELLED,
                    "finished_at": utcnow(),
                    "error": JobError(code="job_superseded", detail=note),
                }
            self.store.update(old_id, **update)
        log.warning(
            "order %s: job %s ran on %s of %d instances; superseded by job %s",
            order.order_id,
            old_id,
            order.matched_instances,
            manifest.instance_count,
            new_id,
        )
        self._start_job(self.orders.get(order.order_id), manifest, warnings, new_id)

    def _deliver(self, order: Order) -> None:
        if order.send.status is not SendStatus.PENDING or order.job_id is None:
            return
        job = self.store.get(order.job_id)
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            code = job.error.code if job.error else "unknown"
            reason = f"the job {job.status.value} [{code}]"
            send = order.send.model_copy(update={"status": SendStatus.FAILED, "reason": reason})
            self.orders.update(order.order_id, send=send)
        elif job.status is JobStatus.SUCCEEDED and order.order_id not in self._sending:
            if not self._review_allows(order, job):
                return
            self._sending.add(order.order_id)
            self._sender.submit(self._send, order.order_id)

    def _review_allows(self, order: Order, job: Job) -> bool:
        """Whether ``job``'s RTSTRUCT may leave now (``require_review``: only once approved).

        A job with needs-attention findings waits for an approval too (``hold_needs_attention``).
        A rejected job's send-back ends failed; it is never sent.
        """
        s = self.settings.review
        needs_review = needs_approval(s.require_review, s.hold_needs_attention, job.attention)
        if not needs_review or job.review.status is ReviewStatus.APPROVED:
            return True
        if job.review.status is ReviewStatus.REJECTED:
            reason = "rejected in review; the RTSTRUCT is never sent"
            send = order.send.model_copy(update={"status": SendStatus.FAILED, "reason": reason})
            self.orders.update(order.order_id, send=send)
            log.info("order %s: not sent, its job was rejected in review", order.order_id)
        return False

    def require_approval(self, order: Order) -> None:
        """Refuse a (re)send of an order whose job is not approved, when review is required.

        Raises
        ------
        ReviewRequiredError
            ``require_review`` is set (or the job needs attention and ``hold_needs_attention``
            is set) and the order's job is not approved.
        """
        job = self.store.get(order.job_id) if order.job_id else None
        s = self.settings.review
        attention = job.attention if job is not None else []
        if not needs_approval(s.require_review, s.hold_needs_attention, attention):
            return
        if job is None or job.review.status is not ReviewStatus.APPROVED:
            state = job.review.status.value if job is not None else "not started"
            raise ReviewRequiredError(
                f"order {order.order_id}: its job must be approved before it is sent ({state})"
            )

    def _send(self, order_id: str) -> None:
        try:
            order = self.orders.get(order_id)
            sending = order.send.model_copy(update={"status": SendStatus.SENDING})
            self.orders.update(order_id, send=sending)
            self.orders.update(order_id, send=self._attempt(order, sending))
        finally:
            self._sending.discard(order_id)

    def _attempt(self, order: Order, state: SendState) -> SendState:
        s = self.settings.dicom
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


def order_expiry(settings: OrderSettings) -> timedelta:
    """How long an order waits for its study."""
    return timedelta(hours=settings.order_expiry_hours)
