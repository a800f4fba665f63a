"""Failed authentications counted per key in a sliding window: the lockout.

A key is a client address or an identity name (:func:`address_key`, :func:`identity_key`).
After ``max_failures`` failures of one key within ``window_s`` seconds the key is locked:
further attempts are refused (429 with ``Retry-After``, :mod:`service.auth`) without being
checked, until the oldest of those failures is ``window_s`` old; then one more attempt is
checked. So a key gets at most ``max_failures`` checked attempts per window, however fast it
asks. Attempts refused while locked are not failures (they neither extend nor renew the
lockout), and a success resets nothing: failures only age out.

The counts live in this process's memory: each gateway process counts on its own. The number
of keys is bounded (``max_keys``): past it, keys without a failure in the window go first,
then the keys whose latest failure is oldest.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence


def address_key(address: str) -> str:
    """The key of a client address."""
    return f"address:{address}"


def identity_key(name: str) -> str:
    """The key of a configured identity name."""
    return f"identity:{name}"


class AttemptLimiter:
    """Failures per key in a sliding window; safe across threads.

    An attempt is admitted for all its keys at once (:meth:`admit`) and settled when checked
    (:meth:`settle`); attempts in flight count against the limit, so a burst of parallel
    requests gets no more checked attempts than a serial one.

    Parameters
    ----------
    max_failures
        Failures within ``window_s`` that lock a key; 0: never lock.
    window_s
        The window, in seconds.
    max_keys
        Most keys remembered at once.
    clock
        Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def locked_for(self, key: str) -> int:
        """Whole seconds until ``key`` may try again (at least 1 while locked); 0 when open."""
        if self.max_failures <= 0:
            return 0
        with self._lock:
            return self._locked_for(key, self.clock(), 0)

    def admit(self, keys: Sequence[str]) -> tuple[str, int] | None:
        """Admit one attempt of every key in ``keys``, or name the first locked one.

        ``None``: admitted; it must be settled (:meth:`settle`) with the same keys. Else the
        locked key and the whole seconds until it opens (at least 1); nothing is reserved.
        """
        if self.max_failures <= 0:
            return None
        with self._lock:
            now = self.clock()
            for key in keys:
                wait = self._locked_for(key, now, self._in_flight.get(key, 0))
                if wait:
                    return key, wait
            for key in keys:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return None

    def settle(self, keys: Sequence[str], failed: bool) -> dict[str, int]:
        """End an admitted attempt; a failure counts for every key.

        Returns the keys this failure locked, each with its lockout in seconds (a key locks
        once, when its failures reach ``max_failures``; empty for a success).
        """
        if self.max_failures <= 0:
            return {}
        locked: dict[str, int] = {}
        with self._lock:
            now = self.clock()
            for key in keys:
                left = self._in_flight.get(key, 0) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)
                if not failed:
                    continue
                times = self._recent(key, now)
                if times is None:
                    self._make_room(now)
                    times = self._failures.setdefault(key, deque())
                times.append(now)
                if len(times) == self.max_failures:
                    locked[key] = self._locked_for(key, now, 0)
        return locked

    def _locked_for(self, key: str, now: float, in_flight: int) -> int:
        times = self._recent(key, now)
        count = 0 if times is None else len(times)
        excess = count + in_flight - self.max_failures
        if excess < 0:
            return 0
        if times is None or excess >= count:
            return 1  # held by attempts in flight alone: open as soon as they are settled
        # Open again once the failure at ``excess`` has left the window.
        return _seconds(times[excess] + self.window_s - now)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _make_room(self, now: float) -> None:
        if len(self._failures) < self.max_keys:
            return
        for key in list(self._failures):
            self._recent(key, now)
        surplus = len(self._failures) - self.max_keys + 1
        if surplus > 0:
            by_latest = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in by_latest[:surplus]:
                del self._failures[key]


def _seconds(remaining: float) -> int:
    return max(1, math.ceil(remaining))
