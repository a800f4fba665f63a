"""Network-grid results back at CT voxels, where only part of the CT needs them.

Coordinates: network arrays are ``(k, j, i)`` on ``plan.target``, CT voxels ``(k, j, i)``
indices of ``plan.source`` (:class:`~model.imaging.preprocessing.ResamplingPlan`); the two
grids meet in LPS mm through their affines, never by array flips.

* :func:`network_box` / :func:`source_box_of`: the boxes of both grids that a network-grid
  mask can reach by interpolation;
* :func:`to_source_box`: :func:`~model.imaging.preprocessing.to_source_grid` inside a CT box;
* :class:`NearestOnSource`: the nearest network voxel's value at a list of CT voxels, the
  value :func:`~model.imaging.preprocessing.to_source_grid` with ``"nearest"`` gives there,
  without writing a CT-grid array (structure labels are only read at the CTV's voxels);
* :class:`MapOnSource`: a network-grid probability map seen on the CT grid, thresholded a
  few slices at a time; the whole float map (hundreds of MB on a 512 matrix) only on demand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from model.imaging.geometry import Grid
from model.imaging.preprocessing import (
    _SNAP_TOL,
    Box,
    Mode,
    ResamplingPlan,
    _index_affine,
    _nearest_index,
    _resample,
)

IndexArray = npt.NDArray[np.intp]
#: CT voxels resampled at once when a map is thresholded (a few MB of float32).
_CHUNK_VOXELS = 1 << 21


def network_box(mask: npt.NDArray[np.bool_], margin: int = 2) -> Box | None:
    """The network-grid index box of ``mask`` grown by ``margin`` voxels (clipped), or None."""
    hits = np.argwhere(mask)
    if len(hits) == 0:
        return None
    low = np.maximum(hits.min(axis=0) - margin, 0)
    high = np.minimum(hits.max(axis=0) + margin, np.asarray(mask.shape) - 1)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high, strict=True))


def source_box_of(mask: npt.NDArray[np.bool_], plan: ResamplingPlan, margin: int = 2) -> Box | None:
    """The CT-grid index box ``(k, j, i)`` slices covering ``mask`` (network grid), or None.

    The network-grid bounding box (grown by ``margin`` voxels, :func:`network_box`) is
    mapped corner by corner through LPS to CT indices, so everything a network voxel of
    ``mask`` can touch by interpolation lies inside the box.
    """
    box = network_box(mask, margin)
    return None if box is None else source_box_of_network_box(box, plan)


def source_box_of_network_box(box: Box, plan: ResamplingPlan) -> Box:
    """The CT-grid index box holding the network-grid ``box`` (its corners through LPS)."""
    low = np.array([s.start for s in box])
    high = np.array([s.stop - 1 for s in box])
    corners = np.array(
        [[(high if (bit >> a) & 1 else low)[a] for a in range(3)] for bit in range(8)], float
    )
    on_ct = plan.source.lps_to_index(plan.target.index_to_lps(corners))
    start = np.clip(np.floor(on_ct.min(axis=0)).astype(int), 0, None)
    stop = np.minimum(np.ceil(on_ct.max(axis=0)).astype(int) + 1, plan.source.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def to_source_box(
    target_array: npt.NDArray[np.generic],
    plan: ResamplingPlan,
    box: Box,
    mode: Mode = "linear",
    into: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[Any]:
    """:func:`~model.imaging.preprocessing.to_source_grid` on the ``box`` of the CT grid only
    (same values there). ``into``: a float32 CT-grid array whose ``box`` receives a linear
    ``(k, j, i)`` result in place (returned), instead of a new array."""
    sub = sub_grid(plan.source, box)
    if into is None:
        return _resample(target_array, sub, plan.target, mode)
    return _resample(target_array, sub, plan.target, mode, into=into[box])


def sub_grid(grid: Grid, box: Box) -> Grid:
    """The grid of the voxels ``box`` (index slices ``(k, j, i)``) of ``grid``: same geometry."""
    start = np.array([s.start for s in box], dtype=float)
    origin = grid.index_to_lps(start)
    return Grid(
        shape=(box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing=grid.spacing,
        direction=grid.direction,
    )


class NearestOnSource:
    """Values of network-grid arrays at CT voxels, by nearest network voxel.

    For grids whose axes are parallel (every LPS-canonical network grid of an axial CT),
    each CT index axis maps to one network index axis; the nearest index per CT row, column
    and slice is computed once, exactly as the separable nearest resampling of
    :func:`~model.imaging.preprocessing.to_source_grid` rounds it (ties to even, clamped to
    the grid), and a voxel list is then three lookups. For oblique grids the points' box
    is resampled (:func:`to_source_box`) and read.
    """

    def __init__(self, plan: ResamplingPlan) -> None:
        self.plan = plan
        self.axes = _axis_indices(plan)

    def __call__(self, array: npt.NDArray[Any], points: IndexArray) -> npt.NDArray[Any]:
        """``array`` (``(k, j, i)`` on ``plan.target``) at ``points`` (``(n, 3)`` CT indices)."""
        if len(points) == 0:
            return np.zeros(0, dtype=array.dtype)
        if self.axes is not None:
            k, j, i = (self.axes[a][points[:, a]] for a in range(3))
            found: npt.NDArray[Any] = array[k, j, i]
            return found
        low, high = points.min(axis=0), points.max(axis=0)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high, strict=True))
        values = to_source_box(array, self.plan, box, mode="nearest")
        inside: npt.NDArray[Any] = values[tuple((points - low).T)]
        return inside


def _axis_indices(plan: ResamplingPlan) -> list[npt.NDArray[np.int64]] | None:
    """Per CT axis, the nearest network index of each CT index; ``None`` for oblique grids."""
    a, b = _index_affine(plan.source, plan.target)
    diag = np.diag(a)
    if np.any(np.abs(a - np.diag(diag)) > _SNAP_TOL) or np.any(np.abs(diag) < _SNAP_TOL):
        return None
    found = []
    for ax in range(3):
        n_in = plan.target.shape[ax]
        coords = np.clip(
            float(diag[ax]) * np.arange(plan.source.shape[ax], dtype=np.float64) + float(b[ax]),
            0.0,
            n_in - 1.0,
        )
        found.append(_nearest_index(coords))
    return found


class MapOnSource:
    """A network-grid float map (``(k, j, i)`` on ``plan.target``) as seen on the CT grid.

    ``box`` is the CT-grid box outside which the map is taken as 0 (:func:`source_box_of`
    of where it is not negligible; ``None``: 0 everywhere). :meth:`at_least` thresholds it
    a few CT slices at a time, :meth:`full` resamples the whole map once (cached).
    """

    def __init__(self, values: npt.NDArray[np.float32], plan: ResamplingPlan, box: Box | None):
        self.values = values
        self.plan = plan
        self.box = box
        self._full: npt.NDArray[np.float32] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """The CT grid's shape."""
        return self.plan.source.shape

    def full(self) -> npt.NDArray[np.float32]:
        """The map on the whole CT grid (float32, 0 outside the box)."""
        if self._full is None:
            self._full = np.zeros(self.shape, dtype=np.float32)
            if self.box is not None:
                to_source_box(self.values, self.plan, self.box, into=self._full)
        return self._full

    def at_least(self, level: float) -> npt.NDArray[np.bool_]:
        """``full() >= level`` (``level > 0``), resampled chunk by chunk of CT slices."""
        found = np.zeros(self.shape, dtype=bool)
        if self.box is None:
            return found
        ks, rows, cols = self.box
        plane = (rows.stop - rows.start) * (cols.stop - cols.start)
        step = max(1, _CHUNK_VOXELS // max(plane, 1))
        buffer = np.empty(step * plane, dtype=np.float32)
        for k in range(ks.start, ks.stop, step):
            chunk = (slice(k, min(k + step, ks.stop)), rows, cols)
            size = (chunk[0].stop - chunk[0].start, rows.stop - rows.start, cols.stop - cols.start)
            part = buffer[: size[0] * plane].reshape(size)
            _resample(
                self.values, sub_grid(self.plan.source, chunk), self.plan.target, "linear", part
            )
            np.greater_equal(part, level, out=found[chunk])
        return found
