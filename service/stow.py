"""STOW-RS instances into the DICOM storage: the receiver behind ``service.dicomweb``.

Each spooled part (:mod:`service.multipart_related`) is accepted exactly like a C-STORE
instance (:mod:`service.dicomnet.acceptance`: CT and RT Structure Set only, the listener's
transfer syntaxes, the same checks, the same atomic storage under ``<storage>/dicom/received``)
and recorded with a :class:`~service.dicomnet.assembly.SeriesAssembler` that reports quiet
series to the order desk, so orders match studies that arrive either way.

The answer is a PS3.18 store response (``application/dicom+json``): ReferencedSOPSequence
(0008,1199) for stored instances, FailedSOPSequence (0008,1198) with FailureReason
(0008,1197) for the others; 200 when all were stored, 202 when some failed, 409 when all did
(:func:`store_response`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread

from model.dicom.deflate import check_part10_inflated_size
from model.dicom.series import PARSE_ERRORS
from model.errors import LlmctvError, UnreadableDicomError
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
from service.dicomnet.events import DicomEvents
from service.dicomnet.listener import DicomListener, check_transfer_syntaxes, status_for_error
from service.dicomnet.settings import DicomSettings
from service.dicomnet.storage import remove_stale_temporaries
from service.multipart_related import SpooledPart
from workers.settings import StorageSettings

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
    dicom, storage
        The DICOM settings (transfer syntaxes, series timeout, instance size) and the storage
        folder's.
    on_complete
        Called once per completed series (the order desk's ``on_series_complete``).
    events
        Where quarantined instances and each request's outcome are reported.
    listener
        The running DICOM listener, if any: its assembler is shared, so a series that arrives
        partly by C-STORE and partly by STOW-RS completes once, with every instance counted.
    """

    def __init__(
        self,
        dicom: DicomSettings,
        storage: StorageSettings,
        on_complete: OnComplete,
        events: DicomEvents,
        listener: DicomListener | None = None,
    ) -> None:
        self.root = storage.storage_dir / "dicom" / "received"
        self.transfer_syntaxes = check_transfer_syntaxes(dicom.dicom_transfer_syntaxes)
        self.max_instance_bytes = dicom.dicom_max_instance_bytes
        self.events = events
        self._own = listener is None  # else the listener cleans, starts and stops
        self.assembler = (
            SeriesAssembler(dicom.dicom_series_timeout_s, on_complete)
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
                self.events.quarantined(sender, announced[1])
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
