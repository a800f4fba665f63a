"""The random parameters of one phantom, sampled per the "Anatomy" section of the spec.

Everything here is independent of the matrix size (``scale``) and of the clinical record:
both sides always get a breast, node-region and surgical-change parameters, and the record
decides which apply. Lengths are millimetres; ``top`` and the scan limits are LPS ``z``.
Offsets ``u``/``v`` are LPS ``x``/``y`` relative to the body centre (``v < 0`` anterior).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from model.lab.phantoms.acquisition import AcquisitionExtras
from model.lab.phantoms.sites import SiteProfile, uniform
from model.text.clinical import Side

SIDE_SIGN = {Side.LEFT: 1, Side.RIGHT: -1}
"""Sign of LPS ``x`` of each side relative to the body centre (+x is the patient's left)."""


@dataclass(frozen=True)
class ScannerParams:
    """Acquisition: spacing at a 512 matrix, slice thickness, noise and calibration (HU)."""

    pixel_spacing: float
    slice_thickness: float
    noise_sigma: float
    hu_offset: float


@dataclass(frozen=True)
class BodyParams:
    """Trunk: elliptic cylinder, wall layers, lungs, heart, bones.

    ``a``/``b`` are the lateral/AP semi-axes, ``cx``/``cy`` the LPS centre; ``fat``,
    ``pectoralis`` and ``rib`` are layer thicknesses measured inward from the chest surface.
    """

    a: float
    b: float
    cx: float
    cy: float
    fat: float
    pectoralis: float
    rib: float
    ribs_visible: bool
    rib_period: float
    rib_phase: float
    sternum_half_width: float
    vertebra_radius: float
    lung_semi_x: float
    lung_semi_y: float
    heart_u: float
    heart_v: float
    heart_semi: tuple[float, float, float]
    heart_z_above_bottom: float

    @property
    def wall(self) -> float:
        """Depth (mm) of the inner surface of the anterior chest wall (fat+muscle+rib)."""
        return self.fat + self.pectoralis + self.rib


@dataclass(frozen=True)
class BreastParams:
    """One breast (rendered unless that side had a mastectomy; its footprint always counts).

    ``centre_frac`` is |centre x - cx| / a; ``radius`` is the lateral radius measured as arc
    length along the chest surface (capped at |centre x| - 15); ``top`` the LPS ``z`` of the
    cranial end; ``projection`` the anterior projection beyond the chest's skin line.
    """

    side: Side
    centre_frac: float
    length: float
    top: float
    radius: float
    projection: float
    gland_hu: float
    gland_fraction: float

    @property
    def bottom(self) -> float:
        """LPS ``z`` of the caudal end."""
        return self.top - self.length

    @property
    def z_centre(self) -> float:
        """LPS ``z`` of the footprint centre."""
        return self.top - self.length / 2.0


@dataclass(frozen=True)
class SurgicalParams:
    """Surgical changes of one side, used per the record's surgery.

    Breast-conserving: a seroma at footprint position ``seroma_at`` = (arc fraction of the
    radius, z fraction of the half-length, depth fraction of the breast thickness) with
    semi-axes ``seroma_semi`` (x, y, z), and clips given as (unit direction, gap beyond the
    seroma surface, HU). Mastectomy: a residual skin flap of ``flap`` mm and clips at
    (arc fraction, z fraction, depth fraction between flap and mid-pectoralis, HU).
    """

    seroma_at: tuple[float, float, float]
    seroma_semi: tuple[float, float, float]
    bcs_clips: tuple[tuple[float, float, float, float, float], ...]
    flap: float
    tm_clips: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class NodeParams:
    """Lymph-node regions of one side (labels only)."""

    axilla_y_frac: float
    axilla_semi_x: float
    axilla_semi_y_frac: float
    scf_y_frac: float
    scf_semi_x: float
    scf_semi_y: float
    imn_offset: float


@dataclass(frozen=True)
class OrganParams:
    """Abdominal organs under the lungs (domain randomisation; LPS mm, relative to the body).

    ``liver_top`` is the LPS ``z`` of the right hemidiaphragm's dome, measured from the
    lowest breast bottom (positive: the dome reaches up into the breast slices); the left
    dome (spleen, stomach) lies ``left_drop`` lower.
    """

    liver_top: float
    liver_semi: tuple[float, float, float]
    liver_u: float
    left_drop: float
    spleen_semi: tuple[float, float, float]
    stomach_gas: float  # semi-axis (mm) of the gas bubble, 0 for none


@dataclass(frozen=True)
class MediastinumParams:
    """Mediastinal anatomy the spec leaves out (domain randomisation; LPS mm).

    Vessels are vertical tubes ``(u, v, radius, bottom, top)``: ``u``/``v`` LPS ``x``/``y``
    relative to the body centre, ``bottom``/``top`` LPS ``z`` relative to the top of the
    heart. ``vessel_hu`` is shared by the vessels (without to with contrast). The trachea is
    air from the carina (``carina`` above the heart's top) up; the esophagus soft tissue. The
    sternum reaches ``sternum_depth`` mm behind the fat (the spec's phantoms: 14).
    ``anterior_lung``: ``(medial, thickness)`` mm, or ``None``: the lungs reach the front of
    the chest, from ``medial`` mm beside the midline outward, ``thickness`` mm deep behind the
    ribs (real lungs meet behind the sternum; the spec's ellipsoids stay behind the
    internal mammary nodes, which may then lie over lung).
    """

    vessels: tuple[tuple[float, float, float, float, float], ...]
    vessel_hu: float
    trachea: tuple[float, float, float]  # (u, v, radius)
    carina: float
    esophagus: tuple[float, float, float]  # (u, v, radius)
    sternum_depth: float
    anterior_lung: tuple[float, float] | None = None


@dataclass(frozen=True)
class PhantomParams:
    """All parameters of one phantom; ``scan_bottom``/``scan_top`` are LPS ``z`` (mm)."""

    scanner: ScannerParams
    body: BodyParams
    breasts: dict[Side, BreastParams]
    surgical: dict[Side, SurgicalParams]
    nodes: dict[Side, NodeParams]
    scan_bottom: float
    scan_top: float
    extras: AcquisitionExtras | None = None
    organs: OrganParams | None = None
    mediastinum: MediastinumParams | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready parameters (for ``cohort.json``)."""
        return {
            "scanner": asdict(self.scanner),
            "body": asdict(self.body),
            "breasts": {s.value: _side_dict(asdict(p)) for s, p in self.breasts.items()},
            "nodes": {s.value: asdict(p) for s, p in self.nodes.items()},
            "scan_z_mm": [self.scan_bottom, self.scan_top],
            **({"acquisition": asdict(self.extras)} if self.extras else {}),
            **({"organs": asdict(self.organs)} if self.organs else {}),
            **({"mediastinum": asdict(self.mediastinum)} if self.mediastinum else {}),
        }


def _side_dict(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with :class:`Side` enums replaced by their strings (JSON-ready)."""
    return {k: (v.value if isinstance(v, Side) else v) for k, v in values.items()}


def _sample_scanner(rng: np.random.Generator, profile: SiteProfile) -> ScannerParams:
    """Pixel spacing (mm, 4 decimals), slice thickness (mm), noise and offset (HU)."""
    thicknesses = profile.slice_thicknesses
    return ScannerParams(
        pixel_spacing=round(uniform(rng, profile.pixel_spacing), 4),
        slice_thickness=float(thicknesses[int(rng.integers(len(thicknesses)))]),
        noise_sigma=uniform(rng, profile.noise_sigma),
        hu_offset=uniform(rng, profile.hu_offset),
    )


def _sample_body(rng: np.random.Generator) -> BodyParams:
    """Trunk parameters; centre in LPS mm, organ offsets relative to it."""
    a, b = uniform(rng, (140, 190)), uniform(rng, (95, 130))
    return BodyParams(
        a=a,
        b=b,
        cx=uniform(rng, (-20, 20)),
        cy=uniform(rng, (-20, 20)),
        fat=uniform(rng, (8, 25)),
        pectoralis=uniform(rng, (8, 15)),
        rib=uniform(rng, (6, 10)),
        ribs_visible=bool(rng.random() < 0.75),
        rib_period=uniform(rng, (22, 30)),
        rib_phase=uniform(rng, (0, 30)),
        sternum_half_width=uniform(rng, (12, 18)),
        vertebra_radius=uniform(rng, (15, 19)),
        lung_semi_x=uniform(rng, (0.34, 0.38)) * a,
        lung_semi_y=uniform(rng, (0.62, 0.72)) * b,
        heart_u=uniform(rng, (0.10, 0.18)) * a,
        heart_v=-uniform(rng, (0.05, 0.15)) * b,
        heart_semi=(
            uniform(rng, (0.26, 0.32)) * a,
            uniform(rng, (0.30, 0.38)) * b,
            uniform(rng, (50, 65)),
        ),
        heart_z_above_bottom=uniform(rng, (10, 40)),
    )


def _sample_breast(rng: np.random.Generator, side: Side, a: float, top: float) -> BreastParams:
    """One breast whose cranial end lies within 8 mm of LPS ``z = top``."""
    centre_frac = uniform(rng, (0.45, 0.60))
    radius = min(uniform(rng, (50, 80)), centre_frac * a - 15.0)
    return BreastParams(
        side=side,
        centre_frac=centre_frac,
        length=uniform(rng, (90, 150)),
        top=top + uniform(rng, (-8, 8)),
        radius=radius,
        projection=uniform(rng, (25, 80)),
        gland_hu=uniform(rng, (20, 40)),
        gland_fraction=uniform(rng, (0.2, 0.6)),
    )


def _unit_vector(rng: np.random.Generator) -> tuple[float, float, float]:
    """A uniformly distributed LPS direction ``(x, y, z)``."""
    v = rng.normal(size=3)
    v = v / max(float(np.linalg.norm(v)), 1e-9)
    return (float(v[0]), float(v[1]), float(v[2]))


def _sample_surgical(rng: np.random.Generator) -> SurgicalParams:
    """Seroma, clips and flap of one side (see :class:`SurgicalParams`)."""
    seroma_at = (uniform(rng, (-0.3, 0.3)), uniform(rng, (-0.3, 0.3)), uniform(rng, (0.3, 0.6)))
    seroma_semi = (uniform(rng, (5, 15)), uniform(rng, (5, 15)), uniform(rng, (5, 15)))
    bcs_clips = tuple(
        (*_unit_vector(rng), uniform(rng, (1, 4)), uniform(rng, (1500, 2500)))
        for _ in range(int(rng.integers(0, 6)))
    )
    tm_clips = tuple(
        (
            uniform(rng, (-0.6, 0.6)),
            uniform(rng, (-0.6, 0.6)),
            uniform(rng, (0.0, 1.0)),
            uniform(rng, (1500, 2500)),
        )
        for _ in range(int(rng.integers(0, 4)))
    )
    return SurgicalParams(
        seroma_at=seroma_at,
        seroma_semi=seroma_semi,
        bcs_clips=bcs_clips,
        flap=uniform(rng, (4, 7)),
        tm_clips=tm_clips,
    )


def _sample_nodes(rng: np.random.Generator) -> NodeParams:
    """Node-region parameters of one side (see the spec's "Lymph-node regions")."""
    return NodeParams(
        axilla_y_frac=uniform(rng, (0.25, 0.35)),
        axilla_semi_x=uniform(rng, (22, 32)),
        axilla_semi_y_frac=uniform(rng, (0.22, 0.30)),
        scf_y_frac=uniform(rng, (0.45, 0.55)),
        scf_semi_x=uniform(rng, (20, 28)),
        scf_semi_y=uniform(rng, (20, 28)),
        imn_offset=uniform(rng, (25, 35)),
    )


def sample_params(rng: np.random.Generator, profile: SiteProfile) -> PhantomParams:
    """Draw every parameter of one phantom (both sides, all surgical options).

    The breasts' cranial ends lie near a random table position; the scan runs from 70-100 mm
    (the site convention's ``scan_above_top``) above the highest breast top to 20-40 mm below
    the lowest breast bottom (LPS ``z``).
    """
    scanner = _sample_scanner(rng, profile)
    body = _sample_body(rng)
    table_top = uniform(rng, (-40, 40))
    sides = (Side.LEFT, Side.RIGHT)
    breasts = {s: _sample_breast(rng, s, body.a, table_top) for s in sides}
    surgical = {s: _sample_surgical(rng) for s in sides}
    nodes = {s: _sample_nodes(rng) for s in sides}
    scan_top = max(p.top for p in breasts.values()) + uniform(
        rng, profile.convention.scan_above_top
    )
    scan_bottom = min(p.bottom for p in breasts.values()) - uniform(rng, (20, 40))
    return PhantomParams(
        scanner=scanner,
        body=body,
        breasts=breasts,
        surgical=surgical,
        nodes=nodes,
        scan_bottom=scan_bottom,
        scan_top=scan_top,
    )


def randomise_domain(rng: np.random.Generator, params: PhantomParams) -> PhantomParams:
    """Domain randomisation (a site's ``domain_randomised``): organs and breast sizes.

    Drawn from their own stream after every other parameter, so the rest of the phantom is the
    one the site would give without it. Breasts are redrawn from small and flat (projection
    15 mm, radius 40 mm) to large (projection 100 mm); the liver dome lies from 10 mm below to
    half a breast length above the lowest breast bottom, and the scan reaches up to 60 mm
    further into the upper abdomen.
    """
    body = params.body
    breasts = {
        side: replace(
            breast,
            projection=uniform(rng, (15, 100)),
            radius=min(uniform(rng, (40, 85)), breast.centre_frac * body.a - 15.0),
        )
        for side, breast in params.breasts.items()
    }
    length = min(b.length for b in breasts.values())
    organs = OrganParams(
        liver_top=uniform(rng, (-10.0, 0.5 * length)),
        liver_semi=(
            uniform(rng, (0.45, 0.65)) * body.a,
            uniform(rng, (0.55, 0.8)) * body.b,
            uniform(rng, (80, 130)),
        ),
        liver_u=-uniform(rng, (0.15, 0.35)) * body.a,
        left_drop=uniform(rng, (8, 30)),
        spleen_semi=(uniform(rng, (25, 40)), uniform(rng, (35, 55)), uniform(rng, (40, 60))),
        stomach_gas=uniform(rng, (0, 35)),
    )
    scan_bottom = params.scan_bottom - uniform(rng, (0, 60))  # more of the upper abdomen
    mediastinum = _sample_mediastinum(rng, body)
    # Drawn last: every other value stays what it was before pairing existed; a paired
    # phantom changes one breast and, to keep the spec's scan extent, the scan limits.
    paired = _pair_breasts(rng, breasts, body.a) if rng.random() < PAIRED_BREASTS else breasts
    scan_top = (
        params.scan_top + max(b.top for b in paired.values()) - max(b.top for b in breasts.values())
    )
    scan_bottom += min(b.bottom for b in paired.values()) - min(b.bottom for b in breasts.values())
    return replace(
        params,
        breasts=paired,
        organs=organs,
        scan_bottom=scan_bottom,
        scan_top=scan_top,
        mediastinum=mediastinum,
    )


PAIRED_BREASTS = 0.7
"""Share of domain-randomised phantoms whose two breasts are alike (:func:`_pair_breasts`)."""


def _pair_breasts(
    rng: np.random.Generator, breasts: dict[Side, BreastParams], a: float
) -> dict[Side, BreastParams]:
    """Both breasts drawn once per case, as the spec's "sampled uniformly per case" reads.

    One side, chosen at random, keeps its breast; the other gets its mirror image within a
    patient's usual asymmetry: cranial end within 4 mm, length within 6 %, centre within
    0.02 a, radius within 4 mm (still at least 15 mm from the midline; ``a`` is the body's
    lateral semi-axis), projection within 15 %. Its tissue (HU, glandular share) stays its
    own. A mastectomy side's footprint then matches the contralateral breast, as RTOG's atlas
    has the chest wall take its borders from it.
    """
    keep = Side.LEFT if rng.random() < 0.5 else Side.RIGHT
    src = breasts[keep]
    other = Side.RIGHT if keep is Side.LEFT else Side.LEFT
    centre_frac = src.centre_frac + uniform(rng, (-0.02, 0.02))
    mirrored = replace(
        breasts[other],
        centre_frac=centre_frac,
        length=src.length * uniform(rng, (0.94, 1.06)),
        top=src.top + uniform(rng, (-4.0, 4.0)),
        radius=min(src.radius + uniform(rng, (-4.0, 4.0)), centre_frac * a - 15.0),
        projection=src.projection * uniform(rng, (0.85, 1.15)),
    )
    return {side: src if side is keep else mirrored for side in breasts}  # order kept


def _sample_mediastinum(rng: np.random.Generator, body: BodyParams) -> MediastinumParams:
    """Great vessels, trachea and esophagus at their usual places, with random sizes.

    Drawn after every other domain parameter. Vessels lie at least 18 mm behind the inner
    surface of the anterior chest wall, so they never cover the internal mammary nodes (their
    axis 8 mm behind it, radius 8): ascending aorta right-anterior, superior vena cava on the
    right, pulmonary trunk left-anterior (around the heart's top), descending aorta left of
    the vertebral body over the whole scan.
    """
    front = -body.b + body.wall + 18.0  # v of the vessels' front (anterior is negative v)
    spine_front = body.b - body.fat - 52.0 - 2.0 * body.vertebra_radius  # v, vertebral body
    ascending = uniform(rng, (12.0, 17.0))
    svc = uniform(rng, (8.0, 12.0))
    trunk = uniform(rng, (11.0, 15.0))
    descending = uniform(rng, (9.0, 13.0))
    vessels = (
        (-uniform(rng, (0.0, 12.0)), front + ascending + uniform(rng, (0, 8)), ascending,
         -20.0, uniform(rng, (40.0, 80.0))),
        (-uniform(rng, (22.0, 34.0)), front + svc + uniform(rng, (0, 10)), svc,
         -10.0, uniform(rng, (60.0, 120.0))),
        (uniform(rng, (8.0, 22.0)), front + trunk + uniform(rng, (0, 6)), trunk,
         -uniform(rng, (10.0, 25.0)), uniform(rng, (10.0, 30.0))),
        (body.vertebra_radius + uniform(rng, (4.0, 12.0)), spine_front + descending, descending,
         -400.0, 400.0),
    )  # fmt: skip
    trachea_r = uniform(rng, (8.0, 11.0))
    esophagus_r = uniform(rng, (6.0, 8.0))
    return MediastinumParams(
        vessels=vessels,
        vessel_hu=uniform(rng, (35.0, 250.0)),
        trachea=(uniform(rng, (-4.0, 4.0)), spine_front - 2 * esophagus_r - trachea_r, trachea_r),
        carina=uniform(rng, (10.0, 40.0)),
        esophagus=(uniform(rng, (0.0, 8.0)), spine_front - esophagus_r - 1.0, esophagus_r),
        sternum_depth=uniform(rng, (14.0, 22.0)),
        # Drawn last: the phantoms drawn before this field existed keep every other value.
        anterior_lung=(
            (uniform(rng, (8.0, 22.0)), uniform(rng, (15.0, 40.0))) if rng.random() < 0.6 else None
        ),
    )
