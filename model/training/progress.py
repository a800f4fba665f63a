"""Progress of a run: the bar with its ETAs, the time budget, stopping on a signal.

* :class:`StepBar`: one tqdm bar over the run's steps on stderr (rank 0 only). tqdm's own
  remaining time is the ETA of the whole run; the postfix gives the ETA of the current epoch,
  the running loss, the last validation Dice and, with a budget, the time left.
* :class:`RunClock`: ``--max-minutes``. The run stops before a step that, with the final
  validation and save after it, would end past the budget (estimated from the last step,
  validation and save).
* :func:`stop_on_signals`: SIGINT and SIGTERM ask for a clean stop (finish the step, validate,
  save a resumable ``last``); a second signal acts as usual.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from tqdm import tqdm

from model.errors import ConfigurationError


class RunClock:
    """Wall time of a run against an optional budget (``budget_minutes`` 0: none)."""

    def __init__(self, budget_minutes: float = 0.0, start: float | None = None) -> None:
        if not budget_minutes >= 0 or math.isinf(budget_minutes):
            raise ConfigurationError(f"--max-minutes must be >= 0, got {budget_minutes}")
        self.start = time.perf_counter() if start is None else start
        self.budget_s = budget_minutes * 60.0
        self.step_s = 0.0  # smoothed seconds per step
        self.finish_s = 0.0  # seconds of the last validation + save

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        """Seconds of budget left (``None`` without a budget)."""
        return None if not self.budget_s else self.budget_s - self.elapsed()

    def record_step(self, seconds: float) -> None:
        """Update the step time estimate (exponential smoothing)."""
        self.step_s = seconds if not self.step_s else 0.7 * self.step_s + 0.3 * seconds

    def over_budget(self, finish_estimate: float) -> bool:
        """Whether one more step plus a final validation and save would end past the budget.

        ``finish_estimate`` is used until a validation and save were timed.
        """
        left = self.left()
        if left is None:
            return False
        return self.step_s + (self.finish_s or finish_estimate) >= left


class StepBar:
    """tqdm over the steps of a run: overall ETA, epoch ETA, loss, Dice; stderr, rank 0 only."""

    def __init__(
        self,
        *,
        total: int,
        initial: int,
        steps_per_epoch: int,
        epochs: int,
        clock: RunClock,
        enabled: bool,
    ) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.clock = clock
        self.val_dice = float("nan")
        self._bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            desc=self._desc(initial),
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
        )

    def _desc(self, step: int) -> str:
        epoch = min(step // max(1, self.steps_per_epoch) + 1, self.epochs)
        return f"epoch {epoch}/{self.epochs}"

    def epoch_eta(self, step: int) -> float | None:
        """Seconds until the end of the epoch of ``step`` (``None`` before a step was timed).

        From the smoothed step time of the clock (training steps, validation not included).
        """
        if not self.clock.step_s:
            return None
        done = step % self.steps_per_epoch
        return (self.steps_per_epoch - done) * self.clock.step_s if done else 0.0

    def update(self, step: int, loss: float) -> None:
        """One step done (``step`` steps in all); ``loss`` the epoch's running mean."""
        self._bar.update(1)
        self._bar.set_description(self._desc(step), refresh=False)
        postfix = {"loss": f"{loss:.4f}", "val_dice": f"{self.val_dice:.3f}"}
        eta = self.epoch_eta(step)
        if eta is not None:
            postfix["epoch_eta"] = tqdm.format_interval(eta)
        left = self.clock.left()
        if left is not None:
            postfix["budget"] = tqdm.format_interval(max(0.0, left))
        self._bar.set_postfix(postfix)

    def close(self) -> None:
        """Leave the bar's last line on the terminal."""
        self._bar.close()


@contextmanager
def stop_on_signals(request_stop: Callable[[str], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call ``request_stop("signal")`` once.

    The handler restores the previous one, so a second signal interrupts as usual. Outside
    the main thread (no signal handlers there) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old = signal.getsignal(sig)
        previous[sig] = signal.SIG_DFL if old is None else old

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, previous[signal.Signals(signum)])
        request_stop("signal")

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
