"""Consistency warnings: does the contour agree with the clinical fields it was asked for?

These never fail a job; they appear in ``GET /jobs/{id}`` so that a person looks twice. The
whole CTV is checked for its side (:func:`laterality_warnings`) and, for a single-CTV network,
for nodal volume against the N0 contour (:func:`nodal_warnings`); a structure network's
sub-volumes are checked directly (:func:`structure_warnings`): a nodal CTV must be present for
N1-N3 and absent for N0/N1mi; breast after breast-conserving surgery, chest wall after
mastectomy; on the side(s) the note names.

Coordinates: voxel positions go through the CT grid to DICOM patient LPS (mm); +x is the
patient's left. The midline is the x centroid of the body (HU above -400) on the slices the CTV
occupies, so a table shift does not move it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from model.imaging.geometry import Grid, marginal_counts, mask_box, mask_voxels
from model.network.structures import NODAL, Structure
from model.text.clinical import ClinicalRecord, Side, Surgery

BODY_HU = -400.0
LATERAL_FRACTION = 0.8
BILATERAL_MIN_FRACTION = 0.1
BoolArray = npt.NDArray[np.bool_]
SIDE_LETTER = {Side.LEFT: "L", Side.RIGHT: "R"}
SIDE_WORD = {"L": "left", "R": "right"}


def _ctv_x(grid: Grid, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """LPS x (mm) of every mask voxel, through the grid's affine ``(i, j, k, 1) -> LPS``, in
    ``np.argwhere`` order (the voxels are searched in the mask's bounding box only)."""
    box = mask_box(mask)
    if box is None:
        return np.zeros(0, dtype=np.float64)
    return grid.lps_coordinate(mask_voxels(mask, box), 0)


def _left_fraction(grid: Grid, mask: npt.NDArray[np.bool_], mid: float) -> float:
    """The fraction of the (non-empty) mask's voxels whose LPS x exceeds ``mid``.

    Equal to ``(_ctv_x(grid, mask) > mid).mean()``. Where only the column moves x (rows and
    slices have no x component: axial series), x is computed once per column, with the
    same arithmetic as :meth:`Grid.lps_coordinate`, and weighed by the mask's voxels in it.
    """
    row = grid.affine_lps()[0]
    box = mask_box(mask)
    if box is None or row[1] != 0.0 or row[2] != 0.0:
        return float((_ctv_x(grid, mask) > mid).mean())
    per_column = marginal_counts(mask[box])[2]
    x = row[3] + row[0] * np.arange(box[2].start, box[2].stop)
    return int(per_column[x > mid].sum()) / int(per_column.sum())


def midline_x(hu: npt.NDArray[np.floating], grid: Grid, slices: npt.NDArray[np.intp]) -> float:
    """LPS x (mm) of the body centroid on ``slices`` (all slices when empty).

    The centroid is taken in index space from the marginal voxel counts and mapped once
    through the grid (the index-to-LPS map is affine, so this is the exact LPS centroid).
    The slices are thresholded one at a time (no copy of the CT's slices).
    """
    chosen = np.asarray(slices, dtype=np.intp) if len(slices) else np.arange(hu.shape[0])
    body = np.empty((len(chosen), *hu.shape[1:]), dtype=bool)
    for n, k in enumerate(chosen):
        np.greater(hu[k], BODY_HU, out=body[n])
    per_slice, per_row, per_column = marginal_counts(body)
    total = int(per_slice.sum())
    if total == 0:
        return float(grid.index_to_lps(np.asarray(hu.shape, float) / 2.0)[0])
    k = float(np.dot(per_slice, chosen)) / total
    j = float(np.dot(per_row, np.arange(hu.shape[1]))) / total
    i = float(np.dot(per_column, np.arange(hu.shape[2]))) / total
    return float(grid.index_to_lps(np.array([k, j, i]))[0])


def laterality_warnings(
    record: ClinicalRecord, mask: npt.NDArray[np.bool_], hu: npt.NDArray[np.floating], grid: Grid
) -> list[str]:
    """Warn when the CTV lies on a side the note does not name (or misses a named side)."""
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    if len(slices) == 0:
        return ["no CTV was found on this CT"]
    mid = midline_x(hu, grid, slices)
    left = _left_fraction(grid, mask, mid)
    sides = {d.side for d in record.diagnoses}
    if sides == {Side.LEFT} and left < LATERAL_FRACTION:
        return [
            f"the note says left, but {100 * (1 - left):.0f}% of the CTV lies right of the "
            f"midline (CTV centroid {_ctv_x(grid, mask).mean() - mid:+.0f} mm from it, + is left)"
        ]
    if sides == {Side.RIGHT} and 1 - left < LATERAL_FRACTION:
        return [
            f"the note says right, but {100 * left:.0f}% of the CTV lies left of the midline "
            f"(CTV centroid {_ctv_x(grid, mask).mean() - mid:+.0f} mm from it, + is left)"
        ]
    if len(sides) == 2 and min(left, 1 - left) < BILATERAL_MIN_FRACTION:
        lacking = "left" if left < BILATERAL_MIN_FRACTION else "right"
        return [f"the note names both sides, but almost no CTV lies on the {lacking} side"]
    return []


def node_negative_record(record: ClinicalRecord) -> ClinicalRecord | None:
    """The same record with every N+ side set to N0, or ``None`` when nothing would change.

    Only template-rendered records qualify: a verbatim ``note`` cannot be rewritten.
    """
    if record.note and record.note.strip():
        return None
    if not any(d.node_positive for d in record.diagnoses):
        return None
    diagnoses = tuple(
        d.model_copy(update={"n_stage": "0"}) if d.node_positive else d for d in record.diagnoses
    )
    return record.model_copy(update={"diagnoses": diagnoses})


def nodal_warnings(
    record: ClinicalRecord,
    mask: npt.NDArray[np.bool_],
    node_negative_mask: npt.NDArray[np.bool_],
    grid: Grid,
    threshold_cc: float,
) -> tuple[list[str], float]:
    """Warn when the N+ contour adds (almost) nothing over the contour for the N0 note.

    Returns the warnings and the nodal volume in cc (CTV(N+) minus CTV(N0)).
    """
    voxel_cc = float(np.prod(grid.spacing)) / 1000.0
    nodal_cc = float(np.count_nonzero(mask & ~node_negative_mask)) * voxel_cc
    if nodal_cc >= threshold_cc:
        return [], nodal_cc
    stages = ", ".join(f"N{d.n_stage} {d.side.value}" for d in record.diagnoses if d.node_positive)
    return [
        f"{stages} is stated, but no nodal volume was found: the contour adds {nodal_cc:.1f} cc "
        f"over the contour for N0 (threshold {threshold_cc:g} cc)"
    ], nodal_cc


def structure_warnings(
    record: ClinicalRecord,
    structures: Mapping[tuple[str, str], BoolArray],
    voxel_cc: float,
    min_cc: float,
) -> list[str]:
    """What the structures say against the note, per named side."""
    cc: dict[tuple[str, str], float] = {
        key: float(np.count_nonzero(mask)) * voxel_cc for key, mask in structures.items()
    }
    warnings: list[str] = []
    named = {SIDE_LETTER[d.side] for d in record.diagnoses}
    for d in record.diagnoses:
        side = SIDE_LETTER[d.side]
        nodal = sum(cc.get((s.value, side), 0.0) for s in NODAL)
        where = f"the {SIDE_WORD[side]} side"
        if d.node_positive and nodal < min_cc:
            warnings.append(f"the note says N{d.n_stage} but no nodal CTV was found on {where}")
        if not d.node_positive and nodal >= min_cc:
            warnings.append(
                f"the note says N{d.n_stage} (no nodal CTV) but {nodal:.1f} cc of nodal CTV "
                f"were contoured on {where}"
            )
        expected, other = Structure.BREAST.value, Structure.CHEST_WALL.value
        if d.surgery is Surgery.TOTAL_MASTECTOMY:
            expected, other = other, expected
        if cc.get((expected, side), 0.0) < min_cc:
            warnings.append(f"no {expected.replace('_', ' ')} CTV on {where} ({d.surgery.value})")
        if cc.get((other, side), 0.0) >= min_cc:
            warnings.append(
                f"{cc[(other, side)]:.1f} cc of {other.replace('_', ' ')} CTV on {where}, "
                f"which the note's {d.surgery.value.replace('_', ' ')} does not call for"
            )
    for (name, side), value in cc.items():
        if side not in named and value >= min_cc:
            warnings.append(
                f"{value:.1f} cc of {name.replace('_', ' ')} CTV on the "
                f"{SIDE_WORD[side]} side, which the note does not name"
            )
    return warnings


def removal_warnings(removed_cc: Mapping[str, float], min_cc: float) -> list[str]:
    """Postprocessing that removed more than ``min_cc`` (outside the body, islands)."""
    return [
        f"postprocessing removed {value:.1f} cc ({where.replace('_', ' ')})"
        for where, value in sorted(removed_cc.items())
        if value >= min_cc
    ]
