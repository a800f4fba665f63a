"""Consistency warnings: the contour against the clinical fields (LPS: +x is patient left)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from model.contouring.consistency import (
    laterality_warnings,
    midline_x,
    nodal_warnings,
    node_negative_record,
)
from model.imaging.geometry import Grid
from model.text.clinical import ClinicalRecord, parse_clinical

SHAPE = (10, 40, 60)


def _record(*sides: str, n_stage: str = "0", note: str | None = None) -> ClinicalRecord:
    diagnoses = [
        {"side": s, "surgery": "breast_conserving", "t_stage": "2", "n_stage": n_stage}
        for s in sides
    ]
    return parse_clinical({"diagnoses": diagnoses, "note": note})


def _grid(flip_x: bool = False) -> Grid:
    """A 2 mm grid shifted 30 mm to the right (table offset); optionally column axis toward -x."""
    direction = (-1.0, 0, 0, 0, 1, 0, 0, 0, 1) if flip_x else (1.0, 0, 0, 0, 1, 0, 0, 0, 1)
    origin = (30.0, -40.0, 0.0) if flip_x else (-90.0, -40.0, 0.0)
    return Grid(shape=SHAPE, spacing=(3.0, 2.0, 2.0), origin=origin, direction=direction)


def _body_and_ctv(
    grid: Grid, ctv_x: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Body: columns with |x - (-30)| < 50 mm; CTV: a box around ``ctv_x`` (LPS mm)."""
    i = np.arange(SHAPE[2])
    x = grid.index_to_lps(np.stack([np.zeros_like(i), np.zeros_like(i), i], axis=1))[:, 0]
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[:, :, np.abs(x + 30.0) < 50.0] = 40.0
    mask = np.zeros(SHAPE, bool)
    mask[3:7, 10:20, np.abs(x - ctv_x) < 10.0] = True
    return hu, mask


@pytest.mark.parametrize("flip_x", [False, True], ids=["columns-to-left", "columns-to-right"])
def test_midline_is_the_body_centre_not_x0(flip_x: bool) -> None:
    grid = _grid(flip_x)
    hu, _ = _body_and_ctv(grid, 0.0)
    assert midline_x(hu, grid, np.arange(SHAPE[0])) == pytest.approx(-30.0, abs=2.0)


@pytest.mark.parametrize("flip_x", [False, True], ids=["columns-to-left", "columns-to-right"])
def test_ctv_on_the_named_side_passes_and_on_the_other_warns(flip_x: bool) -> None:
    grid = _grid(flip_x)
    hu, left_ctv = _body_and_ctv(grid, -30.0 + 25.0)  # 25 mm left of the body midline
    assert laterality_warnings(_record("left"), left_ctv, hu, grid) == []
    (warning,) = laterality_warnings(_record("right"), left_ctv, hu, grid)
    assert warning.startswith("the note says right, but 100% of the CTV lies left")


def test_bilateral_note_with_one_sided_ctv_warns() -> None:
    grid = _grid()
    hu, right_ctv = _body_and_ctv(grid, -30.0 - 25.0)
    (warning,) = laterality_warnings(_record("left", "right"), right_ctv, hu, grid)
    assert "left side" in warning


def test_empty_ctv_warns() -> None:
    grid = _grid()
    hu, _ = _body_and_ctv(grid, 0.0)
    assert laterality_warnings(_record("left"), np.zeros(SHAPE, bool), hu, grid) == [
        "no CTV was found on this CT"
    ]


def test_nodal_check_compares_with_the_n0_contour() -> None:
    grid = _grid()
    record = _record("left", n_stage="2a")
    negative = node_negative_record(record)
    assert negative is not None and negative.diagnoses[0].n_stage == "0"
    breast = np.zeros(SHAPE, bool)
    breast[2:8, 10:20, 30:40] = True  # 6 x 10 x 10 voxels of 12 mm3 = 7.2 cc
    nodes = breast.copy()
    nodes[2:8, 20:30, 30:40] = True  # another 7.2 cc
    warnings, cc = nodal_warnings(record, nodes, breast, grid, threshold_cc=5.0)
    assert warnings == [] and cc == pytest.approx(7.2)
    warnings, cc = nodal_warnings(record, breast, breast, grid, threshold_cc=5.0)
    assert cc == 0.0 and warnings[0].startswith("N2a left is stated, but no nodal volume")


def test_no_nodal_check_for_n0_or_a_verbatim_note() -> None:
    assert node_negative_record(_record("left", n_stage="1mi")) is None
    assert node_negative_record(_record("left", n_stage="1", note="free text")) is None
