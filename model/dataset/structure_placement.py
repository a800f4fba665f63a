"""Placing a structure set's ROIs on the CT: per (structure, side), the union of its ROIs.

Each ROI is classified by the :class:`~model.dataset.structure_map.StructureMap` and the
targets (structures and the union ROI) are rasterised on the CT grid (voxel centres inside,
even-odd: inner contours are holes, keyhole contours fill as drawn;
:func:`~model.dicom.rtstruct.reader.rasterize`). Volumes are in cc. The side of an ROI is the
one its name carries, else the side of the body midline its voxels lie on (LPS +x is the
patient's left; an unnamed ROI with a good share on both sides, such as one ROI for both
breasts, is split at the midline: :func:`assign_sides`). The body is the CT above -400 HU,
largest component, holes filled slice by slice
(:func:`~model.imaging.postprocessing.body_mask`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from model.dataset.case_inventory import (
    CaseInventory,
    RoiFinding,
    StructureFinding,
    check_union,
    check_volumes,
)
from model.dataset.problems import CheckOptions, problem
from model.dataset.structure_map import RoiKind, StructureMap
from model.dicom.rtstruct.reader import StructureSet, rasterize
from model.dicom.series import CtSeries
from model.errors import LlmctvError
from model.imaging.geometry import Grid
from model.imaging.postprocessing import body_mask, left_of_midline, midline_x

BoolArray = npt.NDArray[np.bool_]


def _off_grid_contours(structures: StructureSet, name: str, grid: Grid) -> tuple[int, int]:
    """``(closed planar contours, those whose slice lies outside the grid)`` of ROI ``name``."""
    total = off = 0
    for roi in structures.rois:
        if roi.name != name:
            continue
        for contour in roi.contours:
            if contour.geometric_type != "CLOSED_PLANAR" or len(contour.points) < 3:
                continue
            total += 1
            k = float(np.mean(grid.lps_to_index(contour.points)[:, 0]))
            if not -0.5 <= k < grid.shape[0] - 0.5:
                off += 1
    return total, off


@dataclass
class _Group:
    mask: BoolArray
    rois: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)


def place_rois(
    structures: StructureSet,
    ct: CtSeries,
    smap: StructureMap,
    options: CheckOptions,
    case: CaseInventory,
) -> None:
    """Classify the ROIs, rasterise the targets, fill the case's structures and union."""
    grid = ct.volume.grid
    voxel_cc = float(np.prod(grid.spacing)) / 1000.0
    body = body_mask(ct.volume)
    full = tuple(slice(0, n) for n in grid.shape)
    left = left_of_midline(grid, midline_x(body, grid), full)
    counts = Counter(roi.name for roi in structures.rois)
    for name, n in counts.items():
        if n > 1:
            case.problems.append(
                problem("duplicate_roi_name", f"{n} ROIs named {name!r}", case.case_id, name)
            )
    groups: dict[tuple[str, str], _Group] = {}
    union = np.zeros(grid.shape, dtype=bool)
    union_rois: list[str] = []
    done: set[str] = set()
    for roi in structures.rois:
        if roi.name in done:
            continue
        done.add(roi.name)
        cls = smap.classify(roi.name)
        contours = sum(len(r.contours) for r in structures.rois if r.name == roi.name)
        finding = RoiFinding(
            roi.name, cls.kind.value, cls.structure, cls.side, roi.interpreted_type, contours
        )
        case.rois.append(finding)
        if cls.kind is RoiKind.UNMATCHED and (
            "ctv" in roi.name.lower() or roi.interpreted_type.upper() == "CTV"
        ):
            case.problems.append(
                problem(
                    "unmatched_target_roi",
                    f"ROI {roi.name!r} (type {roi.interpreted_type or 'empty'}) looks like a "
                    "CTV but matches no structure and is not ignored",
                    case.case_id,
                    roi.name,
                )
            )
        if cls.kind not in (RoiKind.STRUCTURE, RoiKind.UNION):
            continue
        if cls.also:
            case.problems.append(
                problem(
                    "ambiguous_roi",
                    f"ROI {roi.name!r} matches structures {[cls.structure, *cls.also]}",
                    case.case_id,
                    roi.name,
                )
            )
        mask = _rasterise(structures, roi.name, grid, ct.frame_of_reference_uid, case)
        if mask is None:
            continue
        voxels = int(np.count_nonzero(mask))
        finding.volume_cc = round(voxels * voxel_cc, 3)
        if voxels == 0:
            case.problems.append(
                problem("empty_roi", f"ROI {roi.name!r} has no voxels", case.case_id, roi.name)
            )
            continue
        left_voxels = int(np.count_nonzero(mask & left))
        finding.left_share = round(left_voxels / voxels, 4)
        if cls.kind is RoiKind.UNION:
            union |= mask
            union_rois.append(roi.name)
            continue
        if cls.structure is None:  # a structure match always names its structure
            continue
        for side, part, source in assign_sides(mask, left, left_voxels / voxels, cls.side, options):
            if source == "contradiction":
                other = 1.0 - finding.left_share if side == "L" else finding.left_share
                case.problems.append(
                    problem(
                        "side_name_contradicts_position",
                        f"ROI {roi.name!r} is named for side {side} but {other:.0%} of it "
                        "lies on the other side of the body midline",
                        case.case_id,
                        roi.name,
                    )
                )
                source = "name"
            group = groups.setdefault(
                (cls.structure, side), _Group(np.zeros(grid.shape, dtype=bool))
            )
            group.mask |= part
            group.rois.append(roi.name)
            group.sources.add(source)
    everything = np.zeros(grid.shape, dtype=bool)
    for (structure, side), group in sorted(groups.items(), key=lambda kv: _order(smap, kv[0])):
        voxels = int(np.count_nonzero(group.mask))
        outside = int(np.count_nonzero(group.mask & ~body))
        everything |= group.mask
        case.structures.append(
            StructureFinding(
                structure=structure,
                side=side,
                nodal=smap.is_nodal(structure),
                rois=group.rois,
                volume_cc=round(voxels * voxel_cc, 3),
                outside_body_fraction=round(outside / voxels, 4) if voxels else 0.0,
                side_from="+".join(sorted(group.sources)),
            )
        )
    case.target_cc = round(int(np.count_nonzero(everything)) * voxel_cc, 3)
    if union_rois:
        case.union = _union_summary(union, everything, union_rois, voxel_cc)
    check_volumes(case, options)
    check_union(case, options)


def _order(smap: StructureMap, key: tuple[str, str]) -> tuple[int, str]:
    names = smap.structure_names
    return (names.index(key[0]) if key[0] in names else len(names), key[1])


def _rasterise(
    structures: StructureSet, name: str, grid: Grid, frame: str, case: CaseInventory
) -> BoolArray | None:
    total, off = _off_grid_contours(structures, name, grid)
    if off and off < total:
        case.problems.append(
            problem(
                "contours_off_ct",
                f"{off} of {total} contours of ROI {name!r} lie outside the CT's slices",
                case.case_id,
                name,
            )
        )
    try:
        return rasterize(structures, name, grid, frame_of_reference_uid=frame)
    except LlmctvError as exc:
        case.problems.append(
            problem("contours_unreadable", f"[{exc.code}] {exc.detail}", case.case_id, name)
        )
        return None


def assign_sides(
    mask: BoolArray,
    left: BoolArray,
    left_share: float,
    named: str | None,
    options: CheckOptions,
) -> list[tuple[str, BoolArray, str]]:
    """``(side, voxels, source)`` parts of one ROI.

    A named ROI goes whole to its side (source ``"contradiction"`` when its voxels say the
    other side). An unnamed one goes to the side holding nearly all of it, or is split at the
    midline when both sides hold at least ``side_share``.
    """
    if named is not None:
        other = 1.0 - left_share if named == "L" else left_share
        return [(named, mask, "contradiction" if other > options.side_contradiction else "name")]
    if left_share >= 1.0 - options.side_share:
        return [("L", mask, "position")]
    if left_share <= options.side_share:
        return [("R", mask, "position")]
    return [("L", mask & left, "position"), ("R", mask & ~left, "position")]


def _union_summary(
    union: BoolArray, structures: BoolArray, rois: list[str], voxel_cc: float
) -> dict[str, Any]:
    u = int(np.count_nonzero(union))
    s = int(np.count_nonzero(structures))
    both = int(np.count_nonzero(union & structures))
    return {
        "rois": rois,
        "volume_cc": round(u * voxel_cc, 3),
        "structures_covered": round(both / s, 4) if s else None,
        "union_covered": round(both / u, 4) if u else None,
    }
