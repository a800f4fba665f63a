"""One synthetic case: generation from a seed and the text perturbations of the spec.

Coordinates: the case's :class:`~model.imaging.geometry.Grid` places the ``(k, j, i)`` arrays
in DICOM LPS millimetres (axial, ``ImageOrientationPatient = [1,0,0,0,1,0]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from model.errors import ConfigurationError
from model.imaging.geometry import Grid, Volume
from model.lab.phantoms.acquisition import sample_extras
from model.lab.phantoms.anatomy import Anatomy, build_anatomy, make_grid
from model.lab.phantoms.params import randomise_domain, sample_params
from model.lab.phantoms.render import I16Array, render_hu
from model.lab.phantoms.rules import ctv_masks
from model.lab.phantoms.shapes import BoolArray
from model.lab.phantoms.sites import SPEC_VERSION, SiteProfile, get_site, sample_clinical
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery

LATERALITY_FLIP = "laterality_flip"
N_SWITCH = "n_switch"
PERTURBATIONS = (LATERALITY_FLIP, N_SWITCH)
"""Text perturbations of the spec (the paper's Fig. 5)."""

_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
_UID_NAMESPACE = "llmctv-phantom"


@dataclass(frozen=True)
class CaseUids:
    """DICOM UIDs of a case's CT; ``instances[k]`` is the SOPInstanceUID of slice ``k``."""

    study: str
    series: str
    frame_of_reference: str
    instances: tuple[str, ...]


@dataclass
class PhantomCase:
    """A generated case.

    Attributes
    ----------
    hu
        CT values as stored (HU, int16), indexed ``(k, j, i)`` on :attr:`grid`.
    grid
        LPS placement of :attr:`hu` and of the masks.
    masks
        Ground truth by ROI name: ``CTV`` then the non-empty sub-volumes; ``(k, j, i)`` bool.
    clinical
        The clinical record the ground truth follows.
    anatomy
        Geometry used to recompute the ground truth for another record on the same CT.
    perturbation
        ``None`` for a generated case, else the text perturbation applied to it.
    """

    case_id: str
    site: str
    rng_seed: int
    scale: float
    grid: Grid
    hu: I16Array
    masks: dict[str, BoolArray]
    clinical: ClinicalRecord
    anatomy: Anatomy
    uids: CaseUids
    perturbation: str | None = None

    @property
    def profile(self) -> SiteProfile:
        """The scanner profile of the case's site."""
        return get_site(self.site)

    @property
    def volume(self) -> Volume:
        """The CT as a float32 :class:`~model.imaging.geometry.Volume` in HU."""
        return Volume(array=self.hu.astype(np.float32), grid=self.grid)

    def volumes_cc(self) -> dict[str, float]:
        """Volume (cc) of every ground-truth ROI."""
        voxel_cc = float(np.prod(self.grid.spacing)) / 1000.0
        return {name: round(float(mask.sum()) * voxel_cc, 2) for name, mask in self.masks.items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the case (for ``cohort.json``)."""
        scanner = self.anatomy.params.scanner
        return {
            "case_id": self.case_id,
            "rng_seed": self.rng_seed,
            "sides": [d.side.value for d in self.clinical.diagnoses],
            "bilateral": len(self.clinical.diagnoses) == 2,
            "diagnoses": [
                {**d.model_dump(mode="json"), "node_positive": d.node_positive}
                for d in self.clinical.diagnoses
            ],
            "age": self.clinical.age,
            "pathology": None if self.clinical.pathology is None else self.clinical.pathology.value,
            "neoadjuvant_chemotherapy": self.clinical.neoadjuvant_chemotherapy,
            "prompt": self.clinical.prompt_text(),
            "perturbations": list(eligible_perturbations(self.clinical)),
            "geometry": {
                "shape_kji": list(self.grid.shape),
                "spacing_kji_mm": list(self.grid.spacing),
                "origin_lps_mm": list(self.grid.origin),
                "pixel_spacing_at_512_mm": scanner.pixel_spacing,
            },
            "volumes_cc": self.volumes_cc(),
            "parameters": self.anatomy.params.summary(),
            "study_instance_uid": self.uids.study,
            "series_instance_uid": self.uids.series,
        }


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is usable as a folder name and PatientID, else raise."""
    if not _CASE_ID.match(case_id):
        raise ConfigurationError(
            f"case id {case_id!r} must be 1-48 letters, digits, '_', '-' or '.', not starting"
            " with a punctuation mark"
        )
    return case_id


def check_scale(scale: float) -> float:
    """Return ``scale`` if it lies in (0, 1], else raise :class:`ConfigurationError`."""
    if not 0.0 < scale <= 1.0:
        raise ConfigurationError(f"scale must lie in (0, 1], got {scale}")
    return float(scale)


def case_uids(case_id: str, site: str, rng_seed: int, scale: float, n_slices: int) -> CaseUids:
    """Deterministic UIDs from the case identity (same inputs, same UIDs)."""
    base = [_UID_NAMESPACE, SPEC_VERSION, site, case_id, str(rng_seed)]
    series = [*base, f"scale={scale!r}"]
    return CaseUids(
        study=str(generate_uid(entropy_srcs=[*base, "study"])),
        series=str(generate_uid(entropy_srcs=[*series, "series"])),
        frame_of_reference=str(generate_uid(entropy_srcs=[*series, "frame"])),
        instances=tuple(
            str(generate_uid(entropy_srcs=[*series, "ct", str(k)])) for k in range(n_slices)
        ),
    )


def generate_case(
    case_id: str,
    site: str,
    rng_seed: int,
    scale: float = 1.0,
    clinical: ClinicalRecord | None = None,
) -> PhantomCase:
    """Generate one case, deterministically for ``(case_id, site, rng_seed, scale)``.

    Parameters
    ----------
    case_id
        Folder name and PatientID (e.g. ``"A0001"``).
    site
        ``"A"`` or ``"B"`` (scanner profile and clinical mix).
    rng_seed
        Non-negative seed; anatomy and record do not depend on ``scale``.
    scale
        Fraction of the 512 matrix; the field of view in mm is unchanged.
    clinical
        Use this record instead of the sampled one (the anatomy stays the same: the record
        is still drawn, from its own random stream, and discarded).

    Returns
    -------
    PhantomCase
        CT (LPS grid, ``(k, j, i)``), ground-truth masks and clinical record.
    """
    profile = get_site(site)
    check_case_id(case_id)
    check_scale(scale)
    if rng_seed < 0:
        raise ConfigurationError(f"rng_seed must be non-negative, got {rng_seed}")
    streams = np.random.SeedSequence(rng_seed).spawn(5)
    rngs = [np.random.default_rng(s) for s in streams]
    clinical_rng, params_rng, texture_rng, noise_rng, extras_rng = rngs
    sampled = sample_clinical(clinical_rng, profile)
    clinical = sampled if clinical is None else clinical
    params = sample_params(params_rng, profile)
    if profile.acquisition_extras:
        params = replace(params, extras=sample_extras(extras_rng))
    if profile.domain_randomised:
        params = randomise_domain(extras_rng, params)
    grid = make_grid(params, scale)
    surgeries = {d.side: d.surgery for d in clinical.diagnoses}
    anatomy = build_anatomy(params, grid, surgeries)
    hu = render_hu(anatomy, texture_rng, noise_rng)
    return PhantomCase(
        case_id=case_id,
        site=profile.name,
        rng_seed=rng_seed,
        scale=scale,
        grid=grid,
        hu=hu,
        masks=ctv_masks(anatomy, clinical, profile.convention),
        clinical=clinical,
        anatomy=anatomy,
        uids=case_uids(case_id, profile.name, rng_seed, scale, grid.shape[0]),
    )


def eligible_perturbations(record: ClinicalRecord) -> tuple[str, ...]:
    """The perturbations the spec allows for ``record``.

    Laterality flip: unilateral breast-conserving cases; N-stage switch: unilateral cases.
    """
    if len(record.diagnoses) != 1:
        return ()
    if record.diagnoses[0].surgery is Surgery.BREAST_CONSERVING:
        return (LATERALITY_FLIP, N_SWITCH)
    return (N_SWITCH,)


def perturbed_record(record: ClinicalRecord, kind: str) -> ClinicalRecord:
    """The record with the text perturbation ``kind`` applied.

    ``laterality_flip`` moves the diagnosis to the other side; ``n_switch`` turns N0/N1mi
    into N1 and N1-N3 into N0.

    Raises
    ------
    ConfigurationError
        For an unknown kind or a record the kind does not apply to.
    """
    if kind not in PERTURBATIONS:
        raise ConfigurationError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")
    if kind not in eligible_perturbations(record):
        raise ConfigurationError(
            f"perturbation {kind!r} does not apply to {record.prompt_text()!r}"
        )
    d = record.diagnoses[0]
    if kind == LATERALITY_FLIP:
        other = Side.RIGHT if d.side is Side.LEFT else Side.LEFT
        new = Diagnosis(side=other, surgery=d.surgery, t_stage=d.t_stage, n_stage=d.n_stage)
    else:
        n_stage = "0" if d.node_positive else "1"
        new = Diagnosis(side=d.side, surgery=d.surgery, t_stage=d.t_stage, n_stage=n_stage)
    return ClinicalRecord.model_validate({**record.model_dump(), "diagnoses": [new.model_dump()]})


def side_n_switched(case: PhantomCase, side: Side) -> PhantomCase:
    """A bilateral case with the N stage of ``side`` switched (N0/N1mi <-> N1, N1-N3 -> N0).

    Not one of the spec's perturbations (those are for one-sided cases): training data that
    teaches the network to read each side's N stage of a bilateral note. Same CT.
    """
    diagnoses = tuple(
        d.model_copy(update={"n_stage": "0" if d.node_positive else "1"}) if d.side is side else d
        for d in case.clinical.diagnoses
    )
    record = case.clinical.model_copy(update={"diagnoses": diagnoses})
    kind = f"n_switch_{side.value}"
    return replace(
        case,
        clinical=record,
        masks=ctv_masks(case.anatomy, record, case.profile.convention),
        perturbation=kind,
    )


def perturb(case: PhantomCase, kind: str) -> PhantomCase:
    """The case with a perturbed record and the ground truth recomputed on the SAME CT.

    The CT (``hu``, grid, UIDs) is shared with ``case``; only ``clinical``, ``masks`` and
    ``perturbation`` change.
    """
    record = perturbed_record(case.clinical, kind)
    return replace(
        case,
        clinical=record,
        masks=ctv_masks(case.anatomy, record, case.profile.convention),
        perturbation=kind,
    )
