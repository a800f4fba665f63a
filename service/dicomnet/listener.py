"""The DICOM listener: a pynetdicom Storage SCP and Verification SCP.

Received instances are checked, stored atomically (:mod:`service.dicomnet.storage`) and
recorded with a :class:`~service.dicomnet.assembly.SeriesAssembler`, which reports each
series once it has been quiet for the series timeout. The conformance statement is
``docs/dicom-conformance.md``.

Limits on peers (maximum PDU and instance size, the ARTIM timer, slots per address and per
calling AE title) are enforced before pynetdicom buffers anything: see
:mod:`service.dicomnet.pdu_stream` and :mod:`service.dicomnet.admission`. Associations that
store nothing for the idle timeout are released by :mod:`service.dicomnet.idle`. With a TLS
context (:mod:`service.dicomnet.tls`) the listener speaks DICOM TLS only.

Logs name associations by AE titles and addresses and instances by UIDs and counts; they
never contain patient names or IDs. AE titles are peer-controlled, so they are logged escaped
(:func:`printable`): a control character cannot start a forged log line.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pydicom.uid import UID, CTImageStorage, RTStructureSetStorage
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket

from model.errors import (
    ConfigurationError,
    InflatedTooLargeError,
    LlmctvError,
    UnreadableDicomError,
)
from service.dicomnet.admission import (
    MAX_PENDING_TOTAL,
    Admission,
    AdmissionLimits,
    GuardedAssociationServer,
    serve_in_thread,
)
from service.dicomnet.assembly import OnComplete, ReceivedInstance, SeriesAssembler, printable
from service.dicomnet.destinations import check_ae_title
from service.dicomnet.errors import (
    DicomListenerError,
    DicomStorageError,
    IdentityConflictError,
    IncompleteInstanceError,
    InvalidUidError,
    ModalityMismatchError,
    SopClassMismatchError,
)
from service.dicomnet.events import DicomEvents
from service.dicomnet.idle import IdleWatch
from service.dicomnet.pdu_stream import GuardedSocket, PduLimits
from service.dicomnet.settings import DicomSettings
from service.dicomnet.storage import (
    record_refusal,
    remove_stale_temporaries,
    store_instance,
)
from service.dicomnet.store_request import describe_store
from service.dicomnet.tls import describe as describe_tls
from service.dicomnet.tls import listener_context
from workers.settings import StorageSettings
from workers.storage_space import StorageWatermark

logger = logging.getLogger(__name__)

#: Transfer syntaxes accepted when ``dicom_transfer_syntaxes`` is empty. The order is the
#: preference where a requestor proposes several in one presentation context: uncompressed
#: first, then lossless compression, lossy compression last.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless (lossy)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy allowed)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1, lossy)
)
#: Verification (C-ECHO) is offered with the two uncompressed little-endian syntaxes only.
VERIFICATION_TRANSFER_SYNTAXES: tuple[str, ...] = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
VERIFICATION = UID("1.2.840.10008.1.1")
#: Storage SOP classes accepted as SCP: the CT slices to contour and structure sets.
STORAGE_SOP_CLASSES: tuple[str, ...] = (CTImageStorage, RTStructureSetStorage)

MAX_PDU_BYTES = 262_144
MAX_ASSOCIATIONS = 10
DIMSE_TIMEOUT_S = 60.0
NETWORK_TIMEOUT_S = 60.0

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

#: The one mapping from refusal to C-STORE status (first matching class wins).
_STATUS_BY_ERROR: tuple[tuple[type[LlmctvError], int], ...] = (
    (DicomStorageError, STATUS_OUT_OF_RESOURCES),
    (InflatedTooLargeError, STATUS_OUT_OF_RESOURCES),
    (SopClassMismatchError, STATUS_SOP_CLASS_MISMATCH),
    (InvalidUidError, STATUS_CANNOT_UNDERSTAND),
    (IncompleteInstanceError, STATUS_CANNOT_UNDERSTAND),
    (UnreadableDicomError, STATUS_CANNOT_UNDERSTAND),
)

_UID_SYNTAX = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: A-ASSOCIATE-RJ (result, source, reason) of PS3.8 §9.3.4.
_RJ_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
_RJ_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
_RJ_TEMPORARY_CONGESTION = (0x02, 0x03, 0x01)
_REJECTION_CODES = {
    _RJ_CALLING_AE_NOT_RECOGNISED: "calling_ae_not_allowed",
    _RJ_LOCAL_LIMIT_EXCEEDED: "local_limit",
    _RJ_TEMPORARY_CONGESTION: "storage_full",
}
#: pynetdicom's own association count includes connections that never sent a request, so it is
#: set out of the way; :class:`~service.dicomnet.admission.Admission` keeps the real limits.
_PYNETDICOM_ASSOCIATIONS = 1_000


def status_for_error(error: BaseException) -> int:
    """The C-STORE status that reports ``error`` to the sending peer.

    Disk problems give 0xA700 (out of resources), a data set that contradicts its SOP class
    0xA900, unparseable or incomplete data 0xC000 (cannot understand), anything else 0x0110
    (processing failure).
    """
    for error_class, status in _STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return STATUS_PROCESSING_FAILURE


def check_transfer_syntaxes(values: Sequence[str]) -> tuple[str, ...]:
    """The transfer syntaxes to accept: ``values``, or the defaults when empty.

    Raises
    ------
    ConfigurationError
        When a value is not a UID.
    """
    for value in values:
        if not _UID_SYNTAX.match(value):
            raise ConfigurationError(f"dicom_transfer_syntaxes: {value!r} is not a UID")
    return tuple(dict.fromkeys(values)) or DEFAULT_TRANSFER_SYNTAXES


class DicomListener:
    """A Storage SCP and Verification SCP that files received series for contouring.

    Parameters
    ----------
    ae_title
        Our AE title; associations calling another title are rejected.
    host, port
        Address to listen on; port 0 picks a free port (see :attr:`port`).
    allowed_aets
        Calling AE titles accepted; empty accepts any (a warning is logged at start).
    transfer_syntaxes
        Transfer syntax UIDs accepted for storage; empty means
        :data:`DEFAULT_TRANSFER_SYNTAXES`.
    storage_root
        Where instances are stored (``<root>/<study>/<series>/<sop>.dcm``).
    series_timeout_s
        Inactivity after which a series counts as complete.
    on_complete
        Called once per completed series, from the assembler thread.
    max_associations
        Simultaneous associations; more are rejected (transient, local limit exceeded).
        Superseded by ``admission`` when that is given.
    admission
        Association slots per listener and per peer address.
    pdu_limits
        Maximum PDU and instance size, ARTIM and PDU timeouts.
    watermark
        When the storage counts as full; then new associations are rejected (transient,
        temporary congestion). ``None``: never checked.
    events
        Where accepted and rejected associations and quarantined instances are reported
        (default: nowhere but counters in memory).
    tls
        A server TLS context (:func:`service.dicomnet.tls.server_context`): the listener then
        accepts DICOM TLS connections only. ``None``: plain TCP.

    Raises
    ------
    ConfigurationError
        When the AE titles, transfer syntaxes, port or timeout are invalid.
    """

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        allowed_aets: Sequence[str],
        transfer_syntaxes: Sequence[str],
        storage_root: Path,
        series_timeout_s: float,
        on_complete: OnComplete,
        max_associations: int = MAX_ASSOCIATIONS,
        admission: AdmissionLimits | None = None,
        pdu_limits: PduLimits | None = None,
        watermark: StorageWatermark | None = None,
        events: DicomEvents | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._ae_title = check_ae_title(ae_title, "dicom_ae_title").strip()
        self._allowed = tuple(
            check_ae_title(t, "dicom_allowed_aets entry").strip() for t in allowed_aets
        )
        if not 0 <= port < 65536:
            raise ConfigurationError(f"dicom_port must be 0 to 65535, got {port}")
        self._host = host
        self._requested_port = port
        self._syntaxes = check_transfer_syntaxes(transfer_syntaxes)
        self._root = storage_root
        limits = admission or AdmissionLimits(
            max_associations=max_associations, max_per_peer=max(1, max_associations // 2)
        )
        self._admission = Admission(limits, pdu_limits or PduLimits(), tls)
        self._assembler = SeriesAssembler(series_timeout_s, on_complete)
        self._watermark = watermark
        self._events = events if events is not None else DicomEvents()
        self._watch = IdleWatch(
            self._admission, self._events, grace_s=self._admission.pdu_limits.artim_timeout_s
        )
        self._server: GuardedAssociationServer | None = None
        self._ae: AE | None = None

    @classmethod
    def from_settings(
        cls,
        settings: DicomSettings,
        storage: StorageSettings,
        on_complete: OnComplete,
        events: DicomEvents | None = None,
        watermark: StorageWatermark | None = None,
    ) -> DicomListener:
        """A listener configured by the ``dicom_*`` settings, reporting to ``events``.

        Instances are stored under ``<storage_dir>/dicom/received``; the watermark (by default
        the storage settings') refuses associations while the disk is full.

        Raises
        ------
        DicomTlsError
            With ``dicom_tls`` on, when a certificate, key or CA file is missing, unreadable
            or malformed (the listener is not built).
        """
        return cls(
            ae_title=settings.dicom_ae_title,
            host=settings.dicom_host,
            port=settings.dicom_port,
            allowed_aets=settings.dicom_allowed_aets,
            transfer_syntaxes=settings.dicom_transfer_syntaxes,
            storage_root=storage.storage_dir / "dicom" / "received",
            series_timeout_s=settings.dicom_series_timeout_s,
            on_complete=on_complete,
            admission=AdmissionLimits(
                max_associations=settings.dicom_max_associations,
                max_per_peer=settings.dicom_max_associations_per_peer,
                max_pending_per_peer=settings.dicom_max_pending_per_peer,
                max_per_ae=settings.dicom_max_associations_per_ae,
                idle_timeout_s=settings.dicom_idle_timeout_s,
            ),
            pdu_limits=PduLimits(
                max_pdu_bytes=settings.dicom_max_pdu_bytes,
                max_instance_bytes=settings.dicom_max_instance_bytes,
                artim_timeout_s=settings.dicom_artim_timeout_s,
                pdu_timeout_s=NETWORK_TIMEOUT_S,
            ),
            watermark=watermark or StorageWatermark.from_settings(storage),
            events=events,
            tls=listener_context(settings),
        )

    # --- properties -----------------------------------------------------------------------------
    @property
    def ae_title(self) -> str:
        """Our AE title."""
        return self._ae_title

    @property
    def host(self) -> str:
        """The listening address."""
        return self._host

    @property
    def port(self) -> int:
        """The listening port (the one picked by the system when started with port 0)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    @property
    def storage_root(self) -> Path:
        """Where received instances are stored."""
        return self._root

    @property
    def transfer_syntaxes(self) -> tuple[str, ...]:
        """Transfer syntax UIDs accepted for storage."""
        return self._syntaxes

    @property
    def assembler(self) -> SeriesAssembler:
        """The series assembler (for ``pending_count`` and tests)."""
        return self._assembler

    @property
    def admission(self) -> Admission:
        """Open connections and association slots (for tests and metrics)."""
        return self._admission

    @property
    def tls(self) -> bool:
        """Whether the listener speaks DICOM TLS."""
        return self._admission.tls is not None

    @property
    def running(self) -> bool:
        """Whether the listener accepts associations."""
        return self._server is not None

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start listening in background threads and return at once (idempotent).

        Raises
        ------
        DicomListenerError
            When the address cannot be bound (port in use, unknown host).
        """
        if self._server is not None:
            return
        self._root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self._root)
        ae = self._build_ae()
        try:
            made = ae.make_server(
                (self._host, self._requested_port),
                evt_handlers=self._handlers(),
                server_class=GuardedAssociationServer,
                admission=self._admission,
            )
        except OSError as exc:
            raise DicomListenerError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc.strerror or exc}"
            ) from exc
        server = cast(GuardedAssociationServer, made)
        serve_in_thread(server, f"dicom-listener-{self._ae_title}")
        self._ae, self._server = ae, server
        self._assembler.start()
        self._watch.start(f"dicom-listener-watch-{self._ae_title}")
        self._log_started()

    def stop(self, *, flush: bool = False) -> None:
        """Stop listening, abort open associations and stop the assembler (idempotent).

        Parameters
        ----------
        flush
            Report series still within their timeout as complete now; by default they are not
            reported (their files stay on disk).
        """
        if self._server is not None:
            self._server.shutdown()
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = self._server = None
        self._watch.stop()
        self._assembler.stop(flush=flush)
        logger.info("DICOM listener %s stopped", self._ae_title)

    def __enter__(self) -> DicomListener:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- pynetdicom set-up ----------------------------------------------------------------------
    def _build_ae(self) -> AE:
        ae = AE(ae_title=self._ae_title)
        ae.maximum_pdu_size = self._admission.pdu_limits.max_pdu_bytes
        ae.maximum_associations = _PYNETDICOM_ASSOCIATIONS + MAX_PENDING_TOTAL
        ae.acse_timeout = self._admission.pdu_limits.artim_timeout_s
        ae.dimse_timeout = DIMSE_TIMEOUT_S
        ae.network_timeout = NETWORK_TIMEOUT_S
        ae.require_called_aet = True
        ae.require_calling_aet = list(self._allowed)
        ae.add_supported_context(VERIFICATION, [UID(u) for u in VERIFICATION_TRANSFER_SYNTAXES])
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, [UID(u) for u in self._syntaxes])
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_ACCEPTED, self._handle_accepted),
        ]

    def _log_started(self) -> None:
        logger.info(
            "DICOM listener %s on %s:%d%s (storage classes %d, transfer syntaxes %d)",
            self._ae_title,
            self._host,
            self.port,
            " over TLS" if self.tls else "",
            len(STORAGE_SOP_CLASSES),
            len(self._syntaxes),
        )
        if not self._allowed:
            logger.warning(
                "dicom_allowed_aets is empty: associations from ANY calling AE title are "
                "accepted; list the planning system / PACS AE titles to restrict them"
            )

    # --- event handlers (called from pynetdicom's association threads) -----------------------
    def _handle_echo(self, event: Event) -> int:
        logger.debug("C-ECHO from %s", _peer(event))
        return STATUS_SUCCESS

    def _handle_accepted(self, event: Event) -> None:
        requestor = event.assoc.requestor
        sock = cast(AssociationSocket, event.assoc.dul.socket).socket
        if isinstance(sock, ssl.SSLSocket):
            logger.info("association accepted from %s (%s)", _peer(event), describe_tls(sock))
        else:
            logger.info("association accepted from %s", _peer(event))
        self._events.association_accepted(
            str(requestor.ae_title), str(requestor.address), tls=isinstance(sock, ssl.SSLSocket)
        )

    def _handle_requested(self, event: Event) -> None:
        """A-ASSOCIATE-RQ decoded: check the calling AE and give the association a slot.

        This is the earliest point pynetdicom allows (the request is at most
        ``dicom_max_pdu_bytes``); a refusal is an A-ASSOCIATE-RJ sent from here.
        """
        assoc = event.assoc
        calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "")).strip()
        transport = cast(AssociationSocket, assoc.dul.socket)
        sock = transport.socket
        if self._allowed and calling not in self._allowed:
            reason, rsd = "calling AE title not allowed", _RJ_CALLING_AE_NOT_RECOGNISED
        elif self._watermark is not None and (space := self._watermark.state()).full:
            reason, rsd = f"storage full: {space.detail}", _RJ_TEMPORARY_CONGESTION
        elif not isinstance(sock, GuardedSocket):
            return
        else:
            refusal = self._admission.admit_association(sock, calling)
            if refusal is None:
                sock.on_idle = functools.partial(_abort, assoc)
                return
            reason, rsd = f"local limit exceeded: {refusal}", _RJ_LOCAL_LIMIT_EXCEEDED
        peer = f"{printable(calling)}@{assoc.requestor.address}:{assoc.requestor.port}"
        logger.warning("association rejected from %s: %s", peer, reason)
        code = _REJECTION_CODES[rsd]
        self._events.association_rejected(calling, str(assoc.requestor.address), code)
        assoc.acse.send_reject(*rsd)
        assoc.kill()

    def _handle_rejected(self, event: Event) -> None:
        """pynetdicom rejected the association itself (its checks follow ours)."""
        requestor = event.assoc.requestor
        called = str(getattr(requestor.primitive, "called_ae_title", "")).strip()
        if called != self._ae_title:
            reason = f"called AE title '{printable(called)}' is not {self._ae_title!r}"
        else:
            reason = "refused by the DICOM library (see its log)"
        logger.warning("association rejected from %s: %s", _peer(event), reason)
        code = "called_ae_mismatch" if called != self._ae_title else "refused_by_library"
        self._events.association_rejected(str(requestor.ae_title), str(requestor.address), code)

    def _handle_store(self, event: Event) -> int:
        """Store one instance; every failure becomes a C-STORE status here and only here."""
        try:
            instance = self._store(event)
        except LlmctvError as exc:
            status = status_for_error(exc)
            logger.warning("C-STORE from %s refused, status 0x%04X: %s", _peer(event), status, exc)
            if isinstance(exc, ModalityMismatchError):
                self._note_refusal(exc)
            if isinstance(exc, IdentityConflictError):
                request = cast(C_STORE, event.request)
                self._events.quarantined(_peer(event), str(request.AffectedSOPInstanceUID))
            return status
        except Exception as exc:  # thread boundary: never let pynetdicom see a crash
            status = status_for_error(exc)
            logger.error(
                "C-STORE from %s failed unexpectedly (%s), status 0x%04X",
                _peer(event),
                type(exc).__name__,
                status,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            return status
        self._assembler.record(instance)
        logger.debug(
            "stored %s of series %s", instance.sop_instance_uid, instance.series_instance_uid
        )
        return STATUS_SUCCESS

    def _note_refusal(self, exc: ModalityMismatchError) -> None:
        try:
            record_refusal(
                self._root, exc.study_instance_uid, exc.code, exc.detail, exc.accession_number
            )
        except DicomStorageError as error:
            logger.warning("%s", error)

    def _store(self, event: Event) -> ReceivedInstance:
        described = describe_store(event, self._admission.pdu_limits.max_instance_bytes)
        path = store_instance(
            self._root,
            described.study_instance_uid,
            described.series_instance_uid,
            described.sop_instance_uid,
            event.encoded_dataset(include_meta=True),
            patient_id=described.patient_id,
        )
        return replace(described, path=path)


def _peer(event: Event) -> str:
    """``AET@address:port`` of the association's requestor."""
    requestor = event.assoc.requestor
    return f"{printable(str(requestor.ae_title).strip())}@{requestor.address}:{requestor.port}"


def _abort(assoc: Association) -> None:
    """A-ABORT queued for the association's own thread (called by the idle watch)."""
    assoc.abort(block=False)
