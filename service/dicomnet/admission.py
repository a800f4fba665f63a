"""Admission of DICOM peers: how many connections and associations each address may hold.

pynetdicom counts an association slot from the moment a TCP connection opens, so ten sockets
that send nothing fill ``maximum_associations`` for the whole ACSE timeout. Here the two are
told apart:

- a *pending* connection (no complete A-ASSOCIATE-RQ yet) holds no association slot; at most
  ``max_pending_per_peer`` of them per address and :data:`MAX_PENDING_TOTAL` in all are kept,
  further connections are closed at once, and each one is dropped after the ARTIM timeout
  (:mod:`service.dicomnet.pdu_stream`);
- an *association* takes a slot when its A-ASSOCIATE-RQ is admitted (the listener's
  ``EVT_REQUESTED`` handler calls :meth:`Admission.admit_association`); at most
  ``max_associations`` in all, ``max_per_peer`` per address and ``max_per_ae`` per calling AE
  title (whatever the address), so neither one address nor one AE title reaching us from
  several addresses can take every slot. A refused request gets A-ASSOCIATE-RJ, transient,
  local limit exceeded;
- an association that received no data set (nothing stored, only C-ECHO or silence) for
  ``idle_timeout_s`` is listed by :meth:`Admission.idle`; the listener releases it, so
  keep-alive echoes cannot hold a slot for ever.

Over DICOM TLS (``tls`` given) each accepted connection is wrapped as a
:class:`~service.dicomnet.pdu_stream.GuardedTlsSocket` whose handshake runs later, in the
association's thread: the accepting thread never waits for a peer.

The server class is handed to pynetdicom's public ``AE.make_server(server_class=...)``.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from model.errors import ConfigurationError
from service.dicomnet.pdu_stream import GuardedSocket, GuardedTlsSocket, PduLimits

logger = logging.getLogger(__name__)

#: Connections without an admitted association kept open at once, over all addresses.
MAX_PENDING_TOTAL = 64


@dataclass(frozen=True)
class AdmissionLimits:
    """Slots per listener, per peer address and per calling AE title; the idle timeout.

    ``max_per_ae`` ``None`` means ``max_per_peer``.
    """

    max_associations: int = 10
    max_per_peer: int = 4
    max_pending_per_peer: int = 16
    max_per_ae: int | None = None
    idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_per_peer <= self.max_associations:
            raise ConfigurationError(
                "dicom_max_associations_per_peer must be 1 to dicom_max_associations, got "
                f"{self.max_per_peer} (of {self.max_associations})"
            )
        if self.max_per_ae is None:
            object.__setattr__(self, "max_per_ae", self.max_per_peer)
        if not 1 <= self.per_ae <= self.max_associations:
            raise ConfigurationError(
                "dicom_max_associations_per_ae must be 1 to dicom_max_associations, got "
                f"{self.per_ae} (of {self.max_associations})"
            )
        if not self.idle_timeout_s > 0:
            raise ConfigurationError(
                f"dicom_idle_timeout_s must be positive, got {self.idle_timeout_s}"
            )
        if not 1 <= self.max_pending_per_peer <= MAX_PENDING_TOTAL:
            raise ConfigurationError(
                f"dicom_max_pending_per_peer must be 1 to {MAX_PENDING_TOTAL}, got "
                f"{self.max_pending_per_peer}"
            )

    @property
    def per_ae(self) -> int:
        """Associations one calling AE title may hold (``max_per_ae``, resolved)."""
        return self.max_per_ae if self.max_per_ae is not None else self.max_per_peer


class Admission:
    """Book-keeping of open connections by peer address and AE title (thread-safe).

    Parameters
    ----------
    limits, pdu_limits
        Slots, idle timeout, and what one connection may send.
    tls
        The listener's TLS context: connections are then TLS only.
    """

    def __init__(
        self,
        limits: AdmissionLimits,
        pdu_limits: PduLimits,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits
        self.pdu_limits = pdu_limits
        self.tls = tls
        self._lock = threading.Lock()
        # Weak: a socket pynetdicom dropped without closing it must not hold a slot forever.
        self._open: weakref.WeakSet[GuardedSocket] = weakref.WeakSet()

    def wrap(self, accepted: socket.socket) -> GuardedSocket:
        """The guarded socket for a just-accepted connection (not yet counted).

        Raises
        ------
        OSError
            When a TLS connection is gone before it could be wrapped.
        """
        if self.tls is not None:
            return GuardedTlsSocket.wrap_accepted(
                accepted, self.tls, self.pdu_limits, on_close=self._closed
            )
        return GuardedSocket(accepted, self.pdu_limits, on_close=self._closed)

    def _closed(self, sock: GuardedSocket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _pending(self, host: str) -> tuple[int, int]:
        """(pending from ``host``, pending in all); the caller holds the lock."""
        pending = [s for s in self._open if not s.admitted and not s.refused]
        return sum(s.peer_host == host for s in pending), len(pending)

    def admit_connection(self, sock: GuardedSocket) -> bool:
        """Whether to keep a new connection; counts it when kept."""
        with self._lock:
            pending_host, pending_all = self._pending(sock.peer_host)
            if pending_host >= self.limits.max_pending_per_peer:
                reason = f"{pending_host} connections from this address await association"
            elif pending_all >= MAX_PENDING_TOTAL:
                reason = f"{pending_all} connections await association"
            else:
                self._open.add(sock)
                return True
        logger.warning("DICOM connection from %s closed at once: %s", sock.peer, reason)
        return False

    def admit_association(self, sock: GuardedSocket, calling_ae: str = "") -> str | None:
        """Give a requested association a slot; the reason it gets none, or ``None``.

        ``calling_ae`` is the requestor's AE title (stripped); its associations from every
        address together are capped at ``max_per_ae``.
        """
        with self._lock:
            admitted = [s for s in self._open if s.admitted and s is not sock and not s.refused]
            from_host = sum(s.peer_host == sock.peer_host for s in admitted)
            from_ae = sum(s.calling_ae == calling_ae for s in admitted)
            if len(admitted) >= self.limits.max_associations:
                return f"all {self.limits.max_associations} association slots are in use"
            if from_host >= self.limits.max_per_peer:
                return (
                    f"{from_host} associations from this address already "
                    f"(dicom_max_associations_per_peer {self.limits.max_per_peer})"
                )
            if from_ae >= self.limits.per_ae:
                return (
                    f"{from_ae} associations of this calling AE title already "
                    f"(dicom_max_associations_per_ae {self.limits.per_ae})"
                )
            sock.calling_ae = calling_ae
            sock.admitted_at = time.monotonic()
            sock.admitted = True
            self._open.add(sock)
        return None

    def admitted(self) -> list[GuardedSocket]:
        """The connections holding an association slot now."""
        with self._lock:
            return [s for s in self._open if s.admitted and not s.refused]

    def idle(self, now: float | None = None) -> list[GuardedSocket]:
        """Admitted associations that received no data set for ``idle_timeout_s``."""
        now = time.monotonic() if now is None else now
        limit = self.limits.idle_timeout_s
        return [s for s in self.admitted() if now - s.last_activity() > limit]

    def open_count(self) -> int:
        """Connections open now (pending and admitted)."""
        with self._lock:
            return len(self._open)


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with guarded sockets and per-address admission.

    Parameters are those of :class:`pynetdicom.transport.AssociationServer`, plus
    ``admission``.
    """

    def __init__(self, *args: Any, admission: Admission, **kwargs: Any) -> None:
        self.admission = admission
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and wrap it in a :class:`GuardedSocket`."""
        accepted, address = super().get_request()
        return self.admission.wrap(accepted), address

    def verify_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> bool:
        """socketserver's hook: close the connection at once when admission says so."""
        if not isinstance(request, GuardedSocket):
            return False
        return self.admission.admit_connection(request)

    def shutdown(self) -> None:
        """Stop serving and close the listening socket.

        Unlike the base class, the server is not looked up in the AE's private server list:
        it was made with ``AE.make_server`` and is run by :class:`DicomListener` itself.
        """
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def serve_in_thread(server: GuardedAssociationServer, name: str) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread; returns the started thread."""
    target: Callable[[], None] = server.serve_forever
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
