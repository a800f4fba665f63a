"""The PNG preview: the red outline sits on the structure it outlines, in every plane."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage

from model.contouring.preview import render_preview
from model.imaging.geometry import Grid


def _panels(png: bytes) -> list[np.ndarray]:
    """The figure's RGB pixels cut into its three panels (axial, coronal, sagittal)."""
    rgb = imread(io.BytesIO(png))[..., :3]
    third = rgb.shape[1] // 3
    return [rgb[:, n * third : (n + 1) * third] for n in range(3)]


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected piece (the block; title anti-aliasing is tiny)."""
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    piece: np.ndarray = labels == int(np.argmax(sizes))
    return piece


def _box(mask: np.ndarray) -> np.ndarray:
    """Pixel bounding box ``[top, left, bottom, right]``."""
    assert mask.any()
    where = np.argwhere(mask)
    return np.concatenate([where.min(axis=0), where.max(axis=0)]).astype(float)


@pytest.mark.parametrize("rows_to_posterior", [True, False])
def test_outline_is_drawn_on_the_bright_block_it_outlines(rows_to_posterior: bool) -> None:
    """A bright block off-centre (anterior-left, upper slices); the mask is that block.

    Rows running to anterior (a flipped Y direction) must give the same picture: the display
    follows the grid's direction, and the outline follows the image.
    """
    shape = (40, 60, 60)
    hu = np.full(shape, -1000.0)
    mask = np.zeros(shape, dtype=bool)
    rows = slice(8, 20) if rows_to_posterior else slice(40, 52)
    mask[25:35, rows, 38:52] = True
    hu[mask] = 200.0
    direction = ((1.0, 0.0, 0.0), (0.0, 1.0 if rows_to_posterior else -1.0, 0.0), (0.0, 0.0, 1.0))
    grid = Grid(shape=shape, origin=(0.0, 0.0, 0.0), spacing=(3.0, 1.0, 1.0), direction=direction)
    centres = []
    for panel in _panels(render_preview(hu, mask, grid)):
        red = (panel[..., 0] > 0.6) & (panel[..., 1] < 0.4) & (panel[..., 2] < 0.4)
        white = _largest((panel.min(axis=-1) > 0.8) & (panel.max(axis=-1) < 0.97))  # 200 HU
        box_red, box_white = _box(red), _box(white)
        assert np.abs(box_red - box_white).max() < 4.0, (box_red, box_white)
        centres.append((box_white[:2] + box_white[2:]) / 2)
    axial = _panels(render_preview(hu, np.zeros(shape, bool), grid))[0]
    height, width = axial.shape[:2]
    y, x = centres[0]
    assert y < height / 2, "anterior is up in the axial view"
    assert x > width / 2, "patient left on the image right (radiological)"


def _has_colour(panel: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.12) -> bool:
    target = np.array(rgb) / 255.0
    return bool((np.abs(panel - target).max(axis=-1) < tol).sum() > 5)


def test_each_structure_in_its_colour_and_contour_in_every_panel() -> None:
    """Two pieces far apart: a centroid between them would cut neither (LUNG1 on e766665)."""
    shape = (40, 60, 60)
    hu = np.full(shape, 40.0)
    breast = np.zeros(shape, dtype=bool)
    nodes = np.zeros(shape, dtype=bool)
    breast[2:10, 5:20, 35:55] = True
    nodes[30:38, 40:50, 35:45] = True
    grid = Grid(shape=shape, origin=(0.0, 0.0, 0.0), spacing=(3.0, 1.0, 1.0))
    png = render_preview(hu, breast | nodes, grid, structures={"Breast": breast, "SCF": nodes})
    panels = _panels(png)
    red, green = (230, 25, 75), (60, 180, 75)
    for panel in panels:
        body = panel[: int(panel.shape[0] * 0.9)]  # above the legend
        assert _has_colour(body, red) or _has_colour(body, green), "contour in every panel"
    whole = imread(io.BytesIO(png))[..., :3]
    legend = whole[int(whole.shape[0] * 0.9) :]
    assert _has_colour(legend, red) and _has_colour(legend, green), "both named in the legend"
