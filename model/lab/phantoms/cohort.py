"""Writing phantom cases and cohorts to disk.

Layout of a cohort folder::

    out/<case_id>/ct/CT_0001.dcm ...   CT Image Storage, one file per axial slice
    out/<case_id>/rtstruct.dcm         ground truth: CTV + sub-volumes, on that CT
    out/clinical.csv                   one row per case (model.text.clinical CSV format)
    out/cohort.json                    site, seed, scale, spec version, per-case parameters

Geometry of the written files: DICOM LPS millimetres; masks ``(k, j, i)`` on the CT grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from model.dicom.rtstruct import (
    ReferencedSeries,
    RoiInterpretedType,
    RoiSpec,
    WriterInfo,
    write_rtstruct,
)
from model.errors import ConfigurationError
from model.files import staged_folder
from model.lab.phantoms.case import (
    LATERALITY_FLIP,
    N_SWITCH,
    PhantomCase,
    check_scale,
    eligible_perturbations,
    generate_case,
    perturb,
    side_n_switched,
)
from model.lab.phantoms.ctwriter import ct_datasets, write_ct_series
from model.lab.phantoms.sites import SPEC_VERSION, get_site
from model.text.clinical import ClinicalRecord, Side, write_clinical_csv

GROUND_TRUTH_INFO = WriterInfo(
    model_name="llmctv-phantom",
    software_versions=(f"phantom-{SPEC_VERSION}",),
    series_description="Ground truth (synthetic phantom)",
    structure_set_label="PHANTOM GT",
    structure_set_description="Ground truth of a synthetic breast phantom (spec v1.1).",
)
_CREATED = datetime(2024, 1, 2, 9, 0, 0)
MAX_CASES = 100_000


@dataclass(frozen=True)
class WrittenCase:
    """Where one case went and what it holds (paths are final, not temporary)."""

    case_id: str
    directory: Path
    ct_files: tuple[Path, ...]
    rtstruct: Path
    clinical: ClinicalRecord
    summary: dict[str, Any]


def write_ground_truth(case: PhantomCase, path: Path, datasets: list[Dataset]) -> None:
    """Write the case's masks as an RTSTRUCT on the CT described by ``datasets``.

    ``CTV`` (interpreted type CTV) comes first, then every non-empty sub-volume.
    """
    reference = ReferencedSeries.from_datasets(datasets)
    rois = [
        RoiSpec(name=name, mask=mask, interpreted_type=RoiInterpretedType.CTV)
        for name, mask in case.masks.items()
    ]
    write_rtstruct(path, reference, rois, GROUND_TRUTH_INFO, created=_CREATED)


def write_case(case: PhantomCase, directory: Path) -> WrittenCase:
    """Write ``directory/ct/*.dcm`` and ``directory/rtstruct.dcm`` for one case."""
    datasets = ct_datasets(case)
    ct_files = write_ct_series(datasets, directory / "ct")
    rtstruct = directory / "rtstruct.dcm"
    write_ground_truth(case, rtstruct, datasets)
    return WrittenCase(
        case_id=case.case_id,
        directory=directory,
        ct_files=tuple(ct_files),
        rtstruct=rtstruct,
        clinical=case.clinical,
        summary=case.summary(),
    )


_VARIANT_SUFFIX = {
    LATERALITY_FLIP: "-flip",
    N_SWITCH: "-nswitch",
    "n_switch_left": "-nleft",
    "n_switch_right": "-nright",
}


def case_seed(seed: int, site: str, index: int) -> int:
    """The per-case seed of case ``index`` (1-based) of a cohort, from the cohort seed."""
    sequence = np.random.SeedSequence([seed, *(ord(c) for c in site), index])
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def case_id_for(site: str, index: int) -> str:
    """Folder name, PatientID and CSV ``case_id`` of case ``index``: e.g. ``A0001``."""
    return f"{site}{index:04d}"


def _check_cohort_args(out: Path, cases: int, seed: int, scale: float) -> None:
    """Raise :class:`ConfigurationError` for unusable cohort arguments."""
    if not 1 <= cases <= MAX_CASES:
        raise ConfigurationError(f"cases must lie in 1..{MAX_CASES}, got {cases}")
    if seed < 0:
        raise ConfigurationError(f"seed must be non-negative, got {seed}")
    check_scale(scale)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigurationError(f"output folder {out} exists and is not empty")


def _relocated(written: WrittenCase, staging: Path, out: Path) -> WrittenCase:
    """``written`` with its paths moved from the staging folder to ``out``."""

    def moved(path: Path) -> Path:
        return out / path.relative_to(staging)

    return WrittenCase(
        case_id=written.case_id,
        directory=moved(written.directory),
        ct_files=tuple(moved(p) for p in written.ct_files),
        rtstruct=moved(written.rtstruct),
        clinical=written.clinical,
        summary=written.summary,
    )


def _write_index(staging: Path, written: list[WrittenCase], header: dict[str, Any]) -> None:
    """Write ``clinical.csv`` and ``cohort.json``."""
    write_clinical_csv(staging / "clinical.csv", [(w.case_id, w.clinical) for w in written])
    document = {**header, "cases": [w.summary for w in written]}
    (staging / "cohort.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def write_cohort(
    out: Path,
    cases: int,
    site: str,
    seed: int,
    scale: float = 1.0,
    progress: Callable[[WrittenCase], None] | None = None,
    counterfactuals: bool = False,
) -> list[WrittenCase]:
    """Generate and write a cohort of ``cases`` phantoms of ``site`` into ``out``.

    The cohort is written into a temporary sibling folder and renamed to ``out`` at the end,
    so an interrupted run leaves no partial cohort. ``out`` must not exist or be empty.

    Parameters
    ----------
    out
        Target folder.
    cases
        Number of cases (ids ``<site>0001`` ...).
    site
        ``"A"`` or ``"B"``.
    seed
        Cohort seed (non-negative); the same arguments give the same files (RTSTRUCT
        instance UIDs excepted: the writer draws them fresh).
    scale
        Matrix scale in (0, 1]; geometry in mm does not change.
    progress
        Called after each case is written (with its temporary paths).
    counterfactuals
        Also write, for each case, every text perturbation the spec allows (laterality flip,
        N-stage switch) as an extra case on the same CT with the ground truth recomputed:
        ids ``<id>-flip`` and ``<id>-nswitch``. For training only: the same CT with two notes
        and two targets is what teaches a network that the text decides.

    Returns
    -------
    list[WrittenCase]
        One entry per case, with final paths.
    """
    profile = get_site(site)
    out = Path(out)
    _check_cohort_args(out, cases, seed, scale)
    with staged_folder(out) as staging:
        written = []
        for index in range(1, cases + 1):
            case_id = case_id_for(profile.name, index)
            case = generate_case(case_id, profile.name, case_seed(seed, profile.name, index), scale)
            variants = [case]
            if counterfactuals:
                variants += [perturb(case, kind) for kind in eligible_perturbations(case.clinical)]
                if len(case.clinical.diagnoses) == 2:
                    variants += [side_n_switched(case, side) for side in (Side.LEFT, Side.RIGHT)]
            for variant in variants:
                variant_id = case_id + _VARIANT_SUFFIX.get(variant.perturbation or "", "")
                variant = replace(variant, case_id=variant_id)
                written.append(write_case(variant, staging / variant_id))
                if progress is not None:
                    progress(written[-1])
        header = {
            "generator": "llmctv phantoms",
            "spec_version": SPEC_VERSION,
            "site": profile.name,
            "seed": seed,
            "scale": scale,
            "n_cases": cases,
            "counterfactuals": counterfactuals,
        }
        _write_index(staging, written, header)
    return [_relocated(w, staging, out) for w in written]
