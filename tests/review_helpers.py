"""For review-station tests: a fake engine whose contour follows the note's N stage and side.

:class:`NoteEngine` stands in for the network (no torch, instant): a "breast" ellipsoid on the
note's side, inside the body (HU > -400), plus an "axillary" ellipsoid when the note is node
positive (N1, N2, N3; not N0 or N1mi). Masks are on the input grid ``(k, j, i)``; ``i`` grows
toward the patient's left for the usual axial orientation of the test series.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gateway_client import TOKEN

from model.contouring.engine import ContourEngine, EngineResult
from model.dataset.prescription import SPEC_PRESCRIPTION, Prescription
from model.imaging.geometry import Grid, Volume

_NODE_NEGATIVE = re.compile(r"\bN(0|1mi)\b")
REVIEWER_TOKEN = "reviewer-token-0123456789"
SUBMITTER_TOKEN = "submitter-token-0123456789"
TOKENS = [
    f"alice:reviewer:{REVIEWER_TOKEN}",
    f"bob:submitter:{SUBMITTER_TOKEN}",
    # gateway_client's polling helpers: a reviewer, since a submitter sees only its own jobs
    f"carol:reviewer:{TOKEN}",
]


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def _ellipsoid(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radii: tuple[float, ...]
) -> npt.NDArray[np.bool_]:
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
    inside = inside + ((i - centre[2]) / radii[2]) ** 2
    return np.asarray(inside <= 1.0)


class NoteEngine(ContourEngine):
    """A contour that depends on the note only through its N stage and side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.notes: list[str] = []

    @property
    def checkpoint_hash(self) -> str:
        """A fixed stand-in hash."""
        return "note-engine"

    @property
    def prescription(self) -> Prescription:
        """The spec's convention, as a served structure network applies it."""
        return SPEC_PRESCRIPTION

    @property
    def multimodal(self) -> bool:
        """Reads the note."""
        return True

    @property
    def has_structures(self) -> bool:
        """Predicts sub-volumes (breast, axilla), like the structure networks."""
        return True

    def window_count(self, grid: Grid) -> int:
        """One window, whatever the grid."""
        return 1

    def check_note(self, note: str) -> None:
        """Any note is accepted."""

    def contour(
        self, volume: Volume, note: str, progress: Callable[[float], None] | None
    ) -> EngineResult:
        """Breast on the note's side, plus axillary nodes when node positive."""
        self.notes.append(note)
        hu = volume.array
        left = "left side" in note or "right side" not in note
        side = "L" if left else "R"
        structures = {("breast", side): _breast(hu, left)}
        if not _NODE_NEGATIVE.search(note):
            structures[("axilla", side)] = _axilla(hu, left)
        mask = np.zeros(hu.shape, dtype=bool)
        for part in structures.values():
            mask |= part
        if progress is not None:
            progress(1.0)
        return EngineResult(mask, {"inference": 0.001}, 1, structures)


def _soft(hu: npt.NDArray[np.floating], low: float, high: float) -> npt.NDArray[np.bool_]:
    return np.asarray((hu > low) & (hu < high))


def _breast(hu: npt.NDArray[np.floating], left: bool) -> npt.NDArray[np.bool_]:
    """A lens of soft tissue under the anterior skin of one side (a breast-like CTV).

    ``j`` = 0 is anterior (column cosines +y, posterior); patient left is high ``i``.
    """
    nk, nj, ni = hu.shape
    body = hu > -300
    first = np.argmax(body, axis=1).astype(np.int16)  # (k, i): the anterior skin
    depth = np.arange(nj, dtype=np.int16)[None, :, None] - first[:, None, :]
    k0, k1 = int(nk * 0.35), int(nk * 0.62)
    i0, i1 = (int(ni * 0.52), int(ni * 0.82)) if left else (int(ni * 0.18), int(ni * 0.48))
    along_k = np.zeros(nk)
    along_k[k0:k1] = np.sin(np.linspace(0, np.pi, k1 - k0)) ** 0.5
    along_i = np.zeros(ni)
    along_i[i0:i1] = np.sin(np.linspace(0, np.pi, i1 - i0))
    deepest = (nj * 0.045) * along_k[:, None] * along_i[None, :]  # (k, i), in rows
    lens = (depth >= 3) & (depth <= deepest[:, None, :]) & (deepest[:, None, :] > 2)
    found = lens & _soft(hu, -200, 200)
    return np.asarray(found if found.any() else lens & (hu > -400))


def _axilla(hu: npt.NDArray[np.floating], left: bool) -> npt.NDArray[np.bool_]:
    """Fat and soft tissue of an ellipsoid in the armpit, speckles removed."""
    from scipy.ndimage import binary_opening

    nk, nj, ni = hu.shape
    centre = (nk * 0.72, nj * 0.47, ni * (0.81 if left else 0.19))
    region = _ellipsoid(hu.shape, centre, (nk * 0.07, nj * 0.05, ni * 0.035))
    found = binary_opening(region & _soft(hu, -200, 100), iterations=1)
    return np.asarray(found if found.any() else region & (hu > -400))
