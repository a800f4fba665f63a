"""Scanner profiles ("sites") and the clinical mixes of the synthetic breast cohorts.

Implements the "Scanner profiles" and "Clinical record" sections of
``shared/specs/breast-phantom.md`` (v1.1). Nothing here touches image geometry; the
numbers are millimetres and Hounsfield units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from model.errors import ConfigurationError
from model.text.clinical import ClinicalRecord, Diagnosis, Pathology, Side, Surgery

SPEC_VERSION = "1.1"
"""Version of ``breast-phantom.md`` this package implements."""


@dataclass(frozen=True)
class CtvConvention:
    """How a department draws the nodal CTV: the spec's rule, or a site's own guideline.

    Attributes
    ----------
    name
        ``"spec"`` (``breast-phantom.md``) or a site's name.
    imn_n_stages
        Base N stages (``"1"``, ``"2"``, ``"3"``; a/b/c suffixes ignored) whose nodal CTV
        includes the internal mammary nodes. The spec: N1-N3. Many centres: N2-N3 only.
    scf_top_mm
        Cranial end of the supraclavicular CTV above the breast top (mm; the spec: 70). Its
        caudal end stays at 20 mm.
    scan_above_top
        Range (mm) of the scan's extent above the highest breast top (the spec: 70-100); a
        convention whose SCF reaches higher scans higher, as its CT protocol would.
    """

    name: str
    imn_n_stages: frozenset[str] = frozenset({"1", "2", "3"})
    scf_top_mm: float = 70.0
    scan_above_top: tuple[float, float] = (70.0, 100.0)

    def treats_imn(self, n_stage: str) -> bool:
        """Whether a node-positive side of ``n_stage`` (e.g. ``"2a"``) gets the IMN CTV."""
        return n_stage[:1] in self.imn_n_stages


SPEC_CONVENTION = CtvConvention(name="spec")
"""The ground-truth rule of ``breast-phantom.md``."""

IMN_N2_CONVENTION = CtvConvention(
    name="imn-n2-scf-high",
    imn_n_stages=frozenset({"2", "3"}),
    scf_top_mm=85.0,
    scan_above_top=(90.0, 115.0),
)
"""A department unlike the spec: IMN only for N2-N3, the SCF CTV 15 mm higher."""


@dataclass(frozen=True)
class SiteProfile:
    """One scanner profile and clinical mix.

    Attributes
    ----------
    name
        ``"A"`` (internal) or ``"B"`` (external).
    pixel_spacing
        Range (mm) of the in-plane spacing at a 512 matrix.
    slice_thicknesses
        Slice thicknesses (mm) to choose from, uniformly; slices are contiguous.
    noise_sigma
        Range of the Gaussian noise sigma (HU).
    hu_offset
        Range of the calibration offset (HU) added to every voxel.
    laterality
        Probabilities of left only, right only, both.
    n_stage
        Probabilities of N0, N1mi, N1, N2, N3.
    mastectomy
        Probability of a total mastectomy (else breast-conserving surgery), per side.
    unsigned_storage
        ``True``: uint16 pixels with RescaleIntercept -1024 (12 bits stored);
        ``False``: int16 pixels with RescaleIntercept 0.
    acquisition_extras
        Draw couch, arms, contrast and numbering order (:mod:`model.lab.phantoms.acquisition`).
    convention
        The CTV rule the site's clinicians follow (:class:`CtvConvention`).
    domain_randomised
        Draw abdominal organs under the lungs (a liver dome that may reach the caudal breast
        slices, spleen, stomach gas) and breasts from small and flat to large
        (:func:`model.lab.phantoms.params.randomise_domain`); training data only.
    """

    name: str
    pixel_spacing: tuple[float, float]
    slice_thicknesses: tuple[float, ...]
    noise_sigma: tuple[float, float]
    hu_offset: tuple[float, float]
    laterality: tuple[float, float, float]
    n_stage: tuple[float, float, float, float, float]
    mastectomy: float
    unsigned_storage: bool
    acquisition_extras: bool = False
    domain_randomised: bool = False
    convention: CtvConvention = SPEC_CONVENTION


SITES: dict[str, SiteProfile] = {
    "A": SiteProfile(
        name="A",
        pixel_spacing=(0.9, 1.1),
        slice_thicknesses=(3.0,),
        noise_sigma=(10.0, 20.0),
        hu_offset=(0.0, 0.0),
        laterality=(0.50, 0.46, 0.04),
        n_stage=(0.40, 0.06, 0.32, 0.14, 0.08),
        mastectomy=0.34,
        unsigned_storage=True,
    ),
    "B": SiteProfile(
        name="B",
        pixel_spacing=(1.1, 1.4),
        slice_thicknesses=(2.5, 5.0),
        noise_sigma=(20.0, 40.0),
        hu_offset=(-20.0, 20.0),
        laterality=(0.50, 0.50, 0.0),
        n_stage=(0.66, 0.04, 0.17, 0.09, 0.04),
        mastectomy=0.09,
        unsigned_storage=False,
    ),
    # Robustness (not in the spec's table): what departments vary, N1mi and bilateral cases
    # more often, couch, arms, contrast and numbering (model.lab.phantoms.acquisition).
    "R": SiteProfile(
        name="R",
        pixel_spacing=(0.6, 1.4),
        slice_thicknesses=(1.5, 2.0, 2.5, 3.0, 4.0, 5.0),
        noise_sigma=(5.0, 45.0),
        hu_offset=(-30.0, 30.0),
        laterality=(0.46, 0.46, 0.08),
        n_stage=(0.30, 0.15, 0.30, 0.15, 0.10),
        mastectomy=0.35,
        unsigned_storage=False,
        acquisition_extras=True,
    ),
}

# Robustness, bilateral only: each side's N stage drawn independently, so that the
# counterfactual notes (one side's N switched) teach per-side reading of the note.
SITES["RB"] = replace(
    SITES["R"],
    name="RB",
    laterality=(0.0, 0.0, 1.0),
    n_stage=(0.35, 0.15, 0.30, 0.12, 0.08),
    mastectomy=0.2,
)

# Domain randomisation (training only, issue 22): site R's scanners plus anatomy the spec
# leaves out or keeps narrow, so that the network does not learn "soft tissue under the lung
# is breast" or one breast size.
SITES["D"] = replace(SITES["R"], name="D", domain_randomised=True)

_N_BASE = ("0", "1mi", "1", "2", "3")
_N_SUFFIXES = {"1": ("a", "b", "c"), "2": ("a", "b"), "3": ("a", "b", "c")}
_T_BASE = ("is", "1", "2", "3", "4")
_T_WEIGHTS = (0.05, 0.40, 0.40, 0.10, 0.05)
_T_SUFFIXES = {"1": ("mi", "a", "b", "c"), "4": ("a", "b", "c", "d")}
_SUFFIX_PROBABILITY = 0.3


def get_site(name: str) -> SiteProfile:
    """Return the profile of site ``name`` (``"A"`` or ``"B"``, case-insensitive).

    Raises
    ------
    ConfigurationError
        For an unknown site.
    """
    profile = SITES.get(name.strip().upper())
    if profile is None:
        raise ConfigurationError(f"unknown phantom site {name!r}; expected one of {sorted(SITES)}")
    return profile


def uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """One uniform draw in ``[bounds[0], bounds[1]]`` as a Python float."""
    return float(rng.uniform(bounds[0], bounds[1]))


def _pick(rng: np.random.Generator, options: Sequence[str], weights: Sequence[float]) -> str:
    """One of ``options`` drawn with (normalised) ``weights``."""
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _with_suffix(
    rng: np.random.Generator, base: str, suffixes: Mapping[str, tuple[str, ...]]
) -> str:
    """``base`` or, with probability 0.3, ``base`` plus one of its suffixes."""
    choices = suffixes.get(base)
    if choices is None or rng.random() >= _SUFFIX_PROBABILITY:
        return base
    return base + choices[int(rng.integers(len(choices)))]


def sample_sides(rng: np.random.Generator, profile: SiteProfile) -> tuple[Side, ...]:
    """Treated sides: ``(LEFT,)``, ``(RIGHT,)`` or ``(LEFT, RIGHT)`` per the site mix."""
    which = _pick(rng, ("left", "right", "both"), profile.laterality)
    if which == "both":
        return (Side.LEFT, Side.RIGHT)
    return (Side(which),)


def sample_diagnosis(rng: np.random.Generator, profile: SiteProfile, side: Side) -> Diagnosis:
    """One treated side: surgery and N stage per the site mix; T stage plausible."""
    surgery = (
        Surgery.TOTAL_MASTECTOMY if rng.random() < profile.mastectomy else Surgery.BREAST_CONSERVING
    )
    n_stage = _with_suffix(rng, _pick(rng, _N_BASE, profile.n_stage), _N_SUFFIXES)
    t_stage = _with_suffix(rng, _pick(rng, _T_BASE, _T_WEIGHTS), _T_SUFFIXES)
    return Diagnosis(side=side, surgery=surgery, t_stage=t_stage, n_stage=n_stage)


def sample_clinical(rng: np.random.Generator, profile: SiteProfile) -> ClinicalRecord:
    """A clinical record: sides, per-side surgery/T/N, age, pathology, chemotherapy.

    Age, pathology and neoadjuvant chemotherapy are recorded only; the CTV rule ignores them.
    """
    diagnoses = tuple(sample_diagnosis(rng, profile, side) for side in sample_sides(rng, profile))
    age = int(np.clip(round(rng.normal(53.0, 11.0)), 25, 90))
    if any(d.t_stage == "is" for d in diagnoses):
        pathology = Pathology.DCIS
    else:
        pathology = Pathology.ILC if rng.random() < 0.15 else Pathology.IDC
    node_positive = any(d.node_positive for d in diagnoses)
    chemo = bool(rng.random() < (0.45 if node_positive else 0.15))
    return ClinicalRecord(
        diagnoses=diagnoses, age=age, pathology=pathology, neoadjuvant_chemotherapy=chemo
    )


# A synthetic department for site adaptation (issue 24): site A's scanners, more node-positive
# patients, and its own convention (IMN only for N2-N3, a higher SCF). Not in the spec; its
# cases teach and test fine-tuning to a department, never the shipped model.
SITES["S"] = replace(
    SITES["A"],
    name="S",
    laterality=(0.5, 0.5, 0.0),
    n_stage=(0.25, 0.05, 0.35, 0.20, 0.15),
    mastectomy=0.3,
    convention=IMN_N2_CONVENTION,
)
