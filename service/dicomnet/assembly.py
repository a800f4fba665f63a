"""Series assembly: decide when a series received over DICOM is complete.

DICOM C-STORE has no "end of series" message, so a series counts as complete once no new
instance of it has arrived for ``timeout_s`` seconds. A background thread checks pending
series a few times per timeout and calls ``on_complete`` once per completion, outside any lock,
from that one thread (callbacks never run concurrently with each other).

Completion cycles
-----------------
When a completed series receives more instances later (a resend, late slices), a *fresh*
cycle starts: the instances of the new cycle are counted from zero and, after the next quiet
period, ``on_complete`` is called again with ``cycle`` increased by one and the same
``folder``. The folder always holds every instance received so far for the series (a resent
instance replaces its earlier copy), so a consumer that reads the folder sees the whole
series; ``instance_count`` counts the distinct instances received during that cycle only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import ConfigurationError, LlmctvError

logger = logging.getLogger(__name__)

#: Series whose cycle number is remembered; older ones restart at cycle 1.
_CYCLES_REMEMBERED = 10_000


@dataclass(frozen=True)
class ReceivedSeries:
    """A series whose reception is complete (no new instance for the timeout).

    Attributes
    ----------
    study_instance_uid, series_instance_uid
        The series' UIDs.
    accession_number
        AccessionNumber of the first instance of the cycle, ``None`` when empty or missing.
    modality
        Modality of the first instance of the cycle (``CT``, ``RTSTRUCT``, ...).
    calling_ae
        The calling AE title of the association that sent the first instance of the cycle.
    folder
        The folder that holds the series' instances (``<SOPInstanceUID>.dcm``).
    instance_count
        Distinct SOP instances received in this cycle.
    cycle
        1 for the first completion of a series, 2 after more instances arrived, and so on.
    """

    study_instance_uid: str
    series_instance_uid: str
    accession_number: str | None
    modality: str
    calling_ae: str
    folder: Path
    instance_count: int
    cycle: int = 1


@dataclass(frozen=True)
class ReceivedInstance:
    """What the listener knows about one stored instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    accession_number: str | None
    modality: str
    calling_ae: str
    path: Path
    patient_id: str = ""  # kept with the series to check identity; never logged


OnComplete = Callable[[ReceivedSeries], None]


def printable(text: str) -> str:
    """``text`` with control and non-ASCII characters escaped (``\\n``, ``\\x07``).

    For peer-controlled strings in logs (AE titles): a newline cannot start a forged line.
    """
    return "".join(
        c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text
    )


@dataclass
class _Pending:
    """Mutable state of one series in its current cycle (guarded by the assembler lock)."""

    first: ReceivedInstance
    cycle: int
    last_activity: float
    sop_uids: set[str] = field(default_factory=set)

    def completed(self) -> ReceivedSeries:
        return ReceivedSeries(
            study_instance_uid=self.first.study_instance_uid,
            series_instance_uid=self.first.series_instance_uid,
            accession_number=self.first.accession_number,
            modality=self.first.modality,
            calling_ae=self.first.calling_ae,
            folder=self.first.path.parent,
            instance_count=len(self.sop_uids),
            cycle=self.cycle,
        )


class SeriesAssembler:
    """Track received instances per series and report series that went quiet.

    Parameters
    ----------
    timeout_s
        Inactivity after which a series counts as complete (> 0).
    on_complete
        Called once per completed cycle, from the assembler thread. An exception it raises is
        logged (with the series UID only) and does not stop the assembler.
    clock
        Monotonic clock in seconds (tests may inject one).
    """

    def __init__(
        self,
        timeout_s: float,
        on_complete: OnComplete,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigurationError(f"series timeout must be positive, got {timeout_s}")
        self._timeout = timeout_s
        self._on_complete = on_complete
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._cycles: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def timeout_s(self) -> float:
        """Inactivity timeout in seconds."""
        return self._timeout

    def record(self, instance: ReceivedInstance) -> None:
        """Note that ``instance`` was stored; starts a cycle for a series not pending."""
        key = (instance.study_instance_uid, instance.series_instance_uid)
        now = self._clock()
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                cycle = self._cycles.get(key, 0) + 1
                pending = _Pending(first=instance, cycle=cycle, last_activity=now)
                self._pending[key] = pending
                self._remember_cycle(key, cycle)
                if cycle > 1:
                    logger.info(
                        "series %s receives instances again: completion cycle %d",
                        instance.series_instance_uid,
                        cycle,
                    )
            pending.sop_uids.add(instance.sop_instance_uid)
            pending.last_activity = now

    def _remember_cycle(self, key: tuple[str, str], cycle: int) -> None:
        """Keep the cycle number of the most recent series only (bounded memory)."""
        self._cycles.pop(key, None)
        self._cycles[key] = cycle
        while len(self._cycles) > _CYCLES_REMEMBERED:
            del self._cycles[next(iter(self._cycles))]

    def pending_count(self) -> int:
        """Number of series with instances received and not yet reported."""
        with self._lock:
            return len(self._pending)

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()  # a fresh one: an old thread keeps its own, set
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="dicom-series-assembler", daemon=True
        )
        self._thread.start()

    def stop(self, *, flush: bool = False, timeout_s: float = 10.0) -> None:
        """Stop the background thread.

        Parameters
        ----------
        flush
            Report every pending series as complete now (from the calling thread). Otherwise
            pending series are dropped from memory with a warning; their files stay on disk.
        timeout_s
            How long to wait for a callback in progress (not waited for when ``stop`` is
            called from the callback itself).
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("series assembler thread did not stop within %.1f s", timeout_s)
        if flush:
            self.check(force=True)
            return
        with self._lock:
            dropped = len(self._pending)
            self._pending.clear()
        if dropped:
            logger.warning("stopped with %d series still receiving (not reported)", dropped)

    def check(self, *, force: bool = False) -> list[ReceivedSeries]:
        """Report series quiet for the timeout (all pending ones when ``force``); returns them."""
        now = self._clock()
        with self._lock:
            due = [
                key
                for key, pending in self._pending.items()
                if force or now - pending.last_activity >= self._timeout
            ]
            completed = [self._pending.pop(key).completed() for key in due]
        for series in completed:
            self._report(series)
        return completed

    def _report(self, series: ReceivedSeries) -> None:
        """Call the callback; this is the thread boundary, so any failure is logged here."""
        logger.info(
            "series %s complete: %d instance(s), modality %s, from %s (cycle %d)",
            series.series_instance_uid,
            series.instance_count,
            printable(series.modality),
            printable(series.calling_ae),
            series.cycle,
        )
        try:
            self._on_complete(series)
        except Exception as exc:  # thread boundary: the callback is arbitrary user code
            # LlmctvError details never hold patient data; other messages might, so only
            # their type is logged (the traceback at DEBUG level).
            reason = str(exc) if isinstance(exc, LlmctvError) else type(exc).__name__
            logger.error(
                "on_complete failed for series %s: %s",
                series.series_instance_uid,
                reason,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )

    def _run(self, stop: threading.Event) -> None:
        interval = min(max(self._timeout / 4, 0.01), 1.0)
        while not stop.wait(interval):
            self.check()
