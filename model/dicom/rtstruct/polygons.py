"""Exact conversion between binary voxel masks and planar polygons on the voxel boundary.

Coordinate system
-----------------
Everything here works in *array index* coordinates of one slice: a point is ``(j, i)`` =
(row, column), as floats, where voxel ``(j, i)`` has its centre at ``(j, i)`` and covers the
square ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``. Mapping to patient LPS millimetres is the
caller's job (see :mod:`model.dicom.rtstruct`, which goes through
:class:`model.imaging.geometry.Grid`).

Conventions (the contract between :func:`mask_to_polygons` and :func:`polygons_to_mask`)
-----------------------------------------------------------------------------------------
* **Boundary, not centres.** Polygon vertices are voxel *corners*, at half-integer indices.
  Each polygon runs along the outline of the union of the foreground voxel squares, so no
  voxel is inset by half a voxel.
* **Centre-inside rasterisation.** A voxel belongs to a set of polygons when its centre is
  inside. Because vertices sit on half-integers and centres on integers, no centre ever lies
  on an edge: the test is never ambiguous.
* **Even-odd (XOR) rule.** Every island's outer boundary and every hole's boundary is its own
  polygon; a centre is inside when it is enclosed by an odd number of them. Eclipse and
  RayStation read nested contours this way; plastimatch needs ``--xor-contours``.
* **Simple polygons, corners only.** Only corners are kept (collinear points are removed), no
  polygon visits a vertex twice, and polygons never cross. Voxels that touch only at a corner
  belong to different polygons, which share that corner point (a pinch point is split into
  two loops). This makes the result independent of 4- or 8-connectivity: diagonal
  neighbours round-trip exactly either way. Polygons with fewer than 3 points cannot occur.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from model.errors import StructureSetWriteError

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def mask_to_polygons(mask: npt.ArrayLike) -> list[FloatArray]:
    """Trace the voxel-boundary polygons of one 2-D mask slice.

    Parameters
    ----------
    mask
        2-D array ``(rows, columns)``; non-zero means foreground.

    Returns
    -------
    list of numpy.ndarray
        One ``(n, 2)`` float array of ``(j, i)`` index coordinates per polygon (outer
        boundaries and hole boundaries alike, see the module conventions); vertices are voxel
        corners at half-integer indices. Empty when the mask is empty.
    """
    return [loop.astype(np.float64) - 0.5 for loop in corner_loops(np.asarray(mask))]


def corner_loops(mask: npt.NDArray[np.bool_]) -> list[IntArray]:
    """Trace the voxel-boundary polygons of one 2-D slice in integer *corner* coordinates.

    Same polygons as :func:`mask_to_polygons`, but exact: corner ``(J, I)`` is the point
    between voxel rows ``J - 1`` and ``J`` and columns ``I - 1`` and ``I``, i.e. index
    position ``(J - 0.5, I - 0.5)``.

    Parameters
    ----------
    mask
        2-D array ``(rows, columns)``; non-zero means foreground.

    Returns
    -------
    list of numpy.ndarray
        One ``(n, 2)`` int64 array of corners ``(J, I)`` per polygon, ``n >= 4``.
    """
    if mask.ndim != 2:
        raise StructureSetWriteError(f"expected a 2-D mask slice, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    j0, j1, i0, i1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Crop, pad by one background voxel, and upsample 2x: every 2x2 block is one voxel, so the
    # border pixels that OpenCV traces are always the half of a block next to a voxel edge.
    crop = np.zeros((j1 - j0 + 2, i1 - i0 + 2), dtype=np.uint8)
    crop[1:-1, 1:-1] = mask[j0:j1, i0:i1] != 0
    upsampled = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    traced, _ = cv2.findContours(upsampled, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    offset = np.array([j0 - 1, i0 - 1], dtype=np.int64)
    loops: list[IntArray] = []
    for contour in traced:
        xy = contour.reshape(-1, 2).astype(np.int64)
        # Upsampled pixel p maps to corner (p + 1) // 2: pixels 2m - 1 and 2m (either side of
        # the line between voxels m - 1 and m) both land on corner m.
        corners = (xy[:, ::-1] + 1) // 2 + offset
        loops.extend(_split_at_repeats(_keep_corners(corners)))
    return [loop for loop in loops if len(loop) >= 3]


def _keep_corners(points: IntArray) -> IntArray:
    """Drop repeated and collinear points of a closed rectilinear loop."""
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep]
    if len(points) < 3:
        return points
    incoming = points - np.roll(points, 1, axis=0)
    outgoing = np.roll(points, -1, axis=0) - points
    turn = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    kept: IntArray = points[turn != 0]
    return kept


def _split_at_repeats(loop: IntArray) -> list[IntArray]:
    """Split a closed loop that visits a vertex more than once into simple loops.

    The edges are unchanged, so the even-odd interior is unchanged.
    """
    keys = np.sort((loop[:, 0] << 32) + loop[:, 1])
    if len(loop) < 4 or not np.any(keys[1:] == keys[:-1]):
        return [loop]
    pieces: list[IntArray] = []
    stack: list[tuple[int, int]] = []
    position: dict[tuple[int, int], int] = {}
    for j, i in loop.tolist():
        vertex = (j, i)
        if vertex in position:
            start = position[vertex]
            piece = stack[start:]
            for dropped in piece[1:]:
                del position[dropped]
            del stack[start + 1 :]
            pieces.append(_keep_corners(np.asarray(piece, dtype=np.int64)))
        else:
            position[vertex] = len(stack)
            stack.append(vertex)
    pieces.append(_keep_corners(np.asarray(stack, dtype=np.int64)))
    return [piece for piece in pieces if len(piece) >= 3]


def polygons_to_mask(polygons: Sequence[npt.ArrayLike], shape: tuple[int, int]) -> BoolArray:
    """Rasterise polygons on one slice: centre-inside test, even-odd rule across polygons.

    Parameters
    ----------
    polygons
        ``(n, 2)`` arrays of ``(j, i)`` index coordinates (any vertices, not only corners).
    shape
        ``(rows, columns)`` of the output slice.

    Returns
    -------
    numpy.ndarray
        Boolean ``(rows, columns)`` mask; voxel ``(j, i)`` is set when its centre is enclosed
        by an odd number of polygons.
    """
    rows, cols = shape
    toggles = np.zeros((rows, cols + 1), dtype=np.int64)
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(points) < 3:
            continue
        row, col = _edge_crossings(points, points_next=np.roll(points, -1, axis=0))
        inside = (row >= 0) & (row < rows)
        first = np.clip(np.floor(col[inside]).astype(np.int64) + 1, 0, cols)
        np.add.at(toggles, (row[inside], first), 1)
    return (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)


def _edge_crossings(points: FloatArray, points_next: FloatArray) -> tuple[IntArray, FloatArray]:
    """Where polygon edges cross the rows of voxel centres (half-open in ``j``).

    Returns the row index and the column coordinate of every crossing of the horizontal line
    through the centres of that row.
    """
    ja, ia = points[:, 0], points[:, 1]
    jb, ib = points_next[:, 0], points_next[:, 1]
    low, high = np.minimum(ja, jb), np.maximum(ja, jb)
    first_row = np.ceil(low).astype(np.int64)
    last_row = np.ceil(high).astype(np.int64) - 1  # half-open [low, high)
    counts = np.maximum(last_row - first_row + 1, 0)
    edge = np.repeat(np.arange(len(points)), counts)
    if edge.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    row = first_row[edge] + (np.arange(edge.size) - starts)
    t = (row - ja[edge]) / (jb[edge] - ja[edge])
    col = ia[edge] + t * (ib[edge] - ia[edge])
    return row, col
