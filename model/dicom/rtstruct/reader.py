"""Reading RT structure sets and rasterising their ROIs onto a CT grid.

Coordinates: contour points are DICOM patient LPS, millimetres; masks are arrays
``(k, j, i)`` on a :class:`~model.imaging.geometry.Grid`.

Rasterisation convention (shared with the RTSTRUCT writer): a voxel belongs to a closed planar
contour when its *centre* lies inside the polygon. Contours of one ROI on one slice combine by
the even-odd rule (a contour inside another is a hole). A centre exactly on an edge belongs to
the polygon on the edge's low-index side (the lower ``i`` of a vertical edge, the lower ``j``
of a horizontal one), so polygons that share an edge never share a voxel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.errors import (
    ConfigurationError,
    RoiNotFoundError,
    StructureSetError,
    UnreadableDicomError,
)
from model.imaging.geometry import Grid

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Index coordinates are rounded to this many decimals so that edges meant to pass exactly
#: through voxel centres do so despite floating-point noise.
_DECIMALS = 6
#: A closed contour whose points spread over more than this many slices is not planar.
_MAX_K_SPREAD = 1.0


@dataclass(frozen=True)
class Contour:
    """One contour: ``points`` ``(n, 3)`` in LPS mm."""

    points: FloatArray
    geometric_type: str
    referenced_sop_instance_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Roi:
    """One ROI of a structure set, with its contours (LPS mm)."""

    number: int
    name: str
    interpreted_type: str
    color: tuple[int, int, int] | None
    frame_of_reference_uid: str
    contours: tuple[Contour, ...]


@dataclass(frozen=True)
class StructureSet:
    """The parts of an RTSTRUCT that llmctv uses.

    Attributes
    ----------
    frame_of_reference_uid
        The FrameOfReferenceUID the contours (LPS mm) are given in.
    referenced_series_instance_uid
        The CT series the structure set was drawn on, where stated.
    """

    sop_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    referenced_series_instance_uid: str | None
    rois: tuple[Roi, ...]

    @property
    def roi_names(self) -> tuple[str, ...]:
        """ROI names in file order."""
        return tuple(roi.name for roi in self.rois)

    def roi(self, name: str) -> Roi:
        """The ROI called exactly ``name``; :class:`RoiNotFoundError` if there is none."""
        for roi in self.rois:
            if roi.name == name:
                return roi
        raise RoiNotFoundError(f"no ROI named {name!r}; ROIs: {', '.join(self.roi_names)}")


def read_structure_set(path: Path) -> StructureSet:
    """Read an RTSTRUCT file.

    Raises
    ------
    UnreadableDicomError
        The file is not DICOM.
    StructureSetError
        The file is not an RTSTRUCT or lacks required modules.
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise UnreadableDicomError("the structure set file is not readable DICOM") from exc
    return parse_structure_set(ds)


# --- parsing ------------------------------------------------------------------------------------
def parse_structure_set(ds: Dataset) -> StructureSet:
    """An RTSTRUCT data set (read from a file, received, or made in memory).

    Raises
    ------
    StructureSetError
        Not an RTSTRUCT, or required modules are missing.
    """
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise StructureSetError(f"modality is {ds.get('Modality', 'missing')}, not RTSTRUCT")
    if "StructureSetROISequence" not in ds:
        raise StructureSetError("the structure set has no StructureSetROISequence")
    frame, series = _referenced_frame_and_series(ds)
    types = {
        int(obs.ReferencedROINumber): str(obs.get("RTROIInterpretedType", "") or "")
        for obs in ds.get("RTROIObservationsSequence", [])
        if "ReferencedROINumber" in obs
    }
    contour_items = {
        int(item.ReferencedROINumber): item
        for item in ds.get("ROIContourSequence", [])
        if "ReferencedROINumber" in item
    }
    rois = []
    for item in ds.StructureSetROISequence:
        number = int(item.ROINumber)
        roi_frame = str(item.get("ReferencedFrameOfReferenceUID", "") or frame)
        contour_item = contour_items.get(number)
        rois.append(
            Roi(
                number=number,
                name=str(item.get("ROIName", "") or ""),
                interpreted_type=types.get(number, ""),
                color=_color(contour_item),
                frame_of_reference_uid=roi_frame,
                contours=_contours(contour_item),
            )
        )
    return StructureSet(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=frame,
        referenced_series_instance_uid=series,
        rois=tuple(rois),
    )


def _referenced_frame_and_series(ds: Dataset) -> tuple[str, str | None]:
    frames = list(ds.get("ReferencedFrameOfReferenceSequence", []))
    if not frames or "FrameOfReferenceUID" not in frames[0]:
        roi_frames = {
            str(item.ReferencedFrameOfReferenceUID)
            for item in ds.StructureSetROISequence
            if "ReferencedFrameOfReferenceUID" in item
        }
        if len(roi_frames) != 1:
            raise StructureSetError("the structure set names no single FrameOfReferenceUID")
        return roi_frames.pop(), None
    series = None
    for study in frames[0].get("RTReferencedStudySequence", []):
        for item in study.get("RTReferencedSeriesSequence", []):
            series = str(item.SeriesInstanceUID)
    return str(frames[0].FrameOfReferenceUID), series


def _color(item: Dataset | None) -> tuple[int, int, int] | None:
    if item is None or not item.get("ROIDisplayColor"):
        return None
    values = [int(v) for v in item.ROIDisplayColor]
    return (values[0], values[1], values[2]) if len(values) == 3 else None


def _contour_points(item: Dataset) -> FloatArray:
    """ContourData as ``(n, 3)`` LPS mm, parsed from the raw bytes when still raw."""
    raw = item.get_item(0x30060050)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes):
        flat = np.array(value.split(b"\\"), dtype=np.float64)
    else:
        flat = np.asarray(item.ContourData, dtype=np.float64)
    if flat.size % 3:
        raise StructureSetError("ContourData does not hold (x, y, z) triplets")
    return flat.reshape(-1, 3)


def _contours(item: Dataset | None) -> tuple[Contour, ...]:
    if item is None:
        return ()
    contours = []
    for contour in item.get("ContourSequence", []):
        if "ContourData" not in contour:
            continue
        try:
            points = _contour_points(contour)
        except ValueError as exc:
            raise StructureSetError("ContourData holds values that are not numbers") from exc
        images = tuple(
            str(ref.ReferencedSOPInstanceUID)
            for ref in contour.get("ContourImageSequence", [])
            if "ReferencedSOPInstanceUID" in ref
        )
        contours.append(Contour(points, str(contour.get("ContourGeometricType", "")), images))
    return tuple(contours)


# --- ROI selection ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoiRule:
    """Which ROI names (and, optionally, interpreted types) make up the target label.

    Parameters
    ----------
    include
        Case-insensitive regular expressions (``re.search``); a name matching any is included.
    exclude
        Case-insensitive regular expressions; a name matching any is excluded, always.
    interpreted_types
        RTROIInterpretedType values (case-insensitive, e.g. ``("CTV",)``) that include an ROI
        whatever its name, unless ``exclude`` matches the name.
    """

    include: tuple[str, ...] = (r"^ctv",)
    exclude: tuple[str, ...] = ()
    interpreted_types: tuple[str, ...] = ()
    _compiled: tuple[tuple[re.Pattern[str], ...], tuple[re.Pattern[str], ...]] = field(
        init=False, repr=False, compare=False, default=((), ())
    )

    def __post_init__(self) -> None:
        for name in ("include", "exclude", "interpreted_types"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        try:
            compiled = (
                tuple(re.compile(p, re.IGNORECASE) for p in self.include),
                tuple(re.compile(p, re.IGNORECASE) for p in self.exclude),
            )
        except re.error as exc:
            raise ConfigurationError(f"invalid ROI name pattern: {exc}") from exc
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, name: str, interpreted_type: str = "") -> bool:
        """Whether an ROI of this name (and interpreted type) belongs to the target."""
        include, exclude = self._compiled
        if any(p.search(name) for p in exclude):
            return False
        wanted_types = {t.upper() for t in self.interpreted_types}
        return any(p.search(name) for p in include) or interpreted_type.upper() in wanted_types

    def select(self, structure_set: StructureSet) -> tuple[Roi, ...]:
        """The matching ROIs that have contours; :class:`RoiNotFoundError` if none."""
        matched = [r for r in structure_set.rois if self.matches(r.name, r.interpreted_type)]
        chosen = tuple(r for r in matched if r.contours)
        if not chosen:
            empty = f" ({len(matched)} matched but have no contours)" if matched else ""
            raise RoiNotFoundError(
                f"no ROI matches include={list(self.include)} exclude={list(self.exclude)} "
                f"types={list(self.interpreted_types)}{empty}; "
                f"ROIs: {', '.join(structure_set.roi_names)}"
            )
        return chosen


# --- rasterisation ------------------------------------------------------------------------------
def rasterize(
    structure_set: StructureSet,
    roi_names: str | Iterable[str],
    grid: Grid,
    *,
    frame_of_reference_uid: str | None = None,
) -> BoolArray:
    """Union of the named ROIs as a boolean mask on ``grid``.

    Parameters
    ----------
    structure_set
        Contours in LPS mm.
    roi_names
        Exact ROI names to combine (every ROI of a repeated name counts).
    grid
        The CT grid; the result is indexed ``(k, j, i)``.
    frame_of_reference_uid
        The grid's FrameOfReferenceUID; when given it must match the ROIs'.

    Returns
    -------
    numpy.ndarray
        ``bool`` array of ``grid.shape``: voxel centres inside (even-odd) the closed planar
        contours; each contour lies on the slice nearest to it.

    Raises
    ------
    RoiNotFoundError
        A name that no ROI has.
    StructureSetError
        Mismatched frame of reference, a contour not parallel to the slices, or an ROI with
        contours none of which falls on the grid.
    """
    names = {roi_names} if isinstance(roi_names, str) else set(roi_names)
    for name in names:
        structure_set.roi(name)  # RoiNotFoundError for an unknown name
    mask = np.zeros(grid.shape, dtype=bool)
    for roi in structure_set.rois:  # several ROIs may share a name: all count
        if roi.name not in names:
            continue
        if frame_of_reference_uid not in (None, roi.frame_of_reference_uid):
            raise StructureSetError(
                f"ROI {roi.name!r} is in frame of reference {roi.frame_of_reference_uid}, "
                f"the CT in {frame_of_reference_uid}"
            )
        _fill_roi(mask, roi, grid)
    return mask


def _fill_roi(mask: BoolArray, roi: Roi, grid: Grid) -> None:
    """OR the even-odd fill of one ROI's closed planar contours into ``mask``."""
    closed = [c.points for c in roi.contours if c.geometric_type == "CLOSED_PLANAR"]
    closed = [p for p in closed if len(p) >= 3]
    if not closed:
        return
    lengths = np.array([len(p) for p in closed])
    kji = np.round(grid.lps_to_index(np.concatenate(closed)), _DECIMALS)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    k_min = np.minimum.reduceat(kji[:, 0], starts)
    k_max = np.maximum.reduceat(kji[:, 0], starts)
    if np.any(k_max - k_min > _MAX_K_SPREAD):
        raise StructureSetError(f"ROI {roi.name!r} has contours that do not lie on CT slices")
    slice_of = np.rint((k_min + k_max) / 2).astype(np.int64)
    on_grid = (slice_of >= 0) & (slice_of < grid.shape[0])
    if not np.any(on_grid):
        raise StructureSetError(
            f"none of the {len(closed)} contours of ROI {roi.name!r} lies within the CT's "
            "slices (structure set drawn on another series?)"
        )
    if not np.all(on_grid):
        logger.warning(
            "ROI %r: %d of %d contours lie outside the CT slices and are ignored",
            roi.name,
            int(np.count_nonzero(~on_grid)),
            len(closed),
        )
    edges = _edges(kji[:, 1:], lengths, slice_of, on_grid)
    _fill_edges(mask, edges)


def _edges(
    ji: FloatArray,
    lengths: npt.NDArray[np.int64],
    slice_of: npt.NDArray[np.int64],
    keep: BoolArray,
) -> FloatArray:
    """Closed-polygon edges ``(m, 5)``: slice, j0, i0, j1, i1 (contours with ``keep``)."""
    contour_of = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nxt = np.arange(len(ji)) + 1
    last = starts + lengths - 1
    nxt[last] = starts  # each contour closes on its first point
    edges = np.column_stack([slice_of[contour_of], ji, ji[nxt]])
    return np.asarray(edges[keep[contour_of]])


def _fill_edges(mask: BoolArray, edges: FloatArray) -> None:
    """Even-odd scanline fill of polygon edges (index space), per slice, at voxel-centre rows.

    An edge crosses row ``j`` when ``min(j0, j1) <= j < max(j0, j1)`` (half-open, so every row
    meets a closed polygon an even number of times); voxel ``i`` lies inside a pair of sorted
    crossings ``x0 <= i < x1``.
    """
    nk, nj, ni = mask.shape
    line, x = _crossings(edges, nj)
    if line.size == 0:
        return
    start = np.clip(np.ceil(np.round(x[0::2], _DECIMALS)), 0, ni).astype(np.int64)
    stop = np.clip(np.ceil(np.round(x[1::2], _DECIMALS)), 0, ni).astype(np.int64)
    lines, which = np.unique(line[0::2], return_inverse=True)
    size = len(lines) * (ni + 1)
    base = which * (ni + 1)
    diff = np.bincount(base + start, minlength=size) - np.bincount(base + stop, minlength=size)
    diff = diff.reshape(len(lines), ni + 1)
    flat = mask.reshape(nk * nj, ni)
    flat[lines] |= np.cumsum(diff, axis=1)[:, :ni] > 0


def _crossings(edges: FloatArray, nj: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Where edges cross integer rows: line ``k * nj + j`` and column ``x``, sorted."""
    k, j0, i0, j1, i1 = edges.T
    first_row = np.ceil(np.minimum(j0, j1))
    counts = (np.ceil(np.maximum(j0, j1)) - first_row).astype(np.int64)
    edge = np.repeat(np.arange(len(edges)), counts)
    row = first_row[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts))
    x = i0[edge] + (row - j0[edge]) * (i1[edge] - i0[edge]) / (j1[edge] - j0[edge])
    keep = (row >= 0) & (row < nj)
    line = k[edge][keep].astype(np.int64) * nj + row[keep].astype(np.int64)
    x = x[keep]
    order = np.lexsort((x, line))
    return line[order], x[order]
