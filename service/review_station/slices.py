"""CT slices for the review page: a job's series in memory, rendered as windowed PNGs.

Coordinates: the volume is the job's CT on its LPS grid, array ``(k, j, i)`` (slice, row,
column), exactly as :func:`model.dicom.series.read_ct_series` returns it. Displayed planes:

* ``axial`` slice ``k``: rows ``j``, columns ``i`` (the stored image, as a CT console shows it);
* ``coronal`` row ``j``: rows ``k``, columns ``i``;
* ``sagittal`` column ``i``: rows ``k``, columns ``j``.

In the coronal and sagittal planes the patient's head is at the top: the display row of slice
``k`` is ``nk - 1 - k`` when ``k`` grows toward the head (the slice normal's LPS ``z`` is
positive), else ``k``. :mod:`service.review_station.overlays` uses the same rule, so contours
and image always agree. Pixel ``(x, y)`` of a displayed image covers ``[x, x + 1) x [y, y + 1)``.

Volumes are cached per job, never per series UID alone (least recently used first out), so
the first slice of a job that was opened a moment ago costs one PNG encoding, and a neighbour
slice a few ms.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset

from model.dicom.series import read_ct_series
from model.errors import InputError, LlmctvError
from model.imaging.geometry import Grid

PLANES = ("axial", "coronal", "sagittal")
#: Window presets: (level, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "soft": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


class UnknownSliceError(InputError):
    """A plane, slice index or window preset that the job's CT does not have."""

    code = "unknown_slice"


@dataclass(frozen=True)
class SliceGeometry:
    """Where one axial image lies: ImagePositionPatient, direction cosines, PixelSpacing.

    ``row_cosines`` is the LPS direction of increasing column index (first triplet of
    ImageOrientationPatient), ``column_cosines`` that of increasing row index;
    ``pixel_spacing`` is (row spacing, column spacing) in mm.
    """

    position: npt.NDArray[np.float64]
    row_cosines: npt.NDArray[np.float64]
    column_cosines: npt.NDArray[np.float64]
    pixel_spacing: tuple[float, float]

    def to_pixels(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """LPS mm points ``(n, 3)`` -> display pixel coordinates ``(n, 2)`` = (x, y).

        Column index ``i`` = offset along the row cosines / column spacing; row index ``j`` =
        offset along the column cosines / row spacing; the pixel centre is at ``+ 0.5``.
        """
        offset = points - self.position
        x = offset @ self.row_cosines / self.pixel_spacing[1] + 0.5
        y = offset @ self.column_cosines / self.pixel_spacing[0] + 0.5
        return np.stack([x, y], axis=1)


@dataclass(frozen=True)
class CtView:
    """One CT series ready for display: HU as int16 ``(k, j, i)`` and each slice's geometry."""

    hu: npt.NDArray[np.int16]
    grid: Grid
    slices: tuple[SliceGeometry, ...]
    sop_index: dict[str, int]
    header: dict[str, str]

    @property
    def head_up(self) -> bool:
        """Whether display rows of coronal/sagittal planes run against ``k`` (head at top)."""
        return bool(self.grid.direction_matrix[2, 2] > 0)

    def count(self, plane: str) -> int:
        """How many slices ``plane`` has."""
        nk, nj, ni = self.hu.shape
        counts: dict[str, int] = {"axial": nk, "coronal": nj, "sagittal": ni}
        return counts[_plane(plane)]

    def aspect(self, plane: str) -> float:
        """Displayed height / width of one pixel of ``plane`` (1 for square pixels)."""
        dk, dj, di = self.grid.spacing
        return {"axial": dj / di, "coronal": dk / di, "sagittal": dk / dj}[_plane(plane)]

    def display_row(self, k: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Display row coordinate of slice boundary/centre coordinate ``k`` (cor./sag.)."""
        nk = self.hu.shape[0]
        return nk - k if self.head_up else k

    def image(self, plane: str, index: int) -> npt.NDArray[np.int16]:
        """The HU image of slice ``index`` of ``plane``, in display orientation."""
        if not 0 <= index < self.count(plane):
            raise UnknownSliceError(f"{plane} slice {index} is outside 0..{self.count(plane) - 1}")
        picked: npt.NDArray[np.int16]
        if plane == "axial":
            picked = self.hu[index]
        else:
            picked = self.hu[:, index, :] if plane == "coronal" else self.hu[:, :, index]
            picked = picked[::-1] if self.head_up else picked
        return picked

    def png(self, plane: str, index: int, window: str) -> bytes:
        """Slice ``index`` of ``plane`` through the window preset ``window`` as a grey PNG."""
        if window not in WINDOWS:
            raise UnknownSliceError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
        level, width = WINDOWS[window]
        hu = self.image(plane, index).astype(np.float32)
        grey = np.clip((hu - (level - width / 2)) * (255.0 / width), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey, mode="L").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def _plane(plane: str) -> str:
    if plane not in PLANES:
        raise UnknownSliceError(f"plane {plane!r} is not one of {', '.join(PLANES)}")
    return plane


def load_ct_view(folder: Path, series_instance_uid: str | None) -> CtView:
    """Read a job's stored CT series for display.

    Raises
    ------
    DicomError
        The stored series cannot be read (as at contouring).
    """
    ct = read_ct_series(folder, series_instance_uid=series_instance_uid)
    array = ct.volume.array  # ours alone: clipped in place, then stored as int16 (half the size)
    np.clip(array, -32768, 32767, out=array)
    hu = array.astype(np.int16)
    slices = tuple(
        SliceGeometry(
            np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64),
            np.asarray([float(v) for v in ds.ImageOrientationPatient[:3]], dtype=np.float64),
            np.asarray([float(v) for v in ds.ImageOrientationPatient[3:]], dtype=np.float64),
            (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
        )
        for ds in ct.datasets
    )
    index = {uid: k for k, uid in enumerate(ct.sop_instance_uids)}
    return CtView(hu, ct.volume.grid, slices, index, patient_header(ct.datasets[0]))


#: What the review page shows to identify the patient and series (never logged).
_HEADER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
)


def patient_header(ds: Dataset) -> dict[str, str]:
    """Patient and study identification of a CT slice, for the reviewer's right-patient check."""
    return {keyword: str(ds.get(keyword, "") or "") for keyword in _HEADER_KEYWORDS}


class _Loading:
    """One load in progress: others wait on it instead of reading the series again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.view: CtView | None = None
        self.error: Exception | None = None


class CtCache:
    """Loaded series by key, at most ``size`` of them (least recently used goes first)."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._views: OrderedDict[str, CtView] = OrderedDict()
        self._loading: dict[str, _Loading] = {}
        self._lock = threading.Lock()

    def get(self, key: str, loader: Callable[[], CtView]) -> CtView:
        """The view of ``key``, loading it with ``loader`` once if it is not held."""
        with self._lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
            loading = self._loading.get(key)
            mine = loading is None
            if loading is None:
                loading = self._loading[key] = _Loading()
        if mine:
            self._load(key, loader, loading)
        loading.done.wait()
        if loading.view is None:
            raise loading.error or UnknownSliceError("the series could not be loaded")
        return loading.view

    def prefetch(self, key: str, loader: Callable[[], CtView]) -> None:
        """Start loading ``key`` in a thread (the page is on its way to the browser)."""
        with self._lock:
            if key in self._views or key in self._loading:
                return
        thread = threading.Thread(
            target=self._quiet_get, args=(key, loader), name="llmctv-ct", daemon=True
        )
        thread.start()

    def _quiet_get(self, key: str, loader: Callable[[], CtView]) -> None:
        try:
            self.get(key, loader)
        except (LlmctvError, OSError, ValueError):
            return  # the page's own request reports the error

    def _load(self, key: str, loader: Callable[[], CtView], loading: _Loading) -> None:
        try:
            loading.view = loader()
        except (LlmctvError, OSError, ValueError) as exc:
            loading.error = exc  # handed to every waiting request
        finally:
            with self._lock:
                self._loading.pop(key, None)
                if loading.view is not None:
                    self._views[key] = loading.view
                    while len(self._views) > self.size:
                        self._views.popitem(last=False)
            loading.done.set()
