"""Random parameters of one independent case: clinical record, scanner, body, breasts, organs.

Lengths in mm. Positions of anatomy are relative to the body centre (``cx``, ``cy``) in the
axial plane (LPS: +x patient left, +y posterior) and absolute LPS z (+z toward the head) along
the body axis. ``cx``/``cy`` themselves are relative to the centre of the reconstructed field of
view, whose LPS position is ``Scanner.fov_centre``. Nothing here depends on the matrix size, so
a case drawn at 128, 256 or 512 has the same anatomy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SIDE_SIGN = {"L": 1.0, "R": -1.0}
SIDE_NAME = {"L": "left", "R": "right"}
SIDE_LETTER = {"left": "L", "right": "R"}

_LATERALITY = {"A": (0.50, 0.46, 0.04), "B": (0.50, 0.50, 0.0)}
_N_STAGE = {"A": (0.40, 0.06, 0.32, 0.14, 0.08), "B": (0.66, 0.04, 0.17, 0.09, 0.04)}
_CONSERVING = {"A": 0.66, "B": 0.91}


@dataclass(frozen=True)
class Scanner:
    """Acquisition profile of one case (spec table "Scanner profiles")."""

    site: str
    pixel_spacing_512: float  # mm, at a 512 matrix; grows by 512/matrix
    slice_thickness: float  # mm, also the slice spacing
    noise_sigma: float  # HU, standard deviation of the (correlated) noise
    hu_offset: float  # HU added to every voxel
    noise_corr_mm: float  # in-plane correlation length (Gaussian sigma) of the noise
    psf_sigma_mm: float  # in-plane blur of the noise-free image
    signed_pixels: bool  # int16 with intercept 0, else uint16 with intercept -1024
    fov_centre: tuple[float, float]  # LPS (x, y) mm of the field-of-view centre


@dataclass(frozen=True)
class BodyParams:
    """Trunk outline (two half superellipses), skin fat, muscle and rib-cage depths."""

    cx: float
    cy: float
    a: float  # lateral semi-axis at breast level (spec 140-190)
    b: float  # mean AP semi-axis (spec 95-130)
    b_ant: float
    b_post: float
    p_ant: float  # superellipse exponent of the anterior half
    p_post: float  # larger: flatter back
    harmonics: tuple[tuple[float, float, float], ...]  # (amplitude, phase, drift rad/mm) n=2..4
    groove_depth: float  # sternal groove, mm
    groove_width: float  # rad
    shoulder: float  # relative lateral widening at the top of the scan
    taper_top: float  # relative AP thinning toward the top of the scan
    belly: float  # relative AP growth below the breasts
    fat: float  # subcutaneous fat thickness (8-25)
    fat_var: float
    fat_phase: float
    m_sternal: float
    m_pec: float  # pectoralis thickness (8-15)
    m_lat: float
    m_post: float
    rib_ring: float  # radial thickness of the rib layer
    apex_taper: float
    skin: float  # dermis thickness (+20 HU)


@dataclass(frozen=True)
class BreastParams:
    """One breast footprint on the chest surface and its mound (present unless mastectomy)."""

    side: str  # "L" or "R"
    present: bool
    xc: float  # signed x of the footprint centre from the body centre
    radius: float  # lateral radius (arc length along the skin), spec 50-80
    length: float  # cranio-caudal length L of the footprint, spec 90-150
    zc: float  # LPS z of the footprint centre
    projection: float  # anterior projection beyond the chest skin line, spec 25-80
    q: float  # mound profile exponent: h = P (1 - rho^2)^q
    e: float  # footprint superellipse exponent
    tail: float  # axillary tail: cranial part shifted laterally (fraction of radius)
    sag_lat: float  # ptosis, mm at the tip
    sag_caud: float
    pole: float  # mound rays start this many b behind the body centre (large: anterior)
    density: float  # fibroglandular fraction
    gland_hu: float

    @property
    def top(self) -> float:
        """Cranial end of the footprint (the spec's "top")."""
        return self.zc + self.length / 2

    @property
    def bottom(self) -> float:
        """Caudal end of the footprint."""
        return self.zc - self.length / 2

    @property
    def lowest(self) -> float:
        """Lowest z the (ptotic) mound reaches."""
        return self.bottom - (self.sag_caud if self.present else 0.0)


@dataclass(frozen=True)
class SurgeryParams:
    """Post-operative changes of one treated side."""

    side: str
    mastectomy: bool
    flap: float  # skin + fat left over the pectoralis after mastectomy
    seroma_uv: tuple[float, float]  # footprint coordinates (lateral, cranial), normalised
    seroma_depth: float  # fraction of the local mound height
    seroma_axes: tuple[float, float, float]  # semi-axes (x, y, z) mm
    clips: tuple[tuple[float, float, float], ...]  # unit directions (seroma) or (u, v, depth)


@dataclass(frozen=True)
class NodeParams:
    """Lymph-node label regions of one side (spec "Lymph-node regions"), relative to the body."""

    side: str
    axilla_y: float  # centre y / b (negative: anterior)
    axilla_sx: float  # semi-axis x, mm (22-32)
    axilla_sy: float  # semi-axis y / b (0.22-0.30)
    scf_y: float  # centre y / b
    scf_sx: float
    scf_sy: float
    imn_x: float  # lateral distance of the IMN axis from the midline (25-35)


@dataclass(frozen=True)
class OrganParams:
    """Thoracic and upper-abdominal organs, spine, ribs, vessels, couch."""

    heart_centre: tuple[float, float, float]  # (dx, dy, z)
    heart_axes: tuple[float, float, float]
    heart_angle: float  # long axis from +x toward anterior, rad
    heart_tilt: float  # apex downward, rad
    heart_fat: float
    dome_r: float  # z of the right hemidiaphragm (liver dome) peak
    dome_l: float
    dome_c: float
    dome_xy: tuple[float, float, float, float]  # xR, yR, xL, yL
    dome_drop: float
    liver_lobe: float
    liver_hu: float
    spleen: tuple[float, float, float, float, float]  # dx, dy, semi-a, semi-b, angle
    stomach: tuple[float, float, float, float, float]  # dx, dy, semi-a, semi-b, gas fraction
    apex_z: float
    med_scale: float
    vb_radius: float
    vb_depth: float  # posterior skin to vertebral-body centre, mm
    vert_height: float
    vert_phase: float
    aorta_r: float
    arch_z: float
    trachea_r: float
    carina_z: float
    sternum_w: float
    notch_z: float
    xiphoid_z: float
    rib_spacing: float
    rib_drop: float
    rib_height: float
    rib_phase: float
    cartilage: float  # rad from the midline where ribs turn into cartilage
    scapula_z: float
    clavicle_z: float
    couch: bool
    couch_gap: float


def _pick(rng: np.random.Generator, probs: tuple[float, ...]) -> int:
    return int(rng.choice(len(probs), p=np.asarray(probs) / sum(probs)))


def sample_record(rng: np.random.Generator, site: str) -> dict[str, Any]:
    """A clinical record (service-contract JSON) with the site's laterality/N/surgery mix."""
    lat = _pick(rng, _LATERALITY[site])
    sides = [["left"], ["right"], ["left", "right"]][lat]
    diagnoses = []
    for side in sides:
        n = _pick(rng, _N_STAGE[site])
        n_stage = ["0", "1mi", "1", "2", "3"][n]
        if n >= 2 and rng.random() < 0.35:
            n_stage += str(rng.choice(["a", "b", "c"]))
        t = _pick(rng, (0.07, 0.38, 0.35, 0.12, 0.08))
        t_stage = ["is", "1", "2", "3", "4"][t]
        if t == 1 and rng.random() < 0.4:
            t_stage = str(rng.choice(["1mi", "1a", "1b", "1c"]))
        if t == 4 and rng.random() < 0.6:
            t_stage = str(rng.choice(["4a", "4b", "4c", "4d"]))
        conserving = rng.random() < _CONSERVING[site]
        surgery = "breast_conserving" if conserving else "total_mastectomy"
        diagnoses.append({"side": side, "surgery": surgery, "t_stage": t_stage, "n_stage": n_stage})
    in_situ = all(d["t_stage"] == "is" for d in diagnoses)
    pathology = "DCIS" if in_situ else ("IDC" if rng.random() < 0.8 else "ILC")
    node_pos = any(d["n_stage"] not in ("0", "1mi") for d in diagnoses)
    return {
        "diagnoses": diagnoses,
        "age": int(np.clip(round(rng.normal(56, 12)), 25, 90)),
        "pathology": pathology,
        "neoadjuvant_chemotherapy": bool(rng.random() < (0.45 if node_pos else 0.12)),
    }


def sample_scanner(rng: np.random.Generator, site: str) -> Scanner:
    """Pixel spacing, slice thickness, noise and calibration of site A or B."""
    if site == "A":
        spacing, thickness = rng.uniform(0.9, 1.1), 3.0
        sigma, offset = rng.uniform(10, 20), 0.0
    else:
        spacing, thickness = rng.uniform(1.1, 1.4), float(rng.choice([2.5, 5.0]))
        sigma, offset = rng.uniform(20, 40), rng.uniform(-20, 20)
    return Scanner(
        site=site,
        pixel_spacing_512=round(float(spacing), 4),
        slice_thickness=thickness,
        noise_sigma=float(sigma),
        hu_offset=float(offset),
        noise_corr_mm=float(rng.uniform(0.6, 1.1)),
        psf_sigma_mm=float(rng.uniform(0.45, 0.8)),
        signed_pixels=site == "B",
        fov_centre=(float(rng.uniform(-12, 12)), float(rng.uniform(-30, 30))),
    )


def sample_body(rng: np.random.Generator, scanner: Scanner, max_projection: float) -> BodyParams:
    """Trunk shape, kept inside the field of view (table shift clamped where needed)."""
    a, b = rng.uniform(140, 190), rng.uniform(95, 130)
    delta = rng.uniform(0.0, 0.08)
    delta = min(delta, 130 / b - 1, 1 - 95 / b) if b > 95 else 0.0
    harmonics = tuple(
        (
            float(rng.uniform(-0.015, 0.015)),
            float(rng.uniform(0, 2 * math.pi)),
            float(rng.uniform(-0.005, 0.005)),
        )
        for _ in range(3)
    )
    bump = 1 + sum(abs(h[0]) for h in harmonics)
    half = 256 * scanner.pixel_spacing_512
    shoulder = rng.uniform(0.03, 0.12)
    shoulder = min(shoulder, (half - 12) / (a * bump) - 1)
    lat_room = half - a * bump * (1 + shoulder) - 8
    cx = float(np.clip(rng.uniform(-20, 20), -lat_room, lat_room))
    b_ant, b_post = b * (1 - delta), b * (1 + delta)
    lo = -half + b_ant * bump * 1.06 + max_projection + 8
    hi = half - b_post * bump * 1.04 - 8
    cy = float(np.clip(rng.uniform(-20, 20), lo, hi)) if lo <= hi else (lo + hi) / 2
    return BodyParams(
        cx=cx,
        cy=cy,
        a=float(a),
        b=float(b),
        b_ant=float(b_ant),
        b_post=float(b_post),
        p_ant=float(rng.uniform(2.0, 2.6)),
        p_post=float(rng.uniform(2.8, 4.0)),
        harmonics=harmonics,
        groove_depth=float(rng.uniform(0, 5)),
        groove_width=float(rng.uniform(0.10, 0.18)),
        shoulder=float(shoulder),
        taper_top=float(rng.uniform(0.0, 0.08)),
        belly=float(rng.uniform(0.0, 0.06)),
        fat=float(rng.uniform(8, 25)),
        fat_var=float(rng.uniform(0.0, 0.2)),
        fat_phase=float(rng.uniform(0, 2 * math.pi)),
        m_sternal=float(rng.uniform(3, 6)),
        m_pec=float(rng.uniform(8, 15)),
        m_lat=float(rng.uniform(8, 14)),
        m_post=float(rng.uniform(35, 55)),
        rib_ring=float(rng.uniform(8, 11)),
        apex_taper=float(rng.uniform(0.05, 0.15)),
        skin=float(rng.uniform(1.5, 2.5)),
    )


def sample_breasts(
    rng: np.random.Generator, a: float, mastectomy: dict[str, bool]
) -> dict[str, BreastParams]:
    """Both footprints; the shape class (small/flat, medium, large/ptotic) is shared."""
    size = _pick(rng, (0.3, 0.45, 0.25))
    z0 = rng.uniform(-220, 120)
    k_x = rng.uniform(0.45, 0.6)
    pole = float(rng.uniform(0.8, 3.0))
    out = {}
    for side in ("L", "R"):
        xc = SIDE_SIGN[side] * float(np.clip(k_x + rng.uniform(-0.02, 0.02), 0.45, 0.6)) * a
        if size == 0:
            radius, length, proj = rng.uniform(50, 60), rng.uniform(90, 110), rng.uniform(25, 32)
            sag_lat, sag_caud = rng.uniform(0, 3), 0.0
        elif size == 1:
            radius, length, proj = rng.uniform(55, 72), rng.uniform(100, 135), rng.uniform(33, 60)
            sag_lat, sag_caud = rng.uniform(0, 0.25) * radius, rng.uniform(0, 0.08) * length
        else:
            radius, proj = rng.uniform(65, 80), rng.uniform(60, 80)
            sag_lat, sag_caud = rng.uniform(0.15, 0.4) * radius, rng.uniform(8, 22)
            length = rng.uniform(120, 150 - sag_caud)
        radius = min(radius, abs(xc) - 15)
        proj = max(25.0, min(proj, 1.1 * radius))  # no mound taller than its base is wide
        out[side] = BreastParams(
            side=side,
            present=not mastectomy.get(side, False),
            xc=float(xc),
            radius=float(radius),
            length=float(length),
            zc=float(z0 + rng.uniform(-8, 8)),
            projection=float(proj),
            q=float(rng.uniform(0.6, 1.2)),
            e=float(rng.uniform(2.0, 2.6)),
            tail=float(rng.uniform(0.0, 0.3)),
            sag_lat=float(sag_lat),
            sag_caud=float(sag_caud),
            pole=pole,
            density=float(rng.uniform(0.1, 0.55)),
            gland_hu=float(rng.uniform(20, 40)),
        )
    return out


def sample_surgery(rng: np.random.Generator, side: str, mastectomy: bool) -> SurgeryParams:
    """Seroma and clips (breast-conserving) or flap and clips (mastectomy)."""
    n_clips = int(rng.integers(0, 4 if mastectomy else 6))
    if mastectomy:
        clips = tuple(
            (float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.7, 0.7)), float(rng.uniform(1, 6)))
            for _ in range(n_clips)
        )
    else:
        dirs = rng.normal(size=(n_clips, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-9
        clips = tuple((float(d[0]), float(d[1]), float(d[2])) for d in dirs)
    axes = rng.uniform(5, 15, size=3)
    return SurgeryParams(
        side=side,
        mastectomy=mastectomy,
        flap=float(rng.uniform(3, 7)),
        seroma_uv=(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5))),
        seroma_depth=float(rng.uniform(0.25, 0.6)),
        seroma_axes=(float(axes[0]), float(axes[1]), float(axes[2])),
        clips=clips,
    )


def sample_organs(
    rng: np.random.Generator, body: BodyParams, top: float, bottom: float, length: float
) -> OrganParams:
    """Organs placed relative to the breasts' top/bottom (z) and the body centre (x, y)."""
    a, b = body.a, body.b
    dome_r = bottom + rng.uniform(-10, 0.40 * length)
    dome_l = dome_r - rng.uniform(8, 25)
    dome_c = min(dome_r, dome_l) - rng.uniform(0, 10)
    heart_axes = (rng.uniform(45, 58), rng.uniform(33, 43), rng.uniform(38, 50))
    heart_z = dome_c + heart_axes[2] * rng.uniform(0.7, 0.95)
    arch_z = top + rng.uniform(0, 25)
    return OrganParams(
        heart_centre=(
            float(rng.uniform(10, 35)),
            float(-rng.uniform(0.05, 0.25) * b),
            float(heart_z),
        ),
        heart_axes=(float(heart_axes[0]), float(heart_axes[1]), float(heart_axes[2])),
        heart_angle=float(np.radians(rng.uniform(25, 50))),
        heart_tilt=float(np.radians(rng.uniform(10, 30))),
        heart_fat=float(rng.uniform(2, 6)),
        dome_r=float(dome_r),
        dome_l=float(dome_l),
        dome_c=float(dome_c),
        dome_xy=(
            float(-rng.uniform(0.3, 0.5) * a),
            float(rng.uniform(-0.1, 0.15) * b),
            float(rng.uniform(0.3, 0.5) * a),
            float(rng.uniform(-0.1, 0.15) * b),
        ),
        dome_drop=float(rng.uniform(35, 60)),
        liver_lobe=float(rng.uniform(40, 90)),
        liver_hu=float(rng.uniform(50, 65)),
        spleen=(
            float(rng.uniform(0.45, 0.6) * a),
            float(rng.uniform(0.25, 0.45) * b),
            float(rng.uniform(35, 50)),
            float(rng.uniform(20, 30)),
            float(np.radians(rng.uniform(30, 60))),
        ),
        stomach=(
            float(rng.uniform(0.2, 0.4) * a),
            float(-rng.uniform(0.15, 0.35) * b),
            float(rng.uniform(40, 55)),
            float(rng.uniform(30, 40)),
            float(rng.uniform(0.0, 0.4)),
        ),
        apex_z=float(top + rng.uniform(30, 60)),
        med_scale=float(rng.uniform(0.85, 1.2)),
        vb_radius=float(rng.uniform(15, 20)),
        vb_depth=float(rng.uniform(0.62, 0.75) * body.b_post),
        vert_height=float(rng.uniform(22, 27)),
        vert_phase=float(rng.uniform(0, 1)),
        aorta_r=float(rng.uniform(10, 13)),
        arch_z=float(arch_z),
        trachea_r=float(rng.uniform(8, 10)),
        carina_z=float(arch_z - rng.uniform(5, 20)),
        sternum_w=float(rng.uniform(12, 18)),
        notch_z=float(top + rng.uniform(40, 60)),
        xiphoid_z=float(bottom + rng.uniform(-10, 20)),
        rib_spacing=float(rng.uniform(24, 30)),
        rib_drop=float(rng.uniform(40, 70)),
        rib_height=float(rng.uniform(9, 13)),
        rib_phase=float(rng.uniform(0, 1)),
        cartilage=float(rng.uniform(0.3, 0.5)),
        scapula_z=float(top - rng.uniform(30, 60)),
        clavicle_z=float(top + rng.uniform(35, 55)),
        couch=bool(rng.random() < 0.5),
        couch_gap=float(rng.uniform(0.5, 3)),
    )


def sample_nodes(rng: np.random.Generator, side: str) -> NodeParams:
    """Node-region parameters, uniformly inside the spec's ranges."""
    return NodeParams(
        side=side,
        axilla_y=float(-rng.uniform(0.25, 0.35)),
        axilla_sx=float(rng.uniform(22, 32)),
        axilla_sy=float(rng.uniform(0.22, 0.30)),
        scf_y=float(-rng.uniform(0.45, 0.55)),
        scf_sx=float(rng.uniform(20, 28)),
        scf_sy=float(rng.uniform(20, 28)),
        imn_x=float(rng.uniform(25, 35)),
    )
