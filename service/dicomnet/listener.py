"""The DICOM listener: a pynetdicom Storage SCP and Verification SCP.

Received instances are checked, stored atomically (:mod:`service.dicomnet.storage`) and
recorded with a :class:`~service.dicomnet.assembly.SeriesAssembler`, which reports each
series once it has been quiet for the series timeout. The conformance statement is
``docs/dicom-conformance.md``.

Logs name associations by AE titles and addresses and instances by UIDs and counts; they
never contain patient names or IDs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage, RTStructureSetStorage
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from model.dicom.series import PARSE_ERRORS
from model.errors import ConfigurationError, LlmctvError, UnreadableDicomError
from service.dicomnet.assembly import OnComplete, ReceivedInstance, SeriesAssembler
from service.dicomnet.destinations import check_ae_title
from service.dicomnet.errors import (
    DicomListenerError,
    DicomStorageError,
    IncompleteInstanceError,
    InvalidUidError,
    SopClassMismatchError,
)
from service.dicomnet.settings import DicomSettings
from service.dicomnet.storage import check_uid, remove_stale_temporaries, store_instance

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
ACSE_TIMEOUT_S = 30.0
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
    (SopClassMismatchError, STATUS_SOP_CLASS_MISMATCH),
    (InvalidUidError, STATUS_CANNOT_UNDERSTAND),
    (IncompleteInstanceError, STATUS_CANNOT_UNDERSTAND),
    (UnreadableDicomError, STATUS_CANNOT_UNDERSTAND),
)

_UID_SYNTAX = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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


def _text(ds: Dataset, keyword: str) -> str:
    """A string attribute with padding removed ('' when missing)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip("\0 ")


def _describe(event: Event) -> ReceivedInstance:
    """Read the identifying attributes of the C-STORE data set and check them.

    The file path is filled in later, by the caller, once the instance is stored.
    """
    request = cast(C_STORE, event.request)
    request_sop = str(request.AffectedSOPInstanceUID)
    request_class = str(request.AffectedSOPClassUID)
    try:
        ds = event.dataset
        sop_uid = _text(ds, "SOPInstanceUID")
        sop_class = _text(ds, "SOPClassUID")
        values = {k: _text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "Modality")}
        accession = _text(ds, "AccessionNumber") or None
    except PARSE_ERRORS as exc:
        raise UnreadableDicomError(
            f"instance {request_sop}: data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    if sop_uid != request_sop:
        raise IncompleteInstanceError(
            f"SOPInstanceUID {sop_uid!r} differs from the request's {request_sop!r}"
        )
    if sop_class != request_class:
        raise SopClassMismatchError(
            f"instance {request_sop}: SOPClassUID {sop_class!r} differs from the request's"
            f" {request_class!r}"
        )
    missing = [keyword for keyword, value in values.items() if not value]
    if missing:
        raise IncompleteInstanceError(f"instance {request_sop} lacks {', '.join(missing)}")
    return ReceivedInstance(
        study_instance_uid=check_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
        series_instance_uid=check_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
        sop_instance_uid=check_uid(sop_uid, "SOPInstanceUID"),
        accession_number=accession,
        modality=values["Modality"],
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        path=Path(),
    )


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
        self._max_associations = max_associations
        self._assembler = SeriesAssembler(series_timeout_s, on_complete)
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None

    @classmethod
    def from_settings(cls, settings: DicomSettings, on_complete: OnComplete) -> DicomListener:
        """A listener configured by the ``dicom_*`` settings.

        Instances are stored under ``<storage_dir>/dicom/received``.
        """
        return cls(
            ae_title=settings.dicom_ae_title,
            host=settings.dicom_host,
            port=settings.dicom_port,
            allowed_aets=settings.dicom_allowed_aets,
            transfer_syntaxes=settings.dicom_transfer_syntaxes,
            storage_root=settings.storage_dir / "dicom" / "received",
            series_timeout_s=settings.dicom_series_timeout_s,
            on_complete=on_complete,
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
            server = ae.start_server(
                (self._host, self._requested_port), block=False, evt_handlers=self._handlers()
            )
        except OSError as exc:
            raise DicomListenerError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc.strerror or exc}"
            ) from exc
        if server is None:
            raise DicomListenerError("pynetdicom returned no server for a non-blocking start")
        self._ae, self._server = ae, server
        self._assembler.start()
        self._log_started()

    def stop(self, *, flush: bool = False) -> None:
        """Stop listening, abort open associations and stop the assembler (idempotent).

        Parameters
        ----------
        flush
            Report series still within their timeout as complete now; by default they are not
            reported (their files stay on disk).
        """
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = self._server = None
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
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.maximum_associations = self._max_associations
        ae.acse_timeout = ACSE_TIMEOUT_S
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
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_ACCEPTED, self._handle_accepted),
        ]

    def _log_started(self) -> None:
        logger.info(
            "DICOM listener %s on %s:%d (storage classes %d, transfer syntaxes %d)",
            self._ae_title,
            self._host,
            self.port,
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
        logger.info("association accepted from %s", _peer(event))

    def _handle_rejected(self, event: Event) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        called = str(getattr(requestor.primitive, "called_ae_title", "")).strip()
        if self._allowed and calling not in self._allowed:
            reason = "calling AE title not allowed"
        elif called != self._ae_title:
            reason = f"called AE title {called!r} is not {self._ae_title!r}"
        else:
            reason = f"more than {self._max_associations} simultaneous associations"
        logger.warning("association rejected from %s: %s", _peer(event), reason)

    def _handle_store(self, event: Event) -> int:
        """Store one instance; every failure becomes a C-STORE status here and only here."""
        try:
            instance = self._store(event)
        except LlmctvError as exc:
            status = status_for_error(exc)
            logger.warning("C-STORE from %s refused, status 0x%04X: %s", _peer(event), status, exc)
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

    def _store(self, event: Event) -> ReceivedInstance:
        described = _describe(event)
        path = store_instance(
            self._root,
            described.study_instance_uid,
            described.series_instance_uid,
            described.sop_instance_uid,
            event.encoded_dataset(include_meta=True),
        )
        return replace(described, path=path)


def _peer(event: Event) -> str:
    """``AET@address:port`` of the association's requestor."""
    requestor = event.assoc.requestor
    return f"{str(requestor.ae_title).strip()}@{requestor.address}:{requestor.port}"
