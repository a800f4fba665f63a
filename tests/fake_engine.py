"""A fast stand-in for :class:`model.contouring.engine.ContourEngine`: a box mask, no network.

For tests of the service around the model (load, faults, metrics), where the network's
answer does not matter and its seconds per job would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from model.contouring.engine import ContourEngine, EngineResult
from model.dataset.prescription import SPEC_PRESCRIPTION
from model.imaging.geometry import Grid, Volume
from model.network.context import ContextCache


class FakeEngine(ContourEngine):
    """Contours the central box of every volume; optional ``delay_s`` per pass.

    A :class:`ContourEngine` on a stub predictor (no network, no text side), so every
    property the pipeline asks (``multimodal``, ``has_structures``...) has the real answer for
    such a model. ``gate`` (when given) is waited on before each pass: a test can hold a job
    ``running``.
    """

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        network = SimpleNamespace(alignment=None, config=SimpleNamespace(structures=()))
        stub = SimpleNamespace(
            checkpoint_hash="fake0000",
            network=network,
            context=None,
            cache=ContextCache(),
            prescription=SPEC_PRESCRIPTION,
        )
        super().__init__(stub)  # type: ignore[arg-type]
        self.delay_s = delay_s
        self.gate = gate
        self.passes = 0
        self.fail_with: Exception | None = None

    def window_count(self, grid: Grid) -> int:
        """One window per pass."""
        return 1

    def contour(
        self, volume: Volume, note: str, progress: Callable[[float], None] | None
    ) -> EngineResult:
        """A box in the middle half of the volume ``(k, j, i)``."""
        if self.gate is not None:
            self.gate.wait(timeout=60)
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        self.passes += 1
        if self.fail_with is not None:
            raise self.fail_with
        shape = volume.array.shape
        mask = np.zeros(shape, dtype=bool)
        mask[tuple(slice(n // 4, max(n // 4 + 1, 3 * n // 4)) for n in shape)] = True
        if progress is not None:
            progress(1.0)
        timings = {"preprocess": 0.001, "context": 0.0, "network": 0.002, "postprocess": 0.001}
        return EngineResult(mask, timings, 1)


def fake_factory(engine: FakeEngine) -> Callable[[Any], FakeEngine]:
    """An ``engine_factory`` for :class:`workers.dispatch.EmbeddedDispatcher`."""
    return lambda _settings: engine


class HoldingDispatcher:
    """Accepts jobs and never runs them (a busy worker)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def start(self) -> None:
        """Nothing to start."""

    def submit(self, job_id: str) -> None:
        """Remember the job."""
        self.submitted.append(job_id)

    def stop(self) -> None:
        """Nothing to stop."""

    def describe(self) -> dict[str, object]:
        """Mode only."""
        return {"mode": "holding"}
