"""Slice-by-slice anatomy: tissue labels, body mask and the raw target regions.

Everything is computed in one axial slice at a time on the (j, i) = (row, column) plane of the
CT grid; positions are LPS mm relative to the body centre (``xr`` toward the patient's left,
``yr`` posterior) and the slice's absolute LPS z. Radial quantities (skin outline, fat, rib
cage, arc length along the skin) are tabulated over ``shapes.THETA`` per slice and interpolated
per pixel. The skin distance (3-D) and everything that needs it is done in ``render``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .bones import girdle, rib_layer, spine
from .params import (
    SIDE_SIGN,
    BodyParams,
    BreastParams,
    NodeParams,
    OrganParams,
    Scanner,
    SurgeryParams,
)
from .shapes import (
    THETA,
    BoolArray,
    FloatArray,
    Grid,
    arc_length,
    ellipse_value,
    outline_radius,
    rotation_columns,
    segment_distance,
    smoothstep,
)
from .tissue import Tissue

__all__ = ["Anatomy", "SliceOut", "Tables", "Tissue", "footprint_rho"]

Point = tuple[float, float, float]
Ellipsoid = tuple[float, float, float, tuple[float, float, float]]


@dataclass(frozen=True)
class Tables:
    """Per-slice radial tables over ``THETA`` (mm from the body centre)."""

    r_body: FloatArray  # skin outline of the chest (no breast, no mastectomy depression)
    r_base: FloatArray  # same without the shoulders' widening
    fat: FloatArray  # subcutaneous fat thickness
    front: FloatArray  # anterior (outer) surface of the rib layer
    inner: FloatArray  # inner surface of the rib layer
    arc: FloatArray  # arc length along the skin outline, zero anterior


@dataclass
class SliceOut:
    """One slice of labels, body and raw (uncropped) target regions keyed by side."""

    labels: npt.NDArray[np.uint8]
    body: BoolArray
    regions: dict[tuple[str, str], BoolArray]


def footprint_rho(bp: BreastParams, u_lat: FloatArray, v: FloatArray) -> FloatArray:
    """Normalised radius in a breast footprint (< 1 inside); ``u_lat`` = lateral arc / radius,
    ``v`` = (z - zc) / (L/2). The cranial half is shifted laterally (axillary tail)."""
    un = u_lat - bp.tail * np.maximum(v, 0.0) ** 2
    return np.asarray((np.abs(un) ** bp.e + np.abs(v) ** bp.e) ** (1.0 / bp.e), dtype=np.float64)


class Anatomy:
    """Builds label slices for one case. Coordinates: LPS mm, slices indexed by k (z up)."""

    def __init__(
        self,
        grid: Grid,
        scanner: Scanner,
        body: BodyParams,
        breasts: dict[str, BreastParams],
        surgery: dict[str, SurgeryParams],
        nodes: dict[str, NodeParams],
        organs: OrganParams,
        gland: Callable[[int], FloatArray],
    ) -> None:
        self.grid, self.body, self.breasts = grid, body, breasts
        self.surgery, self.nodes, self.organs, self.gland = surgery, nodes, organs, gland
        _, nj, ni = grid.shape
        bcx = scanner.fov_centre[0] + body.cx
        bcy = scanner.fov_centre[1] + body.cy
        self.xr = np.broadcast_to(grid.xs()[None, :] - bcx, (nj, ni)).copy()
        self.yr = np.broadcast_to(grid.ys()[:, None] - bcy, (nj, ni)).copy()
        self.x_fov = self.xr + body.cx
        theta = np.arctan2(self.xr, -self.yr)
        self.rad = np.hypot(self.xr, self.yr)
        pos = (theta + np.pi) / (2 * np.pi) * (len(THETA) - 1)
        self._i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(THETA) - 2)
        self._w = pos - self._i0
        self.abs_theta = np.abs(theta)
        self.pole = next(iter(breasts.values())).pole * body.b
        self.phi = np.arctan2(self.xr, self.pole - self.yr)
        self.pole_dist = np.hypot(self.xr, self.pole - self.yr)
        self.top = max(b.top for b in breasts.values())
        self.bottom = min(b.bottom for b in breasts.values())
        self.z_hi = float(grid.zs()[-1])
        self.yv = body.b_post - organs.vb_depth  # vertebral-body centre (relative y)
        self.heart_rows = rotation_columns(organs.heart_angle, organs.heart_tilt)
        backs = [float(np.max(-self.tables(z).r_body * np.cos(THETA))) for z in grid.zs()[::3]]
        self.couch_top = max(backs) + organs.couch_gap
        self.seromas, self.clips = self._surgery_geometry()

    # --- radial tables -------------------------------------------------------------------
    def tables(self, z: float) -> Tables:
        """Outline, fat, rib-cage surfaces and arc length of slice z."""
        b = self.body
        up = smoothstep(z, 0.5 * (self.top + self.bottom), self.z_hi)
        down = smoothstep(z, self.bottom, self.bottom - 60)
        b_ant = b.b_ant * (1 - b.taper_top * up + b.belly * down)
        b_post = b.b_post  # the back lies flat on the table along z
        pert = np.ones_like(THETA)
        for n, (amp, phase, drift) in enumerate(b.harmonics, start=2):
            pert += amp * np.cos(n * THETA + phase + drift * (z - self.top))
        pert -= (b.groove_depth / b_ant) * np.exp(-((THETA / b.groove_width) ** 2))
        a_z = b.a * (1 + b.shoulder * smoothstep(z, self.top - 10, self.top + 60))
        r_body = outline_radius(THETA, a_z, b_ant, b_post, b.p_ant, b.p_post) * pert
        r_base = outline_radius(THETA, b.a, b_ant, b_post, b.p_ant, b.p_post) * pert
        fat = np.clip(b.fat * (1 + b.fat_var * np.cos(2 * THETA + b.fat_phase)), 8.0, 25.0)
        knots = [0.0, 0.10, 0.24, 1.35, 1.75, 2.3, 2.75, np.pi]
        values = [b.m_sternal, b.m_sternal, b.m_pec, b.m_pec, b.m_lat]
        values += [0.4 * b.m_post, 0.7 * b.m_post, b.m_post]
        muscle = np.interp(np.abs(THETA), knots, values)
        taper = b.apex_taper * smoothstep(z, 0.5 * (self.top + self.bottom) - 30, self.z_hi)
        front = (r_base - fat - muscle) * (1 - taper)
        return Tables(r_body, r_base, fat, front, front - b.rib_ring, arc_length(THETA, r_body))

    def px(self, table: FloatArray) -> FloatArray:
        """A radial table evaluated at every pixel of the slice."""
        return np.asarray(table[self._i0] * (1 - self._w) + table[self._i0 + 1] * self._w)

    def mound_frame(self, tab: Tables) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Per pixel: distance beyond the skin along the ray from the pole (behind the body),
        the skin arc length where that ray leaves the chest, and whether a ray applies."""
        x = tab.r_body * np.sin(THETA)
        y = -tab.r_body * np.cos(THETA)
        phi = np.arctan2(x, self.pole - y)
        mid = len(THETA) // 2
        lo = mid - int(np.argmax(np.diff(phi[mid::-1]) >= 0) or mid)
        hi = mid + int(np.argmax(np.diff(phi[mid:]) <= 0) or (len(THETA) - 1 - mid))
        phi_s, dist_s, th_s = (
            phi[lo : hi + 1],
            np.hypot(x, self.pole - y)[lo : hi + 1],
            THETA[lo : hi + 1],
        )
        ok = (self.phi > phi_s[0]) & (self.phi < phi_s[-1])
        t = self.pole_dist - np.interp(self.phi, phi_s, dist_s)
        arc = np.interp(np.interp(self.phi, phi_s, th_s), THETA, tab.arc)
        return np.where(ok, t, -1.0), arc, ok

    @staticmethod
    def centre_theta(tab: Tables, xc: float) -> float:
        """Angle of the anterior skin point whose x (from the body centre) is ``xc``."""
        sel = (
            (THETA >= 0) & (np.pi / 2 >= THETA) if xc > 0 else (-np.pi / 2 <= THETA) & (THETA <= 0)
        )
        return float(np.interp(xc, tab.r_body[sel] * np.sin(THETA[sel]), THETA[sel]))

    @staticmethod
    def inner_y(tab: Tables, x: float) -> float:
        """Relative y of the inner surface of the anterior chest wall at relative x."""
        sel = np.abs(THETA) <= np.pi / 2
        xs = tab.inner[sel] * np.sin(THETA[sel])
        return float(np.interp(x, xs, -tab.inner[sel] * np.cos(THETA[sel])))

    # --- surgery ---------------------------------------------------------------------------
    def _surgery_geometry(self) -> tuple[list[Ellipsoid], list[Point]]:
        """LPS-relative seroma ellipsoids and clip centres of the treated sides."""
        seromas: list[Ellipsoid] = []
        clips: list[Point] = []
        for side, sp in self.surgery.items():
            bp = self.breasts[side]
            if sp.mastectomy:
                for u, v, depth in sp.clips:
                    z = bp.zc + v * bp.length / 2
                    tab = self.tables(z)
                    th = self._theta_at(tab, bp, u)
                    r = float(np.interp(th, THETA, tab.r_body - tab.fat)) + sp.flap - depth
                    clips.append((r * np.sin(th), -r * np.cos(th), z))
                continue
            u, v = sp.seroma_uv
            z = bp.zc + v * bp.length / 2
            tab = self.tables(z)
            th = self._theta_at(tab, bp, u)
            rho = float(footprint_rho(bp, np.array([u]), np.array([v]))[0])
            height = bp.projection * (1 - min(rho, 1.0) ** 2) ** bp.q
            r = float(np.interp(th, THETA, tab.r_body)) + sp.seroma_depth * height - 4.0
            x, y = r * np.sin(th), -r * np.cos(th)
            ax = sp.seroma_axes
            seromas.append((x, y, z, ax))
            for d in sp.clips:
                clips.append((x + ax[0] * d[0], y + ax[1] * d[1], z + ax[2] * d[2]))
        return seromas, clips

    def _theta_at(self, tab: Tables, bp: BreastParams, u: float) -> float:
        s_c = float(np.interp(self.centre_theta(tab, bp.xc), THETA, tab.arc))
        return float(np.interp(s_c + SIDE_SIGN[bp.side] * u * bp.radius, tab.arc, THETA))

    # --- one slice -----------------------------------------------------------------------
    def slice(self, k: int) -> SliceOut:
        """Labels, body and raw target regions of slice k."""
        z = float(self.grid.zs()[k])
        tab = self.tables(z)
        rb, fat, rad = self.px(tab.r_body), self.px(tab.fat), self.rad
        front, inner, arc = self.px(tab.front), self.px(tab.inner), self.px(tab.arc)
        t = rad - rb
        t_ray, arc_ray, _ = self.mound_frame(tab)
        r_skin = rb.copy()
        mound_any = np.zeros(rad.shape, bool)
        regions: dict[tuple[str, str], BoolArray] = {}
        gland_bias = np.full(rad.shape, -9.0)
        feet: dict[str, FloatArray] = {}
        for side, bp in self.breasts.items():
            s_c = float(np.interp(self.centre_theta(tab, bp.xc), THETA, tab.arc))
            u_lat = SIDE_SIGN[side] * (arc - s_c) / bp.radius
            v = np.full(rad.shape, (z - bp.zc) / (bp.length / 2))
            rho0 = footprint_rho(bp, u_lat, v)
            feet[side] = rho0
            if bp.present:
                s2 = np.clip(t_ray / bp.projection, 0.0, 1.0) ** 2
                u_ray = SIDE_SIGN[side] * (arc_ray - s_c) / bp.radius
                rho_s = footprint_rho(
                    bp, u_ray - bp.sag_lat * s2 / bp.radius, v + bp.sag_caud * s2 / (bp.length / 2)
                )
                height = bp.projection * (1 - np.minimum(rho_s, 1.0) ** 2) ** bp.q
                mound = (t > 0) & (t_ray > 0) & (rho_s < 1) & (t_ray < height)
                in_chest = (t <= 0) & (rho0 < 1) & (rad >= rb - fat)
                regions[("breast", side)] = mound | in_chest
                mound_any |= mound
                rho_eff = np.where(mound, rho_s, rho0)
                near_muscle = rad < rb - fat + 3.0
                bias = 1.3 * (1 - rho_eff**2) - 0.4
                gland_bias = np.where(regions[("breast", side)] & ~near_muscle, bias, gland_bias)
            else:
                flap = self.surgery[side].flap
                w = 1 - smoothstep(rho0, 0.9, 1.2)
                r_skin = np.minimum(r_skin, rb - (fat - flap) * w)
        chest = rad < r_skin
        body = chest | mound_any
        for side, bp in self.breasts.items():
            if not bp.present:
                regions[("chest_wall", side)] = (feet[side] < 1) & chest & (rad >= front)
            self._nodes(z, tab, side, bp, body, regions)

        lab = np.zeros(rad.shape, np.uint8)
        lab[chest] = Tissue.MUSCLE
        lab[chest & (rad >= rb - fat)] = Tissue.FAT
        lab[mound_any] = Tissue.FAT
        if np.any(gland_bias > -9):
            score = self.gland(k) + gland_bias
            density = np.mean([b.density for b in self.breasts.values()])
            lab[(gland_bias > -9) & (score > 1.2 - 2.2 * density)] = Tissue.GLAND
        self._thorax(z, lab, rad < inner)
        rib_layer(self, z, lab, chest & (rad >= inner) & (rad < front), rad, inner, front)
        girdle(self, z, lab, chest, rad, front, rb, fat)
        spine(self, z, lab, chest)
        self._surgery_marks(z, lab, regions)
        if self.organs.couch:
            top = self.couch_top
            couch = (self.yr >= top) & (self.yr < top + 45)
            couch &= (np.abs(self.x_fov) < 230) & ~body
            lab[couch] = Tissue.COUCH_FOAM
            shell = couch & ((self.yr < top + 2.5) | (self.yr > top + 42.5))
            lab[shell] = Tissue.COUCH_SHELL
        return SliceOut(lab, body, regions)

    def _nodes(
        self,
        z: float,
        tab: Tables,
        side: str,
        bp: BreastParams,
        body: BoolArray,
        regions: dict[tuple[str, str], BoolArray],
    ) -> None:
        """Axilla, SCF, IMN of one side (spec geometry), each intersected with the body."""
        b, n, sgn = self.body, self.nodes[side], SIDE_SIGN[side]
        z0, z1 = bp.top - bp.length / 3, bp.top + 60
        zt = ((z - 0.5 * (z0 + z1)) / (0.5 * (z1 - z0))) ** 2
        ax = ellipse_value(
            self.xr - sgn * 0.8 * b.a, self.yr - n.axilla_y * b.b, n.axilla_sx, n.axilla_sy * b.b
        )
        regions[("axilla", side)] = (ax + zt <= 1) & (self.yr < 0) & body
        zt = ((z - (bp.top + 45)) / 25.0) ** 2
        scf = ellipse_value(self.xr - sgn * 0.3 * b.a, self.yr - n.scf_y * b.b, n.scf_sx, n.scf_sy)
        regions[("scf", side)] = (scf + zt <= 1) & body
        if bp.top - 0.6 * bp.length <= z <= bp.top:
            x = sgn * n.imn_x
            y = self.inner_y(tab, x) + 8.0
            regions[("imn", side)] = (np.hypot(self.xr - x, self.yr - y) <= 8.0) & body
        else:
            regions[("imn", side)] = np.zeros(body.shape, bool)

    # --- organs ----------------------------------------------------------------------------
    def _dome(self) -> FloatArray:
        """LPS z of the diaphragm surface at every pixel (two domes and the central tendon)."""
        o, b = self.organs, self.body
        x_r, y_r, x_l, y_l = o.dome_xy
        out = None
        for z0, x0, y0 in ((o.dome_r, x_r, y_r), (o.dome_l, x_l, y_l)):
            dy = self.yr - y0
            sy = np.where(dy > 0, 0.45 * b.b, 0.55 * b.b)
            cap = z0 - o.dome_drop * (((self.xr - x0) / (0.5 * b.a)) ** 2 + (dy / sy) ** 2)
            out = cap if out is None else np.maximum(out, cap)
        tendon = o.dome_c - 0.5 * o.dome_drop * (
            ((self.xr - 10) / (0.3 * b.a)) ** 2 + ((self.yr + 0.2 * b.b) / (0.35 * b.b)) ** 2
        )
        return np.maximum(out, tendon) if out is not None else tendon

    def _thorax(self, z: float, lab: npt.NDArray[np.uint8], cavity: BoolArray) -> None:
        o, b, xr, yr = self.organs, self.body, self.xr, self.yr
        above = z > self._dome()
        dz = z - o.heart_centre[2]
        dx, dy = xr - o.heart_centre[0], yr - o.heart_centre[1]
        e = sum(
            ((r[0] * dx + r[1] * dy + r[2] * dz) / ax) ** 2
            for r, ax in zip(self.heart_rows, o.heart_axes, strict=True)
        )
        grow = (1 + o.heart_fat / np.mean(o.heart_axes)) ** 2
        low_ok = z >= o.dome_c - 5
        heart_fat = cavity & (e <= grow) & low_ok
        heart = cavity & (e <= 1) & low_ok
        width = (
            np.interp(yr / b.b, [-1.2, -0.75, -0.35, 0.0, 0.4], [10, 16, 30, 32, 24]) * o.med_scale
        )
        medi = np.abs(xr - 5) < width
        spine = (np.hypot(xr, yr - self.yv) < o.vb_radius + 5) | (
            (yr > self.yv - 3) & (np.abs(xr) < o.vb_radius + 14)
        )
        h = 75.0
        apex = np.full(xr.shape, z < o.apex_z - h)
        if not apex.all():
            for sgn in (1.0, -1.0):
                d = np.hypot((xr - sgn * 0.3 * b.a) / (0.55 * b.a), (yr - 0.1 * b.b) / (0.75 * b.b))
                apex |= d**2 + ((z - (o.apex_z - h)) / h) ** 2 <= 1
        vessels, airway, wall = self._mediastinal_tubes(z)
        lung = cavity & above & ~medi & ~spine & apex & ~heart_fat & ~vessels & ~wall
        thorax = cavity & (above | heart_fat)
        lab[thorax] = Tissue.MED_FAT
        lab[thorax & ~apex] = Tissue.SOFT
        lab[lung] = Tissue.LUNG
        lab[heart_fat] = Tissue.MED_FAT
        lab[heart] = Tissue.HEART
        abdomen = cavity & ~above & ~heart_fat
        self._abdomen(lab, abdomen, spine)
        lab[cavity & vessels & ~heart] = Tissue.VESSEL
        lab[cavity & wall] = Tissue.SOFT
        lab[cavity & airway] = Tissue.AIRWAY

    def _mediastinal_tubes(self, z: float) -> tuple[BoolArray, BoolArray, BoolArray]:
        """Aorta (ascending, arch, descending), SVC, trachea/bronchi, oesophagus."""
        o, xr, yr = self.organs, self.xr, self.yr
        ra, yv, rv = o.aorta_r, self.yv, o.vb_radius
        desc = (rv * 0.9 + 6 + ra, yv - 0.5 * rv)
        asc = (-2.0, o.heart_centre[1] - 0.25 * o.heart_axes[1])
        heart_top = o.heart_centre[2] + 0.3 * o.heart_axes[2]
        vessels = np.hypot(xr - desc[0], yr - desc[1]) < ra
        if heart_top <= z <= o.arch_z:
            vessels |= np.hypot(xr - asc[0], yr - asc[1]) < 1.25 * ra
        if abs(z - o.arch_z) < 1.1 * ra:
            r = 1.1 * ra * np.sqrt(1 - ((z - o.arch_z) / (1.1 * ra)) ** 2)
            vessels |= segment_distance(xr, yr, asc, desc) < r
        if z >= heart_top:
            vessels |= np.hypot(xr - asc[0] + 25, yr - asc[1] - 5) < 9
        ty = yv - rv - 10 - o.trachea_r
        airway = np.zeros(xr.shape, bool)
        wall = np.hypot(xr - 6, yr - (yv - rv - 5)) < 7  # oesophagus
        wall &= z > o.dome_l
        if z >= o.carina_z:
            d = np.hypot(xr, yr - ty)
            airway = d < o.trachea_r
            wall |= d < o.trachea_r + 2
        elif z >= o.carina_z - 30:
            off = 0.8 * (o.carina_z - z) + 3
            for sgn in (1.0, -1.0):
                d = np.hypot(xr - sgn * off, yr - ty)
                airway |= d < 0.7 * o.trachea_r
                wall |= d < 0.7 * o.trachea_r + 1.5
        return vessels, airway, wall & ~airway

    def _abdomen(self, lab: npt.NDArray[np.uint8], abdomen: BoolArray, spine: BoolArray) -> None:
        o, b, xr, yr = self.organs, self.body, self.xr, self.yr
        lab[abdomen] = Tissue.ABDOMEN
        xlim = -15 + o.liver_lobe * np.clip(-yr / (0.6 * b.b) + 0.2, 0.0, 1.0)
        lab[abdomen & (xr < xlim) & ~spine] = Tissue.LIVER
        sx, sy, sa, sb, gas = o.stomach
        stomach = abdomen & (ellipse_value(xr - sx, yr - sy, sa, sb, 0.3) <= 1)
        lab[stomach] = Tissue.STOMACH
        lab[stomach & (yr < sy - sb + 2 * sb * gas)] = Tissue.GAS
        px, py, pa, pb, ang = o.spleen
        lab[abdomen & (ellipse_value(xr - px, yr - py, pa, pb, -ang) <= 1)] = Tissue.SPLEEN

    def _surgery_marks(
        self, z: float, lab: npt.NDArray[np.uint8], regions: dict[tuple[str, str], BoolArray]
    ) -> None:
        """Seroma (inside the breast, 4 mm off its outer surface) and 2 mm clips."""
        dk, dj, di = self.grid.spacing
        for x, y, zc, axes in self.seromas:
            if abs(z - zc) >= axes[2]:
                continue
            val = (
                ellipse_value(self.xr - x, self.yr - y, axes[0], axes[1])
                + ((z - zc) / axes[2]) ** 2
            )
            inside = np.zeros(lab.shape, bool)
            for (name, _), mask in regions.items():
                if name == "breast":
                    inside |= mask
            lab[(val <= 1) & inside & (lab != Tissue.AIR)] = Tissue.SEROMA
        radius = max(1.0, 0.75 * max(dj, di))
        for x, y, zc in self.clips:
            if abs(z - zc) <= dk / 2:
                lab[(np.hypot(self.xr - x, self.yr - y) <= radius) & (lab != Tissue.AIR)] = (
                    Tissue.CLIP
                )
