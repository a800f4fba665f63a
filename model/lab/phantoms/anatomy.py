"""Phantom anatomy on a voxel grid: chest surface maps, breast footprints, body mask.

Coordinates: DICOM LPS millimetres; arrays ``(k, j, i)`` = (slice, row, column) on an axial
grid (``ImageOrientationPatient = [1,0,0,0,1,0]``). The chest is an elliptic cylinder along
``z``, so its surface maps are 2-D ``(j, i)`` arrays shared by every slice:

* ``depth``: signed distance (mm) to the chest ellipse, positive inside;
* ``arc``: signed arc length (mm) along the ellipse, from the anterior midline to the
  nearest surface point, positive toward the patient's left (+x).

A breast is a half-ellipsoid mound over a footprint in (arc, z), grown along the surface
normal, so it follows the curved chest and never crosses the midline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from model.imaging.geometry import Grid
from model.lab.phantoms.params import SIDE_SIGN, BodyParams, BreastParams, PhantomParams
from model.lab.phantoms.shapes import AxialCoords, BoolArray, Box, F32Array, F64Array, box_of_mask2d
from model.text.clinical import Side, Surgery

MATRIX_AT_SCALE_1 = 512
_SURFACE_STEP_MM = 0.25
_MASTECTOMY_TAPER = 0.25
_FAR_MM = 150.0


def matrix_size(scale: float) -> int:
    """In-plane matrix (rows = columns) for a ``scale`` of the 512 matrix (at least 16)."""
    return max(16, round(MATRIX_AT_SCALE_1 * scale))


def make_grid(params: PhantomParams, scale: float) -> Grid:
    """The CT grid: field of view 512 x pixel spacing centred on LPS (0, 0), axial slices.

    The in-plane spacing grows by 512/matrix so the field of view in mm does not depend on
    ``scale``; the slices run from ``scan_bottom`` upward at the slice thickness.
    """
    n = matrix_size(scale)
    spacing = round(params.scanner.pixel_spacing * MATRIX_AT_SCALE_1 / n, 6)
    dz = params.scanner.slice_thickness
    nk = math.floor((params.scan_top - params.scan_bottom) / dz + 1e-6) + 1
    first = round(-(n - 1) * spacing / 2.0, 4)
    return Grid(
        shape=(nk, n, n),
        origin=(first, first, round(params.scan_bottom, 2)),
        spacing=(dz, spacing, spacing),
    )


@dataclass(frozen=True)
class ChestSurface:
    """The chest ellipse and its 2-D ``(j, i)`` maps (see module docstring).

    ``t_table``/``arc_table`` tabulate the parametrisation ``P(t) = (cx + a sin t,
    cy - b cos t)`` (LPS x, y) against signed arc length.
    """

    body: BodyParams
    t_table: F64Array
    arc_table: F64Array
    depth: F32Array
    arc: F32Array

    def arc_at_x(self, offset: float) -> float:
        """Signed arc length of the anterior surface point at ``x = cx + offset``."""
        t = math.asin(max(-1.0, min(1.0, offset / self.body.a)))
        return float(np.interp(t, self.t_table, self.arc_table))

    def point_at(self, arc: float, depth: float) -> tuple[float, float]:
        """LPS ``(x, y)`` at ``depth`` mm inside (negative: outside) surface point ``arc``."""
        t = float(np.interp(arc, self.arc_table, self.t_table))
        a, b = self.body.a, self.body.b
        nx, ny = math.sin(t) / a, -math.cos(t) / b
        norm = math.hypot(nx, ny)
        x = self.body.cx + a * math.sin(t) - depth * nx / norm
        y = self.body.cy - b * math.cos(t) - depth * ny / norm
        return x, y


def chest_surface(body: BodyParams, coords: AxialCoords) -> ChestSurface:
    """Tabulate the chest ellipse and map depth and arc over the ``(j, i)`` plane.

    Distances are exact to about ``_SURFACE_STEP_MM``: each pixel centre is matched to the
    nearest of densely sampled surface points. Pixels farther than ``_FAR_MM`` from the
    surface get a depth of +/- ``_FAR_MM`` and an arc of 0 (no structure reaches them).
    """
    a, b = body.a, body.b
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    n = 2 * math.ceil(perimeter / _SURFACE_STEP_MM / 2)
    t = np.linspace(-math.pi, math.pi, n, endpoint=False)
    speed = np.hypot(a * np.cos(t), b * np.sin(t))
    arc = np.concatenate(([0.0], np.cumsum((speed[1:] + speed[:-1]) / 2.0 * np.diff(t))))
    arc -= arc[n // 2]
    surface = np.stack((a * np.sin(t), -b * np.cos(t)), axis=1)
    u = coords.x - body.cx
    v = coords.y - body.cy
    uu, vv = np.meshgrid(u, v)
    points = np.stack((uu.ravel(), vv.ravel()), axis=1)
    dist, nearest = cKDTree(surface).query(points, distance_upper_bound=_FAR_MM)
    dist = np.minimum(dist, _FAR_MM)
    inside = ((uu / a) ** 2 + (vv / b) ** 2 <= 1.0).ravel()
    depth = np.where(inside, dist, -dist).reshape(uu.shape).astype(np.float32)
    arc_map = np.append(arc, 0.0)[nearest].reshape(uu.shape).astype(np.float32)
    return ChestSurface(body=body, t_table=t, arc_table=arc, depth=depth, arc=arc_map)


@dataclass(frozen=True)
class Footprint:
    """A breast's footprint in a box: ``rho2`` = normalised (arc, z) radius squared.

    ``depth`` and ``arc`` are the chest maps cut to the box's ``(j, i)`` rectangle.
    """

    box: Box
    rho2: F32Array
    depth: F32Array
    arc: F32Array


def footprint(breast: BreastParams, surface: ChestSurface, coords: AxialCoords) -> Footprint:
    """The footprint of ``breast`` over the box that can hold its mound and chest wall."""
    body = surface.body
    centre = SIDE_SIGN[breast.side] * surface.arc_at_x(breast.centre_frac * body.a)
    near = (np.abs(surface.arc - centre) <= breast.radius) & (
        (surface.depth >= -breast.projection - 1.0) & (surface.depth <= body.wall + 1.0)
    )
    k0 = int(np.searchsorted(coords.z, breast.bottom, side="left"))
    k1 = int(np.searchsorted(coords.z, breast.top, side="right"))
    box = box_of_mask2d(near, (k0, max(k0, k1)))
    depth = surface.depth[box.j0 : box.j1, box.i0 : box.i1]
    arc = surface.arc[box.j0 : box.j1, box.i0 : box.i1]
    ta = ((arc - centre) / breast.radius) ** 2
    tz = ((coords.z[box.k0 : box.k1] - breast.z_centre) / (breast.length / 2.0)) ** 2
    rho2 = (ta[None, :, :] + tz[:, None, None].astype(np.float32)).astype(np.float32)
    return Footprint(box=box, rho2=rho2, depth=depth, arc=arc)


def breast_local(fp: Footprint, breast: BreastParams, fat: float) -> BoolArray:
    """The breast in its footprint box: from the front of the pectoralis out to the mound."""
    inside = fp.rho2 <= 1.0
    height = breast.projection * np.sqrt(np.clip(1.0 - fp.rho2, 0.0, None))
    region: npt.NDArray[np.bool_] = inside & (fp.depth < fat)[None] & (fp.depth[None] >= -height)
    return region


def mastectomy_removed_local(fp: Footprint, fat: float, flap: float) -> BoolArray:
    """Subcutaneous tissue a mastectomy removed: all but a ``flap`` over the pectoralis.

    Full removal inside the footprint, tapering to none at its edge.
    """
    rho = np.sqrt(fp.rho2)
    taper = np.clip((1.0 - rho) / _MASTECTOMY_TAPER, 0.0, 1.0)
    removed_depth = max(0.0, fat - flap) * taper
    return (fp.depth >= 0)[None] & (fp.depth[None] < removed_depth)


@dataclass
class Anatomy:
    """The geometry of one phantom on its grid (LPS mm; arrays ``(k, j, i)``).

    Attributes
    ----------
    params, grid, coords, surface
        Parameters, grid, voxel coordinates and chest maps.
    surgeries
        Surgery per treated side (untreated sides are absent).
    footprints
        Footprint of each side's breast, whether or not the breast is present.
    breasts
        Full-size mask of each side's breast region (the mastectomy side's is where the
        breast was: it is not part of the body).
    body
        Everything inside the skin.
    """

    params: PhantomParams
    grid: Grid
    coords: AxialCoords
    surface: ChestSurface
    surgeries: dict[Side, Surgery]
    footprints: dict[Side, Footprint]
    breasts: dict[Side, BoolArray]
    body: BoolArray
    cache: dict[str, object] = field(default_factory=dict)

    def breast_present(self, side: Side) -> bool:
        """Whether ``side`` still has its breast (no total mastectomy there)."""
        return self.surgeries.get(side) is not Surgery.TOTAL_MASTECTOMY

    def present_breasts(self) -> dict[Side, BoolArray]:
        """Masks of the breasts present on the CT."""
        return {s: m for s, m in self.breasts.items() if self.breast_present(s)}

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nk, nj, ni)``."""
        return self.coords.shape


def build_anatomy(params: PhantomParams, grid: Grid, surgeries: Mapping[Side, Surgery]) -> Anatomy:
    """Lay the phantom out on ``grid`` for the given surgeries per treated side."""
    coords = AxialCoords.from_grid(grid)
    surface = chest_surface(params.body, coords)
    shape = coords.shape
    body = np.broadcast_to((surface.depth >= 0)[None], shape).copy()
    footprints: dict[Side, Footprint] = {}
    breasts: dict[Side, BoolArray] = {}
    for side, breast in params.breasts.items():
        fp = footprint(breast, surface, coords)
        footprints[side] = fp
        local = breast_local(fp, breast, params.body.fat)
        breasts[side] = fp.box.to_full(local, shape)
        if surgeries.get(side) is Surgery.TOTAL_MASTECTOMY:
            removed = mastectomy_removed_local(fp, params.body.fat, params.surgical[side].flap)
            body[fp.box.index] &= ~removed
        else:
            body[fp.box.index] |= local
    return Anatomy(
        params=params,
        grid=grid,
        coords=coords,
        surface=surface,
        surgeries=dict(surgeries),
        footprints=footprints,
        breasts=breasts,
        body=body,
    )
