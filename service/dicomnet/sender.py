"""C-STORE of finished instances (RTSTRUCT) to a configured destination, with retries.

One *attempt* is one association: every instance not yet delivered is sent over it. After a
failed attempt the sender waits ``backoff_s * 2**(n-1)`` seconds (n = the attempt that failed)
and tries again, resending only the instances the peer has not acknowledged, up to
``1 + retries`` attempts. Every kind of failure is retried (a rejection or a refusal may be
transient: a restarting PACS, a full disk); the last one raises
:class:`~service.dicomnet.errors.DicomSendError` with a reason a person can act on.

A success status with a warning (0x0001, 0xBxxx) counts as delivered; the warning is kept in
:attr:`SendResult.status`.

Files are streamed from disk as they are (never decoded) when the peer accepted their own
transfer syntax: this switches pynetdicom's ``STORE_SEND_CHUNKED_DATASET`` on, process-wide,
which only changes how ``send_c_store`` treats *file paths*. When the peer accepted another
uncompressed transfer syntax only, the file is decoded and pynetdicom converts it.

A destination marked ``/tls`` is reached over DICOM TLS (:mod:`service.dicomnet.tls`, TLS 1.2
or later, its certificate verified, ours presented when configured). The TLS context is built
before the first attempt: a missing or malformed certificate, key or CA file fails the send at
once (``dicom_tls_invalid``, no retries); a failed handshake is a ``tls_failed`` attempt, with
the TLS library's reason (e.g. the certificate is not trusted).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from model.errors import ConfigurationError
from service.dicomnet.destinations import DicomDestination, check_ae_title
from service.dicomnet.errors import DicomSendError, SendFailure
from service.dicomnet.tls import client_context

logger = logging.getLogger(__name__)

MAX_PDU_BYTES = 262_144
CONNECT_TIMEOUT_S = 10.0
#: How long the failure probe waits for a TLS alert after the handshake.
TLS_PROBE_READ_S = 1.0
ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 120.0
NETWORK_TIMEOUT_S = 120.0
_MAX_CONTEXTS = 128
_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_READ_ERRORS = (OSError, InvalidDicomError, EOFError, ValueError, KeyError, struct.error)


@dataclass(frozen=True)
class SendResult:
    """The outcome of a successful :func:`send_instances`.

    Attributes
    ----------
    destination
        Where the instances went.
    attempts
        Associations used (1 when the first one delivered everything).
    status
        0x0000, or the last warning status a peer returned (e.g. 0xB000 coercion).
    sop_instance_uids
        The delivered instances, in the order of ``paths``.
    """

    destination: DicomDestination
    attempts: int
    status: int
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class _Instance:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


@dataclass(frozen=True)
class _Failure:
    kind: SendFailure
    reason: str
    status: int | None = None


@dataclass
class _Attempt:
    """What one association delivered, and why it stopped where it failed."""

    delivered: list[str]
    warning: int | None = None
    failure: _Failure | None = None


# --- input ----------------------------------------------------------------------------------------
def _read_instance(path: Path) -> _Instance:
    """SOP class, instance and transfer syntax from the file meta information."""
    try:
        meta = read_file_meta_info(path)
        found = (
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except _READ_ERRORS as exc:
        raise DicomSendError(
            f"cannot read the file meta information of {path.name}: {type(exc).__name__}",
            failure="unreadable_file",
            attempts=0,
        ) from exc
    return _Instance(path, *found)


def _contexts(instances: Sequence[_Instance]) -> list[PresentationContext]:
    """One presentation context per SOP class and transfer syntax, each with one syntax.

    Every file's own transfer syntax is proposed (so it can be streamed unchanged); for
    uncompressed files Explicit and Implicit VR Little Endian are proposed too, as fall-backs
    that pynetdicom converts to. Separate contexts let the peer accept each one on its own.
    """
    wanted: dict[tuple[str, str], None] = {}
    for item in instances:
        wanted[(item.sop_class, item.transfer_syntax)] = None
        if item.transfer_syntax in _UNCOMPRESSED:
            wanted[(item.sop_class, ExplicitVRLittleEndian)] = None
            wanted[(item.sop_class, ImplicitVRLittleEndian)] = None
    if len(wanted) > _MAX_CONTEXTS:
        raise DicomSendError(
            f"{len(wanted)} presentation contexts needed, at most {_MAX_CONTEXTS} per association",
            failure="no_presentation_context",
            attempts=0,
        )
    return [build_context(UID(sop), UID(syntax)) for sop, syntax in wanted]


# --- one association ------------------------------------------------------------------------------
def _build_ae(calling_ae: str, contexts: list[PresentationContext]) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.connection_timeout = CONNECT_TIMEOUT_S
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    ae.requested_contexts = contexts
    return ae


def _tls_problem(sock: socket.socket, host: str, context: ssl.SSLContext) -> str | None:
    """Why a TLS session over ``sock`` fails, or ``None`` when it holds.

    With TLS 1.3 the server checks our certificate after the client's handshake has ended, so
    the first read is tried too: a refused client certificate arrives there as an alert.
    """
    try:
        with context.wrap_socket(sock, server_hostname=host) as secure:
            secure.settimeout(TLS_PROBE_READ_S)
            with contextlib.suppress(TimeoutError):
                secure.recv(1)
            return None
    except ssl.SSLCertVerificationError as exc:
        return f"TLS: the peer's certificate was not accepted ({exc.verify_message})"
    except ssl.SSLError as exc:
        return f"TLS handshake failed ({exc.reason or type(exc).__name__})"
    except OSError as exc:
        return f"TLS handshake failed ({exc.strerror or type(exc).__name__})"


def _connection_problem(
    host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[SendFailure, str]:
    """Why a connection to ``host:port`` fails (probed again, for a precise reason)."""
    problem = _tcp_problem(host, port, tls)
    if problem.startswith("TLS"):
        return "tls_failed", problem
    return "connection_failed", problem


def _tcp_problem(host: str, port: int, tls: ssl.SSLContext | None) -> str:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            if tls is not None:
                problem = _tls_problem(sock, host, tls)
                if problem is not None:
                    return problem
            return "connection failed (the port accepted a later probe)"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"connection timed out after {CONNECT_TIMEOUT_S:.0f} s"
    except socket.gaierror as exc:
        return f"host name cannot be resolved ({exc.strerror})"
    except OSError as exc:
        return f"connection failed ({exc.strerror or type(exc).__name__})"


def _association_failure(
    assoc: Association,
    connected: bool,
    destination: DicomDestination,
    tls: ssl.SSLContext | None = None,
) -> _Failure:
    """Describe an association that was not established."""
    where = destination.address
    if not connected:
        kind, problem = _connection_problem(destination.host, destination.port, tls)
        return _Failure(kind, f"cannot connect to {where}: {problem}")
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        detail = (
            f"{rsp.result_str}, source {rsp.source_str}, reason {rsp.reason_str}"
            if rsp is not None
            else "no reason given"
        )
        return _Failure("association_rejected", f"association rejected by {where}: {detail}")
    if tls is not None:
        kind, problem = _connection_problem(destination.host, destination.port, tls)
        if kind == "tls_failed":
            return _Failure(kind, f"association with {where} failed: {problem}")
    if not assoc.accepted_contexts:
        return _Failure(
            "association_aborted",
            f"association with {where} aborted (no presentation context accepted, "
            "or no answer within the ACSE timeout)",
        )
    return _Failure("association_aborted", f"association with {where} aborted by the peer")


def _payload(assoc: Association, item: _Instance) -> Path | Dataset:
    """The file itself (streamed unchanged) when its own transfer syntax was accepted, else
    the decoded data set (pynetdicom converts between uncompressed syntaxes)."""
    exact = any(
        cx.abstract_syntax == item.sop_class and cx.transfer_syntax[0] == item.transfer_syntax
        for cx in assoc.accepted_contexts
    )
    if exact:
        _config.STORE_SEND_CHUNKED_DATASET = True
        return item.path
    return dcmread(item.path)


def _store_one(
    assoc: Association, item: _Instance, where: str
) -> tuple[int | None, _Failure | None]:
    """Send one instance; returns (status, failure)."""
    try:
        payload = _payload(assoc, item)
    except _READ_ERRORS as exc:
        reason = f"cannot read {item.path.name}: {type(exc).__name__}"
        return None, _Failure("unreadable_file", reason)
    try:
        reply = assoc.send_c_store(payload)
    except ValueError as exc:
        reason = f"{where} accepted no presentation context for {item.path.name}: {exc}"
        return None, _Failure("no_presentation_context", reason)
    except RuntimeError:  # pynetdicom: the association is no longer established
        return None, _Failure("association_aborted", f"association with {where} was lost")
    status = reply.get("Status") if reply else None
    if status is None:
        reason = f"association with {where} aborted or timed out during C-STORE"
        return None, _Failure("association_aborted", reason)
    status = int(status)
    if status == 0x0000 or status == 0x0001 or 0xB000 <= status <= 0xBFFF:
        return status, None
    reason = f"{where} answered C-STORE of {item.sop_instance} with status 0x{status:04X}"
    return status, _Failure("status_failure", reason, status)


def _send_over(assoc: Association, items: Sequence[_Instance], where: str) -> _Attempt:
    """Send ``items`` over an established association, releasing it afterwards."""
    attempt = _Attempt(delivered=[])
    try:
        for item in items:
            status, failure = _store_one(assoc, item, where)
            if failure is not None:
                attempt.failure = failure
                if failure.kind == "association_aborted":
                    break
                continue  # the other instances may still go through
            attempt.delivered.append(item.sop_instance)
            if status:
                attempt.warning = status
    finally:
        if assoc.is_established:
            assoc.release()
    return attempt


def _attempt(
    items: Sequence[_Instance],
    destination: DicomDestination,
    calling_ae: str,
    tls: ssl.SSLContext | None = None,
) -> _Attempt:
    """One association: connect (over TLS with ``tls``), send what is left, release."""
    ae = _build_ae(calling_ae, _contexts(items))
    opened: list[bool] = []

    def _on_open(_: Event) -> None:
        opened.append(True)

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)],
        tls_args=(tls, destination.host) if tls is not None else None,
    )
    if not assoc.is_established:
        failure = _association_failure(assoc, bool(opened), destination, tls)
        return _Attempt([], failure=failure)
    return _send_over(assoc, items, destination.address)


# --- public ---------------------------------------------------------------------------------------
def send_instances(
    paths: Iterable[Path],
    destination: DicomDestination,
    *,
    calling_ae: str,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """C-STORE DICOM files to ``destination``, retrying with exponential backoff.

    Parameters
    ----------
    paths
        DICOM Part 10 files (each with file meta information).
    destination
        The peer (its AE title is the called AE title).
    calling_ae
        Our AE title on the association (usually ``dicom_ae_title``).
    retries
        Further attempts after the first (``dicom_send_retries``); 0 tries once.
    backoff_s
        Wait before the first retry (``dicom_send_backoff_s``); doubled for each later one.
    sleep
        How to wait (tests may inject one).

    Returns
    -------
    SendResult
        Attempts used, the final status and the delivered SOP instance UIDs.

    Raises
    ------
    DicomSendError
        With ``failure`` and a readable reason once the last attempt failed, or at once
        (``attempts`` 0) when a file cannot be read or needs too many contexts.
    ConfigurationError
        When ``calling_ae``, ``retries`` or ``backoff_s`` is invalid.
    DicomTlsError
        At once, for a TLS destination whose certificate, key or CA file is missing,
        unreadable or malformed.
    """
    _check_options(calling_ae, retries, backoff_s)
    items = [_read_instance(Path(p)) for p in paths]
    if not items:
        return SendResult(destination, 0, 0, ())
    tls = client_context(destination.tls) if destination.tls is not None else None
    delivered: dict[str, None] = {}
    warning = 0
    failure = _Failure("connection_failed", "nothing was tried")
    for number in range(1, retries + 2):
        remaining = [i for i in items if i.sop_instance not in delivered]
        outcome = _attempt(remaining, destination, calling_ae, tls) if remaining else _Attempt([])
        delivered.update(dict.fromkeys(outcome.delivered))
        warning = outcome.warning or warning
        if outcome.failure is None:
            return _result(destination, number, warning, items, delivered)
        failure = outcome.failure
        _log_failed_attempt(destination, number, retries + 1, failure, len(delivered), len(items))
        if number <= retries:
            sleep(backoff_s * 2 ** (number - 1))
    raise DicomSendError(
        f"C-STORE to {destination.name} ({destination.address}) failed after {retries + 1} "
        f"attempt(s), {len(delivered)} of {len(items)} instance(s) delivered: {failure.reason}",
        failure=failure.kind,
        attempts=retries + 1,
        status=failure.status,
    )


def _check_options(calling_ae: str, retries: int, backoff_s: float) -> None:
    check_ae_title(calling_ae, "calling AE title")
    if retries < 0:
        raise ConfigurationError(f"dicom_send_retries must be at least 0, got {retries}")
    if backoff_s < 0:
        raise ConfigurationError(f"dicom_send_backoff_s must be at least 0, got {backoff_s}")


def _result(
    destination: DicomDestination,
    attempts: int,
    warning: int,
    items: Sequence[_Instance],
    delivered: dict[str, None],
) -> SendResult:
    uids = tuple(i.sop_instance for i in items if i.sop_instance in delivered)
    logger.info(
        "sent %d instance(s) to %s (%s) in %d attempt(s), status 0x%04X",
        len(uids),
        destination.name,
        destination.address,
        attempts,
        warning,
    )
    return SendResult(destination, attempts, warning, uids)


def _log_failed_attempt(
    destination: DicomDestination,
    number: int,
    total: int,
    failure: _Failure,
    delivered: int,
    count: int,
) -> None:
    logger.warning(
        "C-STORE attempt %d/%d to %s failed (%d of %d delivered): %s",
        number,
        total,
        destination.name,
        delivered,
        count,
        failure.reason,
    )
