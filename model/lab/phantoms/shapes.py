"""Axis-aligned boxes and simple solids on an axial grid.

All positions are DICOM LPS millimetres; arrays are indexed ``(k, j, i)``. The phantom grids
are axial with ``ImageOrientationPatient = [1,0,0,0,1,0]``, so voxel ``(k, j, i)`` lies at
``(x[i], y[j], z[k])`` with the 1-D coordinate vectors of :class:`AxialCoords`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.imaging.geometry import Grid

BoolArray = npt.NDArray[np.bool_]
F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AxialCoords:
    """LPS coordinates (mm) of the voxel centres of an axial grid, one vector per axis.

    Attributes
    ----------
    z
        Slice positions, shape ``(nk,)``, increasing.
    y
        Row positions, shape ``(nj,)``, increasing (toward posterior).
    x
        Column positions, shape ``(ni,)``, increasing (toward the patient's left).
    """

    z: F64Array
    y: F64Array
    x: F64Array

    @classmethod
    def from_grid(cls, grid: Grid) -> AxialCoords:
        """Coordinate vectors of an axis-aligned grid (identity direction)."""
        axes = [
            grid.origin[2 - a] + grid.spacing[a] * np.arange(grid.shape[a], dtype=np.float64)
            for a in range(3)
        ]
        return cls(
            z=np.asarray(axes[0], dtype=np.float64),
            y=np.asarray(axes[1], dtype=np.float64),
            x=np.asarray(axes[2], dtype=np.float64),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nk, nj, ni)``."""
        return (self.z.size, self.y.size, self.x.size)


@dataclass(frozen=True)
class Box:
    """A sub-block ``[k0:k1, j0:j1, i0:i1]`` of a ``(k, j, i)`` array."""

    k0: int
    k1: int
    j0: int
    j1: int
    i0: int
    i1: int

    @property
    def index(self) -> tuple[slice, slice, slice]:
        """Slices selecting the block from a full array."""
        return (slice(self.k0, self.k1), slice(self.j0, self.j1), slice(self.i0, self.i1))

    @property
    def empty(self) -> bool:
        """True when the block holds no voxel."""
        return self.k1 <= self.k0 or self.j1 <= self.j0 or self.i1 <= self.i0

    def union(self, other: Box) -> Box:
        """The smallest box holding both."""
        return Box(
            min(self.k0, other.k0),
            max(self.k1, other.k1),
            min(self.j0, other.j0),
            max(self.j1, other.j1),
            min(self.i0, other.i0),
            max(self.i1, other.i1),
        )

    def padded(self, pad: tuple[int, int, int], shape: tuple[int, int, int]) -> Box:
        """Grow by ``pad`` voxels per axis ``(k, j, i)``, clipped to ``shape``."""
        return Box(
            max(0, self.k0 - pad[0]),
            min(shape[0], self.k1 + pad[0]),
            max(0, self.j0 - pad[1]),
            min(shape[1], self.j1 + pad[1]),
            max(0, self.i0 - pad[2]),
            min(shape[2], self.i1 + pad[2]),
        )

    def to_full(self, local: BoolArray, shape: tuple[int, int, int]) -> BoolArray:
        """A full-size boolean array holding ``local`` in this block, False elsewhere."""
        out = np.zeros(shape, dtype=bool)
        if not self.empty:
            out[self.index] = local
        return out


def index_range(values: F64Array, low: float, high: float) -> tuple[int, int]:
    """Half-open index range of the increasing ``values`` lying in ``[low, high]``."""
    start = int(np.searchsorted(values, low, side="left"))
    stop = int(np.searchsorted(values, high, side="right"))
    return start, max(start, stop)


def box_from_ranges(
    coords: AxialCoords,
    z: tuple[float, float],
    y: tuple[float, float],
    x: tuple[float, float],
) -> Box:
    """The box of voxels whose centres lie in the given LPS ranges (mm)."""
    k0, k1 = index_range(coords.z, *z)
    j0, j1 = index_range(coords.y, *y)
    i0, i1 = index_range(coords.x, *x)
    return Box(k0, k1, j0, j1, i0, i1)


def box_of_mask2d(mask: BoolArray, k_range: tuple[int, int]) -> Box:
    """Box over slices ``k_range`` and the bounding rectangle of a 2-D ``(j, i)`` mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return Box(k_range[0], k_range[0], 0, 0, 0, 0)
    return Box(
        k_range[0], k_range[1], int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    )


def ellipsoid(
    coords: AxialCoords,
    centre: tuple[float, float, float],
    semi: tuple[float, float, float],
) -> tuple[Box, BoolArray]:
    """Voxels whose centres lie in an axis-aligned ellipsoid.

    Parameters
    ----------
    coords
        Grid coordinates (LPS mm).
    centre, semi
        Centre ``(x, y, z)`` and semi-axes ``(sx, sy, sz)`` in LPS mm.

    Returns
    -------
    box, local
        The bounding box (array indices) and the ``(k, j, i)`` mask inside it.
    """
    cx, cy, cz = centre
    sx, sy, sz = semi
    box = box_from_ranges(coords, (cz - sz, cz + sz), (cy - sy, cy + sy), (cx - sx, cx + sx))
    tz = ((coords.z[box.k0 : box.k1] - cz) / sz) ** 2
    ty = ((coords.y[box.j0 : box.j1] - cy) / sy) ** 2
    tx = ((coords.x[box.i0 : box.i1] - cx) / sx) ** 2
    local = (tz[:, None, None] + ty[None, :, None] + tx[None, None, :]) <= 1.0
    return box, local


def nearest_voxel(coords: AxialCoords, point: tuple[float, float, float]) -> tuple[int, int, int]:
    """Index ``(k, j, i)`` of the voxel nearest to the LPS point ``(x, y, z)``, clipped."""
    x, y, z = point
    return (
        int(np.abs(coords.z - z).argmin()),
        int(np.abs(coords.y - y).argmin()),
        int(np.abs(coords.x - x).argmin()),
    )
