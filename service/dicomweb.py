"""DICOMweb STOW-RS: ``POST /dicomweb/studies[/{StudyInstanceUID}]`` (DICOM PS3.18 §10.5).

The body is ``multipart/related; type="application/dicom"``, one DICOM Part 10 file per part.
It is read as it streams in (:mod:`service.multipart_related`): each part is spooled to a
temporary file on the storage file system, then accepted exactly like a C-STORE instance
(:mod:`service.dicomnet.acceptance`: CT and RT Structure Set only, the listener's transfer
syntaxes, the same checks, the same atomic storage under ``<storage>/dicom/received``), and
recorded with a :class:`~service.dicomnet.assembly.SeriesAssembler` that reports quiet series
to the order desk, so orders match studies that arrive either way. The body is capped like
uploads (``max_upload_bytes``); a full disk refuses the request before it is read
(:mod:`service.storage_guard`).

The answer is a PS3.18 store response (``application/dicom+json``): ReferencedSOPSequence
(0008,1199) for stored instances, FailedSOPSequence (0008,1198) with FailureReason
(0008,1197) for the others; 200 when all were stored, 202 when some failed, 409 when all did.
These three statuses are STOW-RS's own protocol, so they are chosen here; errors of the
request as a whole (401, 413, 415, 400, 503) are problem+json of :mod:`service.problems`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool

from model.dicom.deflate import check_part10_inflated_size
from model.dicom.series import PARSE_ERRORS
from model.errors import LlmctvError, UnreadableDicomError
from service.audit import DICOM_EVENTS
from service.auth import Authorized
from service.dicomnet.acceptance import (
    ACCEPTED_SOP_CLASSES,
    StudyMismatchError,
    UnsupportedSopClassError,
    UnsupportedTransferSyntaxError,
    check_offer,
    describe_dataset,
    note_refusal,
    store_described,
)
from service.dicomnet.assembly import OnComplete, ReceivedInstance, SeriesAssembler
from service.dicomnet.errors import (
    DicomStorageError,
    IdentityConflictError,
    ModalityMismatchError,
)
from service.dicomnet.listener import DicomListener, check_transfer_syntaxes, status_for_error
from service.dicomnet.storage import check_uid, remove_stale_temporaries
from service.errors import StorageFullError
from service.multipart_related import PartSpooler, SpooledPart, related_boundary
from service.settings import Settings
from service.storage_guard import RETRY_AFTER_S

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
PART_TYPE = "application/dicom"
#: FailureReason values of STOW-RS's own refusals; the others are the C-STORE statuses.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
STUDY_UID_MISMATCH = 0xC409

_REASON_BY_ERROR: tuple[tuple[type[LlmctvError], int], ...] = (
    (UnsupportedSopClassError, SOP_CLASS_NOT_SUPPORTED),
    (UnsupportedTransferSyntaxError, TRANSFER_SYNTAX_NOT_SUPPORTED),
    (StudyMismatchError, STUDY_UID_MISMATCH),
)


def failure_reason(error: LlmctvError) -> int:
    """The FailureReason of a refused instance: STOW-RS's own, else the C-STORE status."""
    for error_class, reason in _REASON_BY_ERROR:
        if isinstance(error, error_class):
            return reason
    return status_for_error(error)


@dataclass(frozen=True)
class Outcome:
    """What happened to one part: stored (``failure`` None) or refused with a reason."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None

    def item(self) -> dict[str, Any]:
        """The DICOM JSON item of ReferencedSOPSequence or FailedSOPSequence."""
        item: dict[str, Any] = {}
        if self.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [self.sop_class_uid]}
        if self.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [self.sop_instance_uid]}
        if self.failure is not None:
            item["00081197"] = {"vr": "US", "Value": [self.failure]}
        return item


def store_response(outcomes: list[Outcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the DICOM JSON store response (PS3.18 Table 10.5.3-1)."""
    stored = [o.item() for o in outcomes if o.failure is None]
    failed = [o.item() for o in outcomes if o.failure is not None]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if not failed:
        return 200, body
    return (202 if stored else 409), body


class StowReceiver:
    """Accepts STOW-RS instances into the DICOM storage and reports completed series.

    Parameters
    ----------
    settings
        The gateway's settings (storage folder, transfer syntaxes, series timeout, limits).
    on_complete
        Called once per completed series (the order desk's ``on_series_complete``).
    listener
        The running DICOM listener, if any: its assembler is shared, so a series that arrives
        partly by C-STORE and partly by STOW-RS completes once, with every instance counted.
    """

    def __init__(
        self, settings: Settings, on_complete: OnComplete, listener: DicomListener | None = None
    ) -> None:
        self.root = settings.storage_dir / "dicom" / "received"
        self.transfer_syntaxes = check_transfer_syntaxes(settings.dicom_transfer_syntaxes)
        self.max_instance_bytes = settings.dicom_max_instance_bytes
        self._own = listener is None  # else the listener cleans, starts and stops
        self.assembler = (
            SeriesAssembler(settings.dicom_series_timeout_s, on_complete)
            if listener is None
            else listener.assembler
        )

    def start(self) -> None:
        """Create the storage folder; without a listener, clean up and start the assembler."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._own:
            remove_stale_temporaries(self.root)
            self.assembler.start()

    def stop(self) -> None:
        """Stop the own assembler (series still within their timeout are not reported)."""
        if self._own:
            self.assembler.stop()

    def accept(self, part: SpooledPart, study_uid: str | None, sender: str) -> Outcome:
        """Check, store and record one spooled part (blocking: run it in a thread)."""
        announced = ("", "")
        try:
            if part.too_large:
                raise DicomStorageError(f"a part exceeds {self.max_instance_bytes} bytes")
            if part.content_type not in ("", PART_TYPE):
                raise UnreadableDicomError(f"a part of type {part.content_type!r}")
            check_part10_inflated_size(part.path, self.max_instance_bytes, "a part")
            try:
                ds = dcmread(part.path, stop_before_pixels=True)
            except PARSE_ERRORS as exc:
                raise UnreadableDicomError(
                    f"a part is not a DICOM Part 10 file ({type(exc).__name__})"
                ) from exc
            announced = (
                str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
                str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
            )
            instance = self._store(part, ds, study_uid, sender)
        except LlmctvError as exc:
            reason = failure_reason(exc)
            log.warning("STOW-RS instance refused, reason 0x%04X: %s", reason, exc)
            if isinstance(exc, ModalityMismatchError):
                note_refusal(self.root, exc)
            if isinstance(exc, IdentityConflictError):
                DICOM_EVENTS.quarantined(sender, announced[1])
            return Outcome(*announced, failure=reason)
        finally:
            part.discard()
        self.assembler.record(instance)
        return Outcome(*announced)

    def _store(
        self, part: SpooledPart, ds: Any, study_uid: str | None, sender: str
    ) -> ReceivedInstance:
        sop_uid, sop_class = check_offer(ds.file_meta, ACCEPTED_SOP_CLASSES, self.transfer_syntaxes)
        described = describe_dataset(
            ds, announced_sop=sop_uid, announced_class=sop_class, calling_ae=sender
        )
        if study_uid is not None and described.study_instance_uid != study_uid:
            raise StudyMismatchError(
                f"instance {sop_uid}: StudyInstanceUID {described.study_instance_uid} is not"
                f" the request's {study_uid}"
            )
        try:
            data = part.read_bytes()
        except OSError as exc:
            raise DicomStorageError(f"instance {sop_uid}: its spooled part cannot be read") from exc
        return store_described(self.root, described, data)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the STOW-RS receiver while the gateway runs (its order desk gets the series)."""
    service = app.state.llmctv
    listener = getattr(app.state, "llmctv_listener", None)
    receiver = StowReceiver(service.settings, app.state.llmctv_orders.on_series_complete, listener)
    receiver.start()
    app.state.llmctv_stow = receiver
    try:
        yield
    finally:
        receiver.stop()


router = APIRouter(lifespan=_lifespan, tags=["dicomweb"])


async def _receive(request: Request, study_uid: str | None, sender: str) -> JSONResponse:
    receiver: StowReceiver = request.app.state.llmctv_stow
    boundary = related_boundary(request.headers.get("content-type", ""), PART_TYPE)
    spooler = PartSpooler(boundary, receiver.root, receiver.max_instance_bytes)
    outcomes: list[Outcome] = []
    handed: list[SpooledPart] = []  # discarded in the end whatever happens (idempotent)
    try:
        async for chunk in request.stream():
            try:
                parts = await run_in_threadpool(spooler.feed, chunk)  # disk writes
            except OSError as exc:
                raise StorageFullError(
                    f"a part cannot be spooled: {exc.strerror or type(exc).__name__}",
                    retry_after_s=RETRY_AFTER_S,
                ) from exc
            handed.extend(parts)
            for part in parts:
                outcomes.append(await run_in_threadpool(receiver.accept, part, study_uid, sender))
        spooler.finish()
    finally:
        spooler.close()
        for part in handed:
            part.discard()
    status, body = store_response(outcomes)
    stored = sum(o.failure is None for o in outcomes)
    refused = len(outcomes) - stored
    log.info("STOW-RS: %d instance(s) stored, %d refused", stored, refused)
    DICOM_EVENTS.stow_request(sender, stored, refused, status)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


_STORE_RESPONSE = {DICOM_JSON: {"schema": {"type": "object"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "all instances stored", "content": _STORE_RESPONSE},
    202: {
        "description": "some stored, the others in FailedSOPSequence",
        "content": _STORE_RESPONSE,
    },
    409: {"description": "no instance stored", "content": _STORE_RESPONSE},
    415: {"description": 'not multipart/related; type="application/dicom"'},
    503: {"description": "storage_full (disk backpressure), with Retry-After"},
}
#: The body is read from the stream, so FastAPI cannot describe it: it is declared here.
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            f'multipart/related; type="{PART_TYPE}"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


@router.post(
    "/dicomweb/studies",
    summary="STOW-RS: store instances (multipart/related; type=application/dicom)",
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
async def store_instances(request: Request, identity: Authorized) -> JSONResponse:
    """Store the instances of any studies."""
    return await _receive(request, None, f"DICOMweb:{identity.name}")


@router.post(
    "/dicomweb/studies/{study_instance_uid}",
    summary="STOW-RS: store instances of one study",
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
async def store_study_instances(
    request: Request, study_instance_uid: str, identity: Authorized
) -> JSONResponse:
    """Store instances that must belong to ``study_instance_uid`` (others fail, 0xC409)."""
    study = check_uid(study_instance_uid, "StudyInstanceUID")
    return await _receive(request, study, f"DICOMweb:{identity.name}")
