"""The structures of a job's RTSTRUCT as polygons in display pixels, for every plane.

Every ROI of the file is shown, whatever its name. Axial polygons are the file's own contours
(LPS mm), each mapped to pixels through the ImagePositionPatient, ImageOrientationPatient and
PixelSpacing of the CT slice it references
(:meth:`~service.review_station.slices.SliceGeometry.to_pixels`). Coronal and sagittal polygons
are the outlines (voxel corners) of the ROI rasterised on the CT grid by
:func:`model.dicom.rtstruct.reader.rasterize`, in the display orientation of
:mod:`service.review_station.slices`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.dicom.rtstruct.polygons import corner_loops
from model.dicom.rtstruct.reader import Roi, StructureSet, rasterize, read_structure_set
from service.review_station.slices import CtView, UnknownSliceError

#: Colours of ROIs that do not state one (RGB), in ROI order.
_FALLBACK_COLOURS = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (160, 255, 96), (255, 96, 255))
_PLANE_CACHE = 64


@dataclass(frozen=True)
class RoiInfo:
    """What the page lists about one ROI."""

    number: int
    name: str
    color: tuple[int, int, int]


@dataclass
class StructureView:
    """A job's ROIs on its CT: axial polygons up front, other planes on demand."""

    ct: CtView
    structure_set: StructureSet
    rois: tuple[RoiInfo, ...]
    axial: dict[int, list[dict[str, Any]]]
    _masks: dict[int, npt.NDArray[np.bool_]] = field(default_factory=dict)
    _planes: OrderedDict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_slices(self) -> dict[str, int]:
        """Where each plane opens: through the structures (the middle when there are none).

        Axial: the slice with the most contour vertices; coronal and sagittal: through the
        mean of all axial contour points (display ``y`` is row ``j``, ``x`` column ``i``).
        """
        middle = {plane: self.ct.count(plane) // 2 for plane in ("axial", "coronal", "sagittal")}
        points = [
            path for entries in self.axial.values() for entry in entries for path in entry["paths"]
        ]
        if not points:
            return middle
        xs = np.concatenate([np.asarray(p[0::2]) for p in points])
        ys = np.concatenate([np.asarray(p[1::2]) for p in points])
        j = int(np.clip(np.floor(ys.mean()), 0, self.ct.count("coronal") - 1))
        i = int(np.clip(np.floor(xs.mean()), 0, self.ct.count("sagittal") - 1))
        return {"axial": self.busiest_axial(), "coronal": j, "sagittal": i}

    def busiest_axial(self) -> int:
        """The axial slice with the most contour vertices (the middle one when none)."""
        if not self.axial:
            return self.ct.count("axial") // 2
        weight = {
            k: sum(len(path) for entry in entries for path in entry["paths"])
            for k, entries in self.axial.items()
        }
        return max(weight, key=lambda k: weight[k])

    def contours(self, plane: str, index: int) -> list[dict[str, Any]]:
        """``[{"roi": number, "paths": [[x0, y0, x1, y1, ...], ...]}, ...]`` on one slice."""
        if not 0 <= index < self.ct.count(plane):
            raise UnknownSliceError(f"{plane} slice {index} is outside the series")
        if plane == "axial":
            return self.axial.get(index, [])
        with self._lock:
            cached = self._planes.get((plane, index))
            if cached is None:
                cached = [self._outline(roi, plane, index) for roi in self.rois]
                cached = [entry for entry in cached if entry["paths"]]
                self._planes[(plane, index)] = cached
                while len(self._planes) > _PLANE_CACHE:
                    self._planes.popitem(last=False)
            else:
                self._planes.move_to_end((plane, index))
        return cached

    def _mask(self, roi: RoiInfo) -> npt.NDArray[np.bool_]:
        if roi.number not in self._masks:
            only = StructureSet(
                self.structure_set.sop_instance_uid,
                self.structure_set.study_instance_uid,
                self.structure_set.frame_of_reference_uid,
                self.structure_set.referenced_series_instance_uid,
                tuple(r for r in self.structure_set.rois if r.number == roi.number),
            )
            has_contours = any(r.contours for r in only.rois)
            self._masks[roi.number] = (
                rasterize(only, roi.name, self.ct.grid)
                if has_contours
                else np.zeros(self.ct.hu.shape, dtype=bool)
            )
        return self._masks[roi.number]

    def _outline(self, roi: RoiInfo, plane: str, index: int) -> dict[str, Any]:
        mask = self._mask(roi)
        section = mask[:, index, :] if plane == "coronal" else mask[:, :, index]
        paths = []
        for loop in corner_loops(section):
            corners = np.asarray(loop, dtype=np.float64)  # (K, column corner)
            rows = self.ct.display_row(corners[:, 0])
            paths.append(_flat(np.stack([corners[:, 1], rows], axis=1)))
        return {"roi": roi.number, "paths": paths}


def _flat(points: npt.NDArray[np.float64]) -> list[float]:
    return [round(float(v), 2) for v in points.reshape(-1)]


def _colour(roi: Roi, position: int) -> tuple[int, int, int]:
    if roi.color is not None:
        return roi.color
    return _FALLBACK_COLOURS[position % len(_FALLBACK_COLOURS)]


def _slice_of(ct: CtView, uids: tuple[str, ...], points: npt.NDArray[np.float64]) -> int | None:
    """The CT slice a contour lies on: the one it references, else the nearest one."""
    for uid in uids:
        if uid in ct.sop_index:
            return ct.sop_index[uid]
    centre = points.mean(axis=0)
    k = int(np.rint(ct.grid.lps_to_index(centre)[0]))
    return k if 0 <= k < len(ct.slices) else None


def structure_view(rtstruct: Path, ct: CtView) -> StructureView:
    """The ROIs of ``rtstruct`` on ``ct``.

    Raises
    ------
    UnreadableDicomError, StructureSetError
        The file is not a readable RTSTRUCT.
    """
    structure_set = read_structure_set(rtstruct)
    rois = tuple(
        RoiInfo(roi.number, roi.name, _colour(roi, n)) for n, roi in enumerate(structure_set.rois)
    )
    axial: dict[int, list[dict[str, Any]]] = {}
    for roi in structure_set.rois:
        per_slice: dict[int, list[list[float]]] = {}
        for contour in roi.contours:
            points = np.asarray(contour.points, dtype=np.float64)
            k = _slice_of(ct, contour.referenced_sop_instance_uids, points)
            if k is None or len(points) < 2:
                continue
            per_slice.setdefault(k, []).append(_flat(ct.slices[k].to_pixels(points)))
        for k, paths in per_slice.items():
            axial.setdefault(k, []).append({"roi": roi.number, "paths": paths})
    return StructureView(ct, structure_set, rois, axial)
