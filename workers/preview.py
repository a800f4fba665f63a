"""A PNG for a person to check a result at a glance: CTV over CT in three planes.

Planes cross at the CTV centroid (the volume centre when the CTV is empty). Display
orientation comes from the grid's direction matrix, never from hand flips: axial views are
shown in the radiological convention (patient left on the image right, anterior up) and
coronal/sagittal views with the head up.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.imaging.geometry import Grid

WINDOW = (-160.0, 240.0)  # soft tissue: level 40, width 400 HU


def _centre(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int]:
    voxels = np.argwhere(mask)
    if len(voxels) == 0:
        return tuple(int(s) // 2 for s in mask.shape)  # type: ignore[return-value]
    k, j, i = voxels.mean(axis=0).round().astype(int)
    return int(k), int(j), int(i)


def _axis_signs(grid: Grid) -> tuple[float, float, float]:
    """The LPS component each index axis mostly follows, signed: (i->x, j->y, k->z)."""
    d = grid.direction_matrix  # columns: LPS directions of i, j, k
    return float(d[0, 0]), float(d[1, 1]), float(d[2, 2])


def _show(
    ax: Axes,
    image: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    aspect: float,
    flip_x: bool,
    rows_up: bool,
    title: str,
) -> None:
    """Draw one plane; ``rows_up`` puts row 0 at the bottom, ``flip_x`` column 0 on the right."""
    origin: Literal["upper", "lower"] = "lower" if rows_up else "upper"
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin=origin, aspect=aspect)
    if mask.any():
        # In data coordinates, as imshow places row r at y = r for either origin. (contour's
        # own ``origin="upper"`` would put row 0 at y = N: the outline upside down.)
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
    if flip_x:
        ax.invert_xaxis()
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def render_preview(
    hu: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_], grid: Grid, label: str = "CTV"
) -> bytes:
    """PNG bytes: axial, coronal and sagittal CT (``(k, j, i)`` HU) with the mask outlined."""
    k, j, i = _centre(mask)
    sx, sy, sz = _axis_signs(grid)
    dk, dj, di = grid.spacing
    fig = Figure(figsize=(12, 4.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    # Axial (rows j, columns i): radiological = patient left (+x) on the right of the image.
    _show(axes[0], hu[k], mask[k], dj / di, sx < 0, sy < 0, f"axial, slice {k}")
    # Coronal (rows k, columns i): head (+z) up.
    _show(axes[1], hu[:, j, :], mask[:, j, :], dk / di, sx < 0, sz > 0, "coronal")
    # Sagittal (rows k, columns j): head up, anterior (-y) on the left.
    _show(axes[2], hu[:, :, i], mask[:, :, i], dk / dj, sy < 0, sz > 0, "sagittal")
    fig.suptitle(f"{label} (red) - AI-generated, review before use", fontsize=10)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
