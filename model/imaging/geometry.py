"""Voxel grids in DICOM patient coordinates.

Conventions used everywhere in llmctv:

* Patient coordinates are DICOM LPS, in millimetres: +x toward the patient's left,
  +y posterior, +z toward the head.
* Arrays are indexed ``(k, j, i)`` = (slice, row, column). ``i`` (column) grows along the
  ImageOrientationPatient row direction cosines, ``j`` (row) along the column direction
  cosines, ``k`` (slice) along the slice normal, in order of increasing position.
* ``spacing`` follows the array: ``(dk, dj, di)`` = (slice spacing, row spacing
  = PixelSpacing[0], column spacing = PixelSpacing[1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from model.errors import ConfigurationError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid placed in LPS patient space.

    Parameters
    ----------
    shape
        ``(nk, nj, ni)`` = (slices, rows, columns).
    origin
        LPS position (mm) of the centre of voxel ``(0, 0, 0)``; for a CT series this is the
        ImagePositionPatient of its first slice.
    spacing
        ``(dk, dj, di)`` in mm.
    direction
        3x3 matrix whose *columns* are the LPS unit vectors of the ``i``, ``j`` and ``k``
        index axes (column, row, slice).
    """

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...] = field(
        default=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    )

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) <= 0 for n in self.shape):
            raise ConfigurationError(f"grid shape must be three positive sizes, got {self.shape}")
        if any(float(s) <= 0 for s in self.spacing):
            raise ConfigurationError(f"grid spacing must be positive, got {self.spacing}")
        d = self.direction_matrix
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ConfigurationError("grid direction cosines are not orthonormal")

    @property
    def direction_matrix(self) -> FloatArray:
        """Columns: LPS unit vectors of the (i, j, k) index axes."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_lps(self, kji: npt.ArrayLike) -> FloatArray:
        """Map ``(..., 3)`` array indices ``(k, j, i)`` (may be fractional) to LPS mm."""
        idx = np.asarray(kji, dtype=np.float64)
        ijk = idx[..., ::-1] * np.asarray(self.spacing[::-1], dtype=np.float64)
        return np.asarray(self.origin, dtype=np.float64) + ijk @ self.direction_matrix.T

    def lps_coordinate(self, kji: npt.ArrayLike, axis: int) -> FloatArray:
        """One LPS coordinate (``axis`` 0: x, 1: y, 2: z; mm) of ``(..., 3)`` indices ``(k, j, i)``.

        The same values as ``index_to_lps(kji)[..., axis]`` at a third of the cost (no
        ``(..., 3)`` result): for the millions of voxels of a CTV on a 512 matrix.
        """
        idx = np.asarray(kji)
        row = self.affine_lps()[axis]
        out: FloatArray = row[3] + row[0] * idx[..., 2] + row[1] * idx[..., 1]
        out += row[2] * idx[..., 0]
        return out

    def lps_to_index(self, xyz: npt.ArrayLike) -> FloatArray:
        """Map ``(..., 3)`` LPS points (mm) to fractional array indices ``(k, j, i)``."""
        rel = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin, dtype=np.float64)
        ijk = rel @ self.direction_matrix / np.asarray(self.spacing[::-1], dtype=np.float64)
        return np.asarray(ijk[..., ::-1])

    def affine_lps(self) -> FloatArray:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` indices to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing[::-1])
        a[:3, 3] = self.origin
        return a

    def affine_ras(self) -> FloatArray:
        """4x4 NIfTI affine mapping ``(i, j, k, 1)`` to RAS mm (flip of x and y)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()


@dataclass
class Volume:
    """An image on a :class:`Grid`: ``array[k, j, i]``; CT values in HU."""

    array: npt.NDArray[np.floating]
    grid: Grid

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != tuple(self.grid.shape):
            raise ConfigurationError(
                f"array shape {self.array.shape} does not match grid shape {self.grid.shape}"
            )
