"""The PNG preview: the red outline sits on the structure it outlines, in every plane."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage

from model.imaging.geometry import Grid
from workers.preview import render_preview


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
