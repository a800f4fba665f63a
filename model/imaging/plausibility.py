"""Anatomical plausibility of a structure set: no breast in the liver, no node in the humerus.

Coordinates: structures are bool arrays ``(k, j, i)`` on the CT's
:class:`~model.imaging.geometry.Grid`; every rule is stated in DICOM patient LPS (mm) through
the grid's affine (``+x`` the patient's left, ``+z`` the head), so it holds for any storage.

Landmarks the CT shows, found on a coarse in-plane grid (about 4 mm, as the body mask):

* **lungs**: air (HU < -400) inside the body, in connected pieces of at least a quarter of the
  largest (bowel and stomach gas are smaller); their per-side extent in z (slices where that
  side's lung has at least 5 % of its largest area) and in x;
* **bone**: voxels above 300 HU in bright pieces of at least 0.05 cc and longer than 12 mm
  along some axis (ribs, clavicle, humeral head; a 2 mm surgical clip is neither, even
  spread over 2 x 2 x 2 voxels of 5 x 2.7 x 2.7 mm);
* **rib cage**: the lungs and the bone within 15 mm lateral of them (ribs, sternum, spine;
  not a humerus beside the chest), coarse;
* **skin depth**: 3-D distance (mm) to the air outside the body, on a grid of about 8 mm.

Rules (each removes the implausible voxels and reports them in cc, by reason):

=================== ===========================================================================
breast, chest wall  not inside a lung nor the lungs' convex hull on its slice (heart,
                    mediastinum, liver dome under the lung bases); not 10 mm or more inside
                    the rib cage's convex hull on its slice (behind the ribs: the pericardial
                    fat and upper abdomen in front of the lungs); not caudal to the lung
                    bases nor cranial to the apices of its side; at most
                    ``max_depth_mm`` below the skin (breast 100 mm, chest wall 50 mm)
nodes               not caudal to the lung bases of their side (nothing in the abdomen)
scf                 not lateral to the lung of its side (the humeral head is)
imn                 within 60 mm of the body midline
every structure     not inside bone
=================== ===========================================================================

Nodes are not held to the lungs: the phantom specification's axilla and SCF regions overlap
the lungs (about half of its SCF lies inside a lung), so a lung rule for nodes would contradict
the project's own ground truth; on the real LUNG1 CT they touch the clinical lung contours by
under 2 cc.

A CT without lungs (not a thoracic scan) cannot be checked: :attr:`PlausibilityReport.lungs_found`
is false and the job says so (needs attention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from model.imaging.geometry import (
    FloatArray,
    Grid,
    Volume,
    label_components,
    mask_box,
    mask_voxels,
)

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
#: Per (landmark, slice): a convex hull's edge equations, or ``None`` (no hull there).
Hulls = dict[tuple[str, int], "FloatArray | None"]
COARSE_MM = 4.0
#: In-plane resolution (mm) of the skin-depth map (its limits are 50 and 100 mm).
DEPTH_MM = 8.0
LUNG_HU = -400.0
BONE_HU = 300.0
#: Bright pieces smaller than this (cc) are surgical clips, not bone.
CLIP_CC = 0.05
#: Bright pieces no longer than this (mm) along every axis are clips, not bone: partial volume
#: spreads a 2 mm clip over up to 2 x 2 x 2 voxels (0.2-0.3 cc at 5 mm slices and a 256
#: matrix); a rib, a sternum or a clavicle is longer.
CLIP_EXTENT_MM = 12.0
#: Bone counts towards the rib cage up to this far (mm) lateral of its side's lungs (ribs lie
#: on the pleura; a humerus beside the chest, arms down, lies further out).
RIB_CAGE_REACH_MM = 15.0
#: A breast or chest-wall voxel at least this deep (mm) inside the rib cage's hull on its slice
#: lies behind the ribs (the hull's edge runs over the ribs' outer surface; a rib is about
#: 10 mm thick; phantom truth reaches under 8 mm into it).
RIB_CAGE_TOLERANCE_MM = 10.0
#: A lung piece is kept when at least this fraction of the largest air piece.
LUNG_PIECE_FRACTION = 0.25
#: A slice belongs to a side's lung extent when its lung area is at least this fraction of the max.
LUNG_SLICE_FRACTION = 0.05
MAX_DEPTH_MM = {"breast": 100.0, "chest_wall": 50.0}
IMN_MAX_FROM_MIDLINE_MM = 60.0
SUPERFICIAL = ("breast", "chest_wall")
NODES = ("axilla", "scf", "imn", "ctv")  # a single CTV holds nodes too


@dataclass
class PlausibilityReport:
    """What the rules removed, per (structure, side) and reason (cc); lungs found or not."""

    removed: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    lungs_found: bool = True
    #: Per kept (structure, side): slices on which it reaches the edge of the image (the
    #: field of view cuts the patient there; the structure may go on outside the image).
    fov_edge_slices: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, key: tuple[str, str], reason: str, voxels: int, voxel_cc: float) -> None:
        """Record ``voxels`` removed from ``key`` for ``reason``."""
        if voxels:
            reasons = self.removed.setdefault(key, {})
            reasons[reason] = round(reasons.get(reason, 0.0) + voxels * voxel_cc, 2)

    @property
    def removed_cc(self) -> dict[str, float]:
        """cc per ``"<structure> <side>: <reason>"`` (for warnings and the job's record)."""
        return {
            f"{name} {side}: {reason}": cc
            for (name, side), reasons in sorted(self.removed.items())
            for reason, cc in reasons.items()
        }

    def removed_of(self, key: tuple[str, str]) -> float:
        """cc removed from one (structure, side)."""
        return round(sum(self.removed.get(key, {}).values()), 2)

    @classmethod
    def of_sides(
        cls, reports: list[PlausibilityReport], sides: tuple[str, ...]
    ) -> PlausibilityReport:
        """Per-side passes: pass ``n`` contributes what it removed from side ``sides[n]``."""
        merged = cls(lungs_found=all(r.lungs_found for r in reports))
        for report, side in zip(reports, sides, strict=True):
            merged.removed.update({k: dict(v) for k, v in report.removed.items() if k[1] == side})
            merged.fov_edge_slices.update(
                {k: n for k, n in report.fov_edge_slices.items() if k[1] == side}
            )
        return merged


def plausibility_of_sides(
    reports: list[PlausibilityReport | None], sides: tuple[str, ...]
) -> PlausibilityReport | None:
    """:meth:`PlausibilityReport.of_sides` of per-side passes; ``None`` if any pass has none."""
    found = [r for r in reports if r is not None]
    return PlausibilityReport.of_sides(found, sides) if len(found) == len(reports) else None


@dataclass(frozen=True)
class Landmarks:
    """Coarse landmarks of one CT (arrays on ``[:, ::step, ::step]`` of the CT grid)."""

    step: int
    lung: BoolArray
    depth_k_step: int  # the depth map is on [::depth_k_step, ::depth_step, ::depth_step]
    depth_step: int
    depth_mm: npt.NDArray[np.float32]
    slice_z: npt.NDArray[np.float64]  # LPS z (mm) of each slice k
    z_range: dict[str, tuple[float, float]]  # side -> (lowest, highest) lung slice z
    lung_x: dict[str, float]  # side -> the lung's largest |x - midline| (mm)
    rib_cage: BoolArray  # lungs and the bone around them (ribs, sternum, spine)
    pixel_mm: float  # in-plane size (mm) of a coarse pixel

    @property
    def found(self) -> bool:
        """Whether the CT shows lungs (a thoracic scan)."""
        return bool(self.z_range)


def find_landmarks(volume: Volume, body: BoolArray, mid_x: float) -> Landmarks:
    """Lungs and skin depth of ``volume`` (HU on its LPS grid), coarse in-plane."""
    grid = volume.grid
    pixel = float(min(grid.spacing[1:]))
    step = max(1, int(COARSE_MM // pixel))
    hu = volume.array[:, ::step, ::step]
    inside = body[:, ::step, ::step]
    lung = _lungs(inside & (hu < LUNG_HU))
    depth_step = max(step, int(DEPTH_MM // pixel))
    k_step = max(1, int(DEPTH_MM // grid.spacing[0]))
    shallow = body[::k_step, ::depth_step, ::depth_step]
    depth_spacing = (
        grid.spacing[0] * k_step,
        grid.spacing[1] * depth_step,
        grid.spacing[2] * depth_step,
    )
    depth = ndimage.distance_transform_edt(shallow, sampling=depth_spacing).astype(np.float32)
    slice_index = np.zeros((grid.shape[0], 3), dtype=np.float64)
    slice_index[:, 0] = np.arange(grid.shape[0])
    slice_z = grid.index_to_lps(slice_index)[:, 2]
    x = _column_x(grid, step, hu.shape)
    z_range: dict[str, tuple[float, float]] = {}
    lung_x: dict[str, float] = {}
    for side, on_side in (("L", x > mid_x), ("R", x <= mid_x)):
        side_lung = lung & on_side[None, :, :]
        area = side_lung.sum(axis=(1, 2))
        if area.max() == 0:
            continue
        ks = np.flatnonzero(area >= LUNG_SLICE_FRACTION * area.max())
        z_range[side] = (float(slice_z[ks].min()), float(slice_z[ks].max()))
        lung_x[side] = float(np.abs(x[side_lung.any(axis=0)] - mid_x).max())
    coarse = (grid.spacing[0], grid.spacing[1] * step, grid.spacing[2] * step)
    bone = bone_pieces((hu > BONE_HU) & inside, coarse)
    reach = np.where(
        x > mid_x,
        lung_x.get("L", -np.inf) + RIB_CAGE_REACH_MM,
        lung_x.get("R", -np.inf) + RIB_CAGE_REACH_MM,
    )
    rib_cage = lung | (bone & (np.abs(x - mid_x) <= reach)[None, :, :])
    return Landmarks(
        step,
        lung,
        k_step,
        depth_step,
        depth,
        slice_z,
        z_range,
        lung_x,
        rib_cage,
        float(min(coarse[1:])),
    )


def _column_x(grid: Grid, step: int, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """LPS x (mm) of each coarse in-plane pixel ``(j, i)`` (axial series: x varies in-plane)."""
    j, i = np.meshgrid(np.arange(shape[1]) * step, np.arange(shape[2]) * step, indexing="ij")
    index = np.column_stack([np.zeros(j.size), j.ravel(), i.ravel()]).astype(np.float64)
    return grid.index_to_lps(index)[:, 0].reshape(j.shape)


def _lungs(air: BoolArray) -> BoolArray:
    labels, count = label_components(air, 6)
    if count == 0:
        return air
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= LUNG_PIECE_FRACTION * sizes.max()  # by label (never 0: its size is 0)
    lungs: BoolArray = keep[labels]
    return lungs


def check_structures(
    volume: Volume,
    structures: dict[tuple[str, str], BoolArray],
    marks: Landmarks,
    mid_x: float,
    min_cc: float = 0.5,
    boxes: dict[tuple[str, str], tuple[slice, ...]] | None = None,
) -> tuple[dict[tuple[str, str], BoolArray], PlausibilityReport]:
    """Remove the implausible voxels of each (structure, side); report them in cc.

    A structure with less than ``min_cc`` left is dropped (its remnant reported too).
    ``structures`` is not modified. ``boxes`` may give an index box around each mask
    (:class:`~model.imaging.postprocessing.CleanedPrediction`): only that box is read.
    """
    grid = volume.grid
    voxel_cc = float(np.prod(grid.spacing)) / 1000.0
    report = PlausibilityReport(lungs_found=marks.found)
    kept: dict[tuple[str, str], BoolArray] = {}
    hulls: Hulls = {}  # per slice, shared by the structures
    for key, mask in structures.items():
        box = (boxes or {}).get(key) or mask_box(mask)
        if box is None:
            continue
        points = _points(mask, box)
        if not len(points):  # an empty mask under a stale box: nothing to judge or keep
            continue
        bad = _implausible(key, points, volume, marks, mid_x, report, voxel_cc, hulls)
        if not bad.any():
            kept[key] = mask
            _note_fov_edge(report, key, points, grid.shape)
            continue
        cleaned = np.zeros(mask.shape, dtype=bool)  # the mask, copied in its box only
        cleaned[box] = mask[box]
        cleaned[tuple(points[bad].T)] = False
        left = int(len(points) - bad.sum())
        if left * voxel_cc >= min_cc:
            kept[key] = cleaned
            _note_fov_edge(report, key, points[~bad], grid.shape)
        elif left:
            report.add(key, "a remnant too small to keep", left, voxel_cc)
    return kept, report


def _note_fov_edge(
    report: PlausibilityReport, key: tuple[str, str], points: IntArray, shape: tuple[int, ...]
) -> None:
    """Record the slices on which the kept ``points`` touch the image's in-plane border."""
    j, i = points[:, 1], points[:, 2]
    edge = (j == 0) | (j == shape[1] - 1) | (i == 0) | (i == shape[2] - 1)
    if edge.any():
        report.fov_edge_slices[key] = len(np.unique(points[edge, 0]))


def _points(mask: BoolArray, box: tuple[slice, ...]) -> IntArray:
    """``np.argwhere(mask)`` (voxel indices ``(k, j, i)``, in that order), searched only in
    the mask's bounding ``box`` (masks are small)."""
    points: IntArray = mask_voxels(mask, box)
    return points


def _implausible(
    key: tuple[str, str],
    points: IntArray,
    volume: Volume,
    marks: Landmarks,
    mid_x: float,
    report: PlausibilityReport,
    voxel_cc: float,
    hulls: Hulls,
) -> BoolArray:
    """Which of ``points`` (``(n, 3)`` voxel indices of structure ``key``) break a rule.

    ``hulls`` keeps the hulls of each slice once found (for the next structures).
    """
    name, side = key
    k, jc, ic = points[:, 0], points[:, 1] // marks.step, points[:, 2] // marks.step
    x = volume.grid.lps_coordinate(points, 0)
    z = volume.grid.lps_coordinate(points, 2)
    bad = np.zeros(len(points), dtype=bool)

    def rule(reason: str, hit: BoolArray) -> None:
        new = hit & ~bad
        report.add(key, reason, int(new.sum()), voxel_cc)
        bad[:] |= hit

    rule("inside bone", _in_bone(points, volume))
    lung_z = marks.z_range.get(side)
    if name in SUPERFICIAL:
        rule("inside a lung", marks.lung[k, jc, ic])
        rule("inside the thorax (between or under the lungs)", _in_lung_hull(points, marks, hulls))
        rule("behind the ribs (inside the rib cage)", _in_rib_cage(points, marks, hulls))
        if lung_z is not None:
            rule("below the lung bases (abdomen)", z < lung_z[0])
            rule("above the lung apices", z > lung_z[1])
        limit = MAX_DEPTH_MM.get(name)
        if limit is not None:
            d = marks.depth_step
            depth = marks.depth_mm[k // marks.depth_k_step, points[:, 1] // d, points[:, 2] // d]
            rule(f"deeper than {limit:g} mm below the skin", depth > limit)
    elif name in NODES:
        if lung_z is not None:
            rule("below the lung bases (abdomen)", z < lung_z[0])
        if name == "scf" and side in marks.lung_x:
            rule("lateral to the lung (shoulder)", np.abs(x - mid_x) > marks.lung_x[side])
        if name == "imn":
            far = np.abs(x - mid_x) > IMN_MAX_FROM_MIDLINE_MM
            rule(f"over {IMN_MAX_FROM_MIDLINE_MM:g} mm from the midline", far)
    return bad


def _in_bone(points: IntArray, volume: Volume) -> BoolArray:
    """Points on bone: HU above :data:`BONE_HU` in a piece of bone (:func:`bone_pieces`; a
    surgical clip stays in the CTV)."""
    bright: BoolArray = np.asarray(volume.array[tuple(points.T)] > BONE_HU)
    if not bright.any():
        return bright
    # The bright pieces, labelled in the bright points' own box (a bone is a few percent of
    # a CTV's box); their sizes from those points.
    on_bright = points[bright]
    low = on_bright.min(axis=0)
    shape = tuple(int(v) for v in on_bright.max(axis=0) - low + 1)
    grid = np.zeros(shape, dtype=bool)
    local = tuple((on_bright - low).T)
    grid[local] = True
    bone = np.zeros(len(points), dtype=bool)
    bone[np.flatnonzero(bright)] = bone_pieces(grid, volume.grid.spacing)[local]
    return bone


def bone_pieces(bright: BoolArray, spacing: tuple[float, ...]) -> BoolArray:
    """The voxels of ``bright`` (``(k, j, i)`` with voxel size ``spacing`` mm; HU above
    :data:`BONE_HU`) in 26-connected pieces of bone: at least :data:`CLIP_CC` and longer than
    :data:`CLIP_EXTENT_MM` along some axis. A surgical clip is neither."""
    labels, count = label_components(bright, 26)
    voxel_cc = float(np.prod(spacing)) / 1000.0
    big = np.bincount(labels.ravel(), minlength=count + 1) * voxel_cc >= CLIP_CC
    big[0] = False  # outside every piece
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if big[index] and where is not None:
            length = max((s.stop - s.start) * mm for s, mm in zip(where, spacing, strict=True))
            big[index] = length > CLIP_EXTENT_MM
    found: BoolArray = big[labels]
    return found


def _in_lung_hull(points: IntArray, marks: Landmarks, hulls: Hulls | None = None) -> BoolArray:
    """Whether each point lies inside the convex hull of both lungs on its slice (coarse),
    by half a coarse pixel.

    ``hulls`` caches each slice's hull equations (``None``: no hull on that slice).
    """
    return _in_hull(points, marks.step, marks.lung, 0.5, "lung", hulls)


def _in_rib_cage(points: IntArray, marks: Landmarks, hulls: Hulls | None = None) -> BoolArray:
    """Whether each point lies :data:`RIB_CAGE_TOLERANCE_MM` or more inside the convex hull
    of the rib cage (lungs, ribs, sternum, spine) on its slice: behind the ribs."""
    inset = RIB_CAGE_TOLERANCE_MM / marks.pixel_mm
    return _in_hull(points, marks.step, marks.rib_cage, inset, "rib cage", hulls)


def _in_hull(
    points: IntArray,
    step: int,
    coarse: BoolArray,
    inset: float,
    name: str,
    hulls: Hulls | None,
) -> BoolArray:
    """Whether each point lies at least ``inset`` coarse pixels inside the convex hull of
    ``coarse[k]`` (``(k, j, i)`` on ``[:, ::step, ::step]``) on its slice ``k``;
    ``hulls[(name, k)]`` caches the hull's equations."""
    hulls = {} if hulls is None else hulls
    inside = np.zeros(len(points), dtype=bool)
    flat = np.column_stack([points[:, 1] / step, points[:, 2] / step])
    ks = points[:, 0]
    # Runs of points on one slice (argwhere order: one run per slice).
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    for start, stop in zip(starts, [*starts[1:], len(ks)], strict=True):
        k = int(ks[start])
        if (name, k) not in hulls:
            hulls[(name, k)] = _hull(coarse[k])
        eq = hulls[(name, k)]
        if eq is None:
            continue
        dist = flat[start:stop] @ eq[:, :2].T + eq[:, 2]
        inside[start:stop] = (dist <= -inset).all(axis=1)  # inside every edge by the inset
    return inside


def _hull(pixels_of: BoolArray) -> FloatArray | None:
    """Equations of the convex hull of one slice's pixels ``(j, i)``, or ``None``.

    Only each row's first and last pixel can be a vertex: the hull of those is the hull of
    all (a few hundred points instead of thousands).
    """
    rows = np.flatnonzero(pixels_of.any(axis=1))
    if not len(rows):
        return None
    part = pixels_of[rows]
    first = np.argmax(part, axis=1)
    last = part.shape[1] - 1 - np.argmax(part[:, ::-1], axis=1)
    pixels = np.unique(
        np.concatenate([np.column_stack([rows, first]), np.column_stack([rows, last])]), axis=0
    )
    if len(pixels) < 3:
        return None
    try:
        hull = ConvexHull(pixels.astype(np.float64))
    except QhullError:
        return None
    equations: FloatArray = hull.equations
    return equations
