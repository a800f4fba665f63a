"""A PNG for a person to check a result at a glance: the structures over CT in three planes.

Each plane is the one holding the most of the CTV (the volume centre when the CTV is empty),
so every panel shows contour even when the CTV is in pieces far apart (a centroid between two
pieces may cut neither). With structures, each is outlined in its own colour and named in a
legend; without, the CTV is outlined in red. Display
orientation comes from the grid's direction matrix, never from hand flips: axial views are
shown in the radiological convention (patient left on the image right, anterior up) and
coronal/sagittal views with the head up.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import TightLayoutEngine
from matplotlib.lines import Line2D

from model.imaging.geometry import Grid, marginal_counts, mask_box

WINDOW = (-160.0, 240.0)  # soft tissue: level 40, width 400 HU


def _centre(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int]:
    """The slice, row and column index whose plane holds the most of ``mask`` (the first such
    plane; counted in the mask's bounding box only)."""
    box = mask_box(mask)
    if box is None:
        return tuple(int(s) // 2 for s in mask.shape)  # type: ignore[return-value]
    counts = marginal_counts(mask[box])
    k, j, i = (b.start + int(np.argmax(c)) for b, c in zip(box, counts, strict=True))
    return k, j, i


def _axis_signs(grid: Grid) -> tuple[float, float, float]:
    """The LPS component each index axis mostly follows, signed: (i->x, j->y, k->z)."""
    d = grid.direction_matrix  # columns: LPS directions of i, j, k
    return float(d[0, 0]), float(d[1, 1]), float(d[2, 2])


#: Outline colours of the structures, in order (the first is the CTV's red).
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _show(
    ax: Axes,
    image: npt.NDArray[np.floating],
    outlines: list[tuple[str, npt.NDArray[np.bool_]]],
    aspect: float,
    flip_x: bool,
    rows_up: bool,
    title: str,
) -> None:
    """Draw one plane; ``rows_up`` puts row 0 at the bottom, ``flip_x`` column 0 on the right."""
    origin: Literal["upper", "lower"] = "lower" if rows_up else "upper"
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin=origin, aspect=aspect)
    for colour, mask in outlines:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows) == 0:
            continue
        # In data coordinates, as imshow places row r at y = r for either origin.
        # (contour's own ``origin="upper"`` would put row 0 at y = N: upside down.)
        # Only the mask's box and a pixel around it are traced, at their own coordinates:
        # the same outline as from the whole plane.
        r = slice(max(0, rows[0] - 1), min(mask.shape[0], rows[-1] + 2))
        c = slice(max(0, cols[0] - 1), min(mask.shape[1], cols[-1] + 2))
        x, y = np.arange(c.start, c.stop), np.arange(r.start, r.stop)
        z = mask[r, c].astype(np.float32)
        ax.contour(x, y, z, levels=[0.5], colors=colour, linewidths=0.9)
    if flip_x:
        ax.invert_xaxis()
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    # No ticks: none is drawn (axis off), and laying out the titles would compute them.
    ax.set_xticks([])
    ax.set_yticks([])


def render_preview(
    hu: npt.NDArray[np.floating],
    mask: npt.NDArray[np.bool_],
    grid: Grid,
    label: str = "CTV",
    structures: Mapping[str, npt.NDArray[np.bool_]] | None = None,
) -> bytes:
    """PNG bytes: axial, coronal and sagittal CT (``(k, j, i)`` HU) with the outlines.

    ``structures`` (ROI name -> mask) are outlined each in its colour with a legend; without
    them ``mask`` (the CTV) is outlined in red.
    """
    k, j, i = _centre(mask)
    sx, sy, sz = _axis_signs(grid)
    dk, dj, di = grid.spacing
    named = list(structures.items()) if structures else [(label, mask)]
    coloured = [(COLOURS[n % len(COLOURS)], name, m) for n, (name, m) in enumerate(named)]
    fig = Figure(figsize=(12, 4.8), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    planes = (
        # Axial (rows j, columns i): radiological = patient left (+x) on the right.
        (0, k, dj / di, sx < 0, sy < 0, f"axial, slice {k}"),
        # Coronal (rows k, columns i): head (+z) up.
        (1, j, dk / di, sx < 0, sz > 0, "coronal"),
        # Sagittal (rows k, columns j): head up, anterior (-y) on the left.
        (2, i, dk / dj, sy < 0, sz > 0, "sagittal"),
    )
    for axis, at, aspect, flip_x, rows_up, title in planes:
        outlines = [(colour, np.take(m, at, axis=axis)) for colour, _, m in coloured]
        _show(axes[axis], np.take(hu, at, axis=axis), outlines, aspect, flip_x, rows_up, title)
    if structures:
        handles = [Line2D([0], [0], color=colour, lw=2) for colour, _, _ in coloured]
        fig.legend(
            handles,
            [name for _, name, _ in coloured],
            loc="lower center",
            ncol=min(len(coloured), 6),
            fontsize=8,
            frameon=False,
        )
        fig.suptitle("AI-generated structures - review before use", fontsize=10)
    else:
        fig.suptitle(f"{label} (red) - AI-generated, review before use", fontsize=10)
    # fig.tight_layout() would leave a placeholder layout engine, for which savefig draws the
    # figure twice; the engine's one layout pass is the same layout.
    TightLayoutEngine(rect=(0.0, 0.06 if structures else 0.0, 1.0, 1.0)).execute(fig)
    out = io.BytesIO()
    # zlib level 1: the same pixels, in a fraction of the default level's time (and, for
    # these images, no larger).
    fig.savefig(out, format="png", pil_kwargs={"compress_level": 1})
    return out.getvalue()
