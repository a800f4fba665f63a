"""The listener's watch: releases idle associations, writes the aggregated rejection entries.

pynetdicom's network timeout restarts with every PDU, so a peer that sends a C-ECHO every few
seconds could hold an association slot for ever without storing anything. Every tick, the
watch asks :meth:`~service.dicomnet.admission.Admission.idle` for the associations that
received no data set (no C-STORE) for ``dicom_idle_timeout_s`` and ends each one:

1. an A-ABORT through pynetdicom (:attr:`GuardedSocket.on_idle`, queued for the association's
   own thread, so nothing is written to the stream from here);
2. if the association is still open ``grace_s`` later (a peer that ignores the abort), the
   connection is shut down.

An association in the middle of a large C-STORE is never idle: every data-set fragment counts
(:attr:`GuardedSocket.last_data`). The same tick writes the summaries of the rejection windows
that have ended (:meth:`DicomEvents.flush_rejections`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from service.dicomnet.admission import Admission
from service.dicomnet.assembly import printable
from service.dicomnet.events import DicomEvents
from service.dicomnet.pdu_stream import GuardedSocket

logger = logging.getLogger(__name__)


class IdleWatch:
    """A daemon thread that ends idle associations and flushes audit aggregates.

    Parameters
    ----------
    admission
        The listener's slots (which associations exist, and the idle timeout).
    events
        Where idle releases are counted and rejection windows are flushed.
    grace_s
        Seconds an aborted association may take to close before its connection is shut down.
    """

    def __init__(self, admission: Admission, events: DicomEvents, grace_s: float) -> None:
        self._admission = admission
        self._events = events
        self._grace_s = grace_s
        self._tick_s = min(1.0, admission.limits.idle_timeout_s / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write every pending rejection summary."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=5)
        self._events.flush_rejections(force=True)

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            try:
                self.sweep()
                self._events.flush_rejections()
            except Exception:  # thread boundary: the watch must outlive one bad tick
                logger.exception("DICOM listener watch: tick failed")

    def sweep(self, now: float | None = None) -> int:
        """End the idle associations now; returns how many were asked to end."""
        now = time.monotonic() if now is None else now
        ended = 0
        for sock in self._admission.idle(now):
            if sock.idle_since is None:
                sock.idle_since = now
                self._release(sock)
                ended += 1
            elif now - sock.idle_since > self._grace_s:
                _shut(sock)
        return ended

    def _release(self, sock: GuardedSocket) -> None:
        idle_s = self._admission.limits.idle_timeout_s
        logger.warning(
            "association from %s@%s released: nothing stored for %g s (dicom_idle_timeout_s)",
            printable(sock.calling_ae),
            sock.peer,
            idle_s,
        )
        self._events.association_idle(sock.calling_ae, sock.peer_host)
        callback = sock.on_idle
        if callback is None:
            _shut(sock)
            return
        try:
            callback()
        except Exception:  # pynetdicom's abort failed: fall back to the socket
            logger.warning("A-ABORT to %s failed; closing the connection", sock.peer)
            _shut(sock)


def _shut(sock: GuardedSocket) -> None:
    """Shut the connection down: pynetdicom reads end-of-stream and ends the association.

    The descriptor is shut down under the TLS layer (``socket.socket.shutdown``): the TLS
    object stays in place for the association's thread, which reads end-of-stream and closes.
    """
    with sock.lock:
        sock.refused = True
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
