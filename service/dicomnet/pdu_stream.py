"""Limits on what a DICOM peer may send, enforced on the TCP byte stream before pynetdicom.

pynetdicom's upper layer reads a PDU's 6-byte header and then the whole declared length (up to
4 GiB) into memory before it looks at the content, and it blocks in that read for as long as
the peer drips bytes. :class:`GuardedSocket` is the accepted client socket that pynetdicom
reads from; it follows the PDU framing (PS3.8 §9.3) of every byte it hands on, so it can
refuse a connection *before* anything large is buffered:

- a PDU whose declared length exceeds ``max_pdu_bytes`` (the maximum length we advertise);
- any PDU other than an A-ASSOCIATE-RQ before the association is requested;
- an A-ASSOCIATE-RQ that is not complete ``artim_timeout_s`` after the connection opened
  (the ARTIM timer of PS3.8 §9.1.5, which pynetdicom cannot apply to a peer that drips);
- a PDU that is not complete ``pdu_timeout_s`` after its first byte;
- an A-ASSOCIATE-RQ whose called or calling AE title holds a control character or a
  backslash (not an AE title, PS3.5 §6.2; refused before pynetdicom logs it raw);
- a data set (the P-DATA-TF fragments of one C-STORE) larger than ``max_instance_bytes``, or
  a command set larger than :data:`MAX_COMMAND_BYTES`, counted from the PDV headers before the
  fragments are kept.

A refused connection gets an A-ABORT (source: service provider) and is shut down; pynetdicom
then reads end-of-stream and ends the association as a closed transport. The hook is a
``socket.socket`` subclass handed to pynetdicom by the server's ``get_request`` (see
:mod:`service.dicomnet.admission`); nothing in pynetdicom is patched.

Over DICOM TLS the same guard reads the decrypted stream: :class:`GuardedTlsSocket` is an
``ssl.SSLSocket`` (so pynetdicom sees TLS-buffered bytes as ready) whose handshake runs on the
first read, in the association's thread and inside the ARTIM timer; a failed handshake (a
plain-TCP client, a client without an accepted certificate) refuses the connection like any
other violation, without an A-ABORT (there is no TLS session to carry one).

The socket also notes when the peer last sent data-set bytes (:attr:`GuardedSocket.last_data`):
the listener releases associations that only keep themselves alive (C-ECHO, nothing stored)
for longer than the idle timeout.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from model.errors import ConfigurationError
from service.dicomnet.assembly import printable

logger = logging.getLogger(__name__)

PDU_HEADER_BYTES = 6
PDV_HEADER_BYTES = 6  # item length (4), presentation context ID (1), message control header (1)
A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
#: A-ABORT PDU: type 7, length 4, source 2 (service provider), reason 0 (not specified).
A_ABORT_BY_PROVIDER = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0))
#: Bytes of an A-ASSOCIATE-RQ body up to the end of the calling AE title.
_RQ_TITLES_END = 36
#: Bytes allowed in an AE title: printable ASCII without the backslash.
_AE_BYTES = frozenset(range(0x20, 0x7F)) - {0x5C}
#: Largest command set accepted (a C-STORE-RQ command is about 200 bytes).
MAX_COMMAND_BYTES = 65_536
_COMMAND_FLAG = 0x01
_LAST_FRAGMENT_FLAG = 0x02


@dataclass(frozen=True)
class PduLimits:
    """What one connection may send.

    Attributes
    ----------
    max_pdu_bytes
        Largest PDU length field accepted (the maximum length we advertise).
    max_instance_bytes
        Largest data set of one DIMSE message (one received instance).
    artim_timeout_s
        Seconds from the connection to a complete A-ASSOCIATE-RQ.
    pdu_timeout_s
        Seconds from the first byte of a PDU to its last one; also bounds each send.
    """

    max_pdu_bytes: int = 262_144
    max_instance_bytes: int = 268_435_456
    artim_timeout_s: float = 5.0
    pdu_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_pdu_bytes < 4096:
            raise ConfigurationError(
                f"dicom_max_pdu_bytes must be >= 4096, got {self.max_pdu_bytes}"
            )
        if self.max_instance_bytes < 1:
            raise ConfigurationError("dicom_max_instance_bytes must be positive")
        if not (self.artim_timeout_s > 0 and self.pdu_timeout_s > 0):
            raise ConfigurationError("the ARTIM and PDU timeouts must be positive")


class GuardedSocket(socket.socket):
    """An accepted connection that refuses, on the byte stream, what :class:`PduLimits` forbid.

    Only pynetdicom's upper-layer thread reads from it, so the framing state needs no lock;
    the flags read by :mod:`service.dicomnet.admission` are guarded by ``lock``.

    Parameters
    ----------
    accepted
        The socket returned by ``accept``; it is detached (this object owns the descriptor).
    limits
        The limits to enforce.
    on_close
        Called once when the socket is closed (admission bookkeeping).
    """

    def __init__(
        self,
        accepted: socket.socket,
        limits: PduLimits,
        on_close: Callable[[GuardedSocket], None] | None = None,
    ) -> None:
        family, kind, proto = accepted.family, accepted.type, accepted.proto
        try:
            peer = accepted.getpeername()
        except OSError:
            peer = None
        host, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("?", 0)
        super().__init__(family, kind, proto, fileno=accepted.detach())
        self._setup(limits, on_close, host, port)

    def _setup(
        self,
        limits: PduLimits,
        on_close: Callable[[GuardedSocket], None] | None,
        host: str,
        port: int,
    ) -> None:
        self.settimeout(limits.pdu_timeout_s)
        self.limits = limits
        self.peer_host = host
        self.peer = f"{host}:{port}"
        self.lock = threading.Lock()
        self.requested = False  # a complete A-ASSOCIATE-RQ was read
        self.admitted = False  # the association holds a slot (set by admission)
        self.refused = False
        self.calling_ae = ""  # set by admission with the slot
        self.admitted_at = 0.0
        self.last_data = 0.0  # monotonic time of the last data-set fragment received
        #: Ends the association politely (set by the listener: pynetdicom's abort).
        self.on_idle: Callable[[], None] | None = None
        self.idle_since: float | None = None  # when the idle release was asked for
        self._on_close = on_close
        self._opened = time.monotonic()
        self._pdu_started = self._opened
        self._header = bytearray()
        self._pdu_type = 0
        self._body_left = 0
        self._rq_titles = bytearray()
        self._pdv_header = bytearray()
        self._pdv_left = 0
        self._data_set_bytes = 0
        self._command_bytes = 0

    # --- socket API used by pynetdicom -----------------------------------------------------
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Read like ``socket.recv``; end-of-stream (``b""``) once the connection is refused."""
        if self.refused:
            return b""
        remaining = self._deadline() - time.monotonic()
        if remaining <= 0:
            return self._refuse(self._late_reason())
        self.settimeout(remaining)
        try:
            self._before_read()
            data = super().recv(bufsize, flags)
        except TimeoutError:
            return self._refuse(self._late_reason())
        except ConnectionError:  # reset by the peer: end-of-stream, without a traceback
            return b""
        except ssl.SSLError as exc:  # only a TLS socket raises it
            return self._refuse(f"TLS: {exc.reason or type(exc).__name__}")
        finally:
            if not self.refused:
                self.settimeout(self.limits.pdu_timeout_s)
        reason = self._follow(data)
        if reason is not None:
            return self._refuse(reason)
        return data

    def shutdown(self, how: int) -> None:
        """Shut down like ``socket.shutdown``; a full shutdown frees the admission slot.

        pynetdicom closes a connection with ``shutdown(SHUT_RDWR)`` then ``close()``, and
        skips the ``close`` when the shutdown fails (a peer that reset the connection), so the
        slot is freed here, whether or not the shutdown succeeds.
        """
        try:
            super().shutdown(how)
        finally:
            if how == socket.SHUT_RDWR:
                self._release()

    def close(self) -> None:
        """Close the socket and free the admission slot."""
        self._release()
        super().close()

    def _release(self) -> None:
        callback = getattr(self, "_on_close", None)
        self._on_close = None
        if callback is not None:
            callback(self)

    def _before_read(self) -> None:
        """Hook run before each read (the TLS handshake)."""

    def _can_abort(self) -> bool:
        """Whether an A-ABORT can be sent (a TLS socket needs its session first)."""
        return True

    def last_activity(self) -> float:
        """When the association was admitted or last received data-set bytes (monotonic)."""
        return max(self.admitted_at, self.last_data)

    # --- deadlines ---------------------------------------------------------------------------
    def _in_pdu(self) -> bool:
        return bool(self._header) or self._body_left > 0

    def _deadline(self) -> float:
        if not self.requested:
            return self._opened + self.limits.artim_timeout_s
        if self._in_pdu():
            return self._pdu_started + self.limits.pdu_timeout_s
        return time.monotonic() + self.limits.pdu_timeout_s

    def _late_reason(self) -> str:
        if not self.requested:
            return f"no complete A-ASSOCIATE-RQ within {self.limits.artim_timeout_s:g} s (ARTIM)"
        return f"a PDU was not complete within {self.limits.pdu_timeout_s:g} s"

    # --- framing -----------------------------------------------------------------------------
    def _follow(self, data: bytes) -> str | None:
        """Advance the PDU framing over ``data``; the reason to refuse, or ``None``."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._body_left == 0:
                if not self._header:
                    self._pdu_started = time.monotonic()
                take = min(PDU_HEADER_BYTES - len(self._header), len(view) - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) == PDU_HEADER_BYTES:
                    reason = self._start_pdu()
                    if reason is not None:
                        return reason
                continue
            take = min(self._body_left, len(view) - pos)
            reason = None
            if self._pdu_type == P_DATA_TF:
                reason = self._follow_pdvs(view[pos : pos + take])
            elif self._pdu_type == A_ASSOCIATE_RQ:
                reason = self._check_titles(view[pos : pos + take])
            if reason is not None:
                return reason
            pos += take
            self._body_left -= take
            if self._body_left == 0:
                self._end_pdu()
        return None

    def _start_pdu(self) -> str | None:
        pdu_type, length = self._header[0], int.from_bytes(self._header[2:6], "big")
        self._header.clear()
        if not self.requested and pdu_type != A_ASSOCIATE_RQ:
            return f"PDU type 0x{pdu_type:02X} before an A-ASSOCIATE-RQ"
        if length > self.limits.max_pdu_bytes:
            return f"PDU of {length} bytes exceeds the maximum of {self.limits.max_pdu_bytes}"
        self._pdu_type, self._body_left = pdu_type, length
        self._rq_titles.clear()
        self._pdv_header.clear()
        self._pdv_left = 0
        if length == 0:
            self._end_pdu()
        return None

    def _end_pdu(self) -> None:
        if self._pdu_type == A_ASSOCIATE_RQ and not self.requested:
            with self.lock:
                self.requested = True

    def _check_titles(self, chunk: memoryview) -> str | None:
        """Refuse an A-ASSOCIATE-RQ whose AE titles are not printable (PS3.8 §9.3.2)."""
        if len(self._rq_titles) >= _RQ_TITLES_END:
            return None
        self._rq_titles += chunk[: _RQ_TITLES_END - len(self._rq_titles)]
        if len(self._rq_titles) < _RQ_TITLES_END:
            return None
        for name, title in (("called", self._rq_titles[4:20]), ("calling", self._rq_titles[20:36])):
            if not set(title) <= _AE_BYTES:
                shown = printable(title.decode("latin-1").strip())
                return f"A-ASSOCIATE-RQ with an invalid {name} AE title '{shown}'"
        return None

    def _follow_pdvs(self, chunk: memoryview) -> str | None:
        """Count the data of each PDV item of a P-DATA-TF body chunk (PS3.8 §9.3.5.1)."""
        pos = 0
        while pos < len(chunk):
            if self._pdv_left == 0:
                take = min(PDV_HEADER_BYTES - len(self._pdv_header), len(chunk) - pos)
                self._pdv_header += chunk[pos : pos + take]
                pos += take
                if len(self._pdv_header) == PDV_HEADER_BYTES:
                    item_length = int.from_bytes(self._pdv_header[0:4], "big")
                    control = self._pdv_header[5]
                    self._pdv_header.clear()
                    self._pdv_left = max(item_length - 2, 0)
                    reason = self._count_fragment(control, self._pdv_left)
                    if reason is not None:
                        return reason
                continue
            take = min(self._pdv_left, len(chunk) - pos)
            pos += take
            self._pdv_left -= take
        return None

    def _count_fragment(self, control: int, size: int) -> str | None:
        last = bool(control & _LAST_FRAGMENT_FLAG)
        if control & _COMMAND_FLAG:
            total = self._command_bytes + size
            if total > MAX_COMMAND_BYTES:
                return f"a command set of more than {MAX_COMMAND_BYTES} bytes"
            self._command_bytes = 0 if last else total
            return None
        self.last_data = time.monotonic()
        total = self._data_set_bytes + size
        if total > self.limits.max_instance_bytes:
            return (
                f"an instance of more than {self.limits.max_instance_bytes} bytes "
                "(dicom_max_instance_bytes)"
            )
        self._data_set_bytes = 0 if last else total
        return None

    # --- refusal -----------------------------------------------------------------------------
    def _refuse(self, reason: str) -> bytes:
        """Abort the connection: A-ABORT, shut down, and end-of-stream for pynetdicom."""
        with self.lock:
            self.refused = True
        logger.warning("DICOM connection from %s aborted: %s", self.peer, reason)
        if self._can_abort():
            with contextlib.suppress(OSError):
                self.settimeout(1.0)
                self.sendall(A_ABORT_BY_PROVIDER)
        with contextlib.suppress(OSError):
            self.shutdown(socket.SHUT_RDWR)
        return b""


class GuardedTlsSocket(GuardedSocket, ssl.SSLSocket):
    """A :class:`GuardedSocket` over TLS: the guard reads the decrypted stream.

    Made only by :meth:`wrap_accepted` (``ssl.SSLSocket`` cannot be instantiated directly); the
    handshake is deferred to the first read, so it runs in the association's thread, bounded
    by the ARTIM deadline of the connection.
    """

    _handshake_done: bool = False

    @classmethod
    def wrap_accepted(
        cls,
        accepted: socket.socket,
        context: ssl.SSLContext,
        limits: PduLimits,
        on_close: Callable[[GuardedSocket], None] | None = None,
    ) -> GuardedTlsSocket:
        """Wrap a just-accepted connection (server side, handshake not yet done).

        Raises
        ------
        OSError
            When the connection is already gone.
        """
        try:
            peer = accepted.getpeername()
        except OSError:
            peer = None
        host, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("?", 0)
        context.sslsocket_class = cls
        wrapped = context.wrap_socket(accepted, server_side=True, do_handshake_on_connect=False)
        if not isinstance(wrapped, GuardedTlsSocket):  # pragma: no cover - set just above
            wrapped.close()
            raise OSError("the TLS context made another socket class")
        wrapped._setup(limits, on_close, host, port)
        return wrapped

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        """Read decrypted bytes through the guard (see :meth:`GuardedSocket.recv`)."""
        return GuardedSocket.recv(self, buflen, flags)

    def _before_read(self) -> None:
        if not self._handshake_done:
            self.do_handshake()
            self._handshake_done = True

    def _can_abort(self) -> bool:
        return self._handshake_done
