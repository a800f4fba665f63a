"""A synthetic department's export: its CTs and its clinicians' structure sets, as a TPS
would hand them over (issue 24, site adaptation).

The department is phantom site ``S`` (:data:`model.lab.phantoms.sites.SITES`): site A's
scanners, its own CTV convention (internal mammary nodes only for N2-N3, a supraclavicular
CTV reaching 15 mm higher than the spec's) and its own ROI names. Its structure sets are
written by **rt-utils** (an empty RTROIInterpretedType, one contour per boundary, approximated
polygons), the way many research exports are, with what a planning export also carries:
one PTV per side, the BODY outline, a ``z_`` helper ring and the union of the CTVs. The
structure map that reads them is :data:`SITE_STRUCTURE_MAP`.

Layout of an export folder (what ``llmctv dataset check``, ``train`` and ``commission`` read)::

    DATA/clinical.csv              one row per case (model.text.clinical CSV format)
    DATA/<case>/CT/CT_0001.dcm ... the CT (<case>: case0001 ..., PatientID S0001 ...)
    DATA/<case>/RS_<case>.dcm      the department's RTSTRUCT (rt-utils)

Geometry: masks are ``(k, j, i)`` on the CT grid (LPS mm); rt-utils wants ``(row j, column
i, slice)`` with its slices sorted by their position along the slice normal, and gets that
order from the written CT's ImagePositionPatient, never by flipping arrays by hand.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from scipy.ndimage import distance_transform_edt

from model.errors import ConfigurationError
from model.files import staged_folder
from model.lab.phantoms.case import PhantomCase, generate_case
from model.lab.phantoms.cohort import case_id_for, case_seed
from model.lab.phantoms.ctwriter import ct_datasets, write_ct_series
from model.lab.phantoms.rules import (
    ROI_AXILLA,
    ROI_BREAST,
    ROI_CHEST_WALL,
    ROI_IMN,
    ROI_SCF,
    side_volumes,
)
from model.lab.phantoms.sites import get_site
from model.text.clinical import Side, write_clinical_csv

BoolArray = npt.NDArray[np.bool_]

DEPARTMENT_SITE = "S"
"""The phantom site of the synthetic department."""

SITE_NAMES: dict[str, str] = {
    ROI_BREAST: "CTV Breast",
    ROI_CHEST_WALL: "CTV CW",
    ROI_AXILLA: "CTVn Ax",
    ROI_SCF: "CTVn SCV",
    ROI_IMN: "CTVn IMC",
}
"""The department's ROI names (without the side) for the generator's sub-volumes."""

SIDE_SUFFIX = {Side.LEFT: " Lt", Side.RIGHT: " Rt"}
UNION_NAME = "CTV Total"
PTV_MARGIN_MM = 5.0
RING_MM = (5.0, 20.0)

SITE_STRUCTURE_MAP = """\
# The synthetic department's structure map (model/lab/department.py): its own ROI names,
# side written " Lt" / " Rt", planning helpers ignored, the union reported beside the rest.
version = 1

[sides]
suffixes = [[" Lt", " Rt"]]
prefixes = []

[union]
patterns = ["CTV Total"]

[ignore]
patterns = ["PTV*", "BODY", "z_*"]

[structures.breast]
patterns = ["CTV Breast"]

[structures.chest_wall]
patterns = ["CTV CW"]

[structures.axilla]
patterns = ["CTVn Ax"]

[structures.scf]
patterns = ["CTVn SCV"]

[structures.imn]
patterns = ["CTVn IMC"]
n_stages = ["2", "3"]   # this department treats the internal mammary nodes for N2-N3 only
"""

SITE_OUTPUT_NAMES: dict[str, str] = {
    "breast": SITE_NAMES[ROI_BREAST],
    "chest_wall": SITE_NAMES[ROI_CHEST_WALL],
    "axilla": SITE_NAMES[ROI_AXILLA],
    "scf": SITE_NAMES[ROI_SCF],
    "imn": SITE_NAMES[ROI_IMN],
}
"""``llmctv models register --roi-name`` values that give the department's own names."""


@dataclass(frozen=True)
class ExportedCase:
    """One case of an export: its folder, RTSTRUCT and the ROIs written (name -> voxels)."""

    case_id: str
    directory: Path
    rtstruct: Path
    rois: dict[str, int]


def _dilated(mask: BoolArray, spacing: tuple[float, float, float], mm: float) -> BoolArray:
    """``mask`` grown by ``mm`` (Euclidean, voxel centres; spacing ``(dk, dj, di)`` mm)."""
    if not mask.any():
        return mask.copy()
    distance = distance_transform_edt(~mask, sampling=spacing)
    return np.asarray(distance <= mm)


def department_rois(case: PhantomCase) -> dict[str, BoolArray]:
    """The structure set the department's clinicians would draw for ``case``.

    Per treated side, the sub-volumes of the site's convention under the site's names with
    the side suffix; then the union ``CTV Total``, a PTV per side (CTV + 5 mm, inside the
    body), a ``z_`` ring 5-20 mm around the PTVs and ``BODY``. Empty structures are left out.
    """
    convention = case.profile.convention
    anatomy = case.anatomy
    spacing = case.grid.spacing
    rois: dict[str, BoolArray] = {}
    union = np.zeros(anatomy.shape, dtype=bool)
    ptvs: dict[str, BoolArray] = {}
    for diagnosis in case.clinical.diagnoses:
        suffix = SIDE_SUFFIX[diagnosis.side]
        side_ctv = np.zeros(anatomy.shape, dtype=bool)
        for roi, mask in side_volumes(anatomy, diagnosis, convention).items():
            if mask.any():
                rois[SITE_NAMES[roi] + suffix] = mask
                side_ctv |= mask
        union |= side_ctv
        ptvs["PTV" + suffix] = _dilated(side_ctv, spacing, PTV_MARGIN_MM) & anatomy.body
    if union.any():
        rois[UNION_NAME] = union
    rois.update(ptvs)
    all_ptv = np.logical_or.reduce(list(ptvs.values())) if ptvs else union
    ring = _dilated(all_ptv, spacing, RING_MM[1]) & ~_dilated(all_ptv, spacing, RING_MM[0])
    rois["z_Ring"] = ring & anatomy.body
    rois["BODY"] = anatomy.body.copy()
    return {name: mask for name, mask in rois.items() if mask.any()}


def write_rtutils_rtstruct(
    ct_folder: Path, datasets: list[Dataset], rois: dict[str, BoolArray], path: Path
) -> None:
    """Write ``rois`` with rt-utils on the CT written to ``ct_folder`` from ``datasets``.

    ``datasets`` are the CT slices in ``k`` order and the masks ``(k, j, i)``. rt-utils sorts
    the series by position along the slice normal; the masks are put in that order from the
    same datasets' ImagePositionPatient and ImageOrientationPatient.
    """
    from rt_utils import RTStructBuilder

    if not datasets:
        raise ConfigurationError(f"no CT slices for {ct_folder}")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    position = [
        float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds in datasets
    ]
    order = np.argsort(position, kind="stable")
    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # rt-utils sets attributes pydicom 3 deprecates, every file
    try:
        builder = RTStructBuilder.create_new(dicom_series_path=str(ct_folder))
        for name, mask in rois.items():
            builder.add_roi(mask=np.ascontiguousarray(mask[order].transpose(1, 2, 0)), name=name)
        builder.save(str(path))
    finally:
        quiet.setLevel(level)


def write_department_export(
    out: Path,
    cases: int,
    seed: int,
    scale: float = 0.5,
    first: int = 1,
    progress: Callable[[ExportedCase], None] | None = None,
) -> list[ExportedCase]:
    """Generate ``cases`` patients of the department and write its export into ``out``.

    Case folders and CSV ids are pseudonyms (``case0001`` ...; the PatientID is ``S0001``
    ...). ``first`` is the index of the first case, so that a training export
    and a test export of the same department never share a patient. The export is written
    into a temporary sibling folder and renamed into place; ``out`` must not exist or be
    empty.
    """
    profile = get_site(DEPARTMENT_SITE)
    out = Path(out)
    if cases < 1 or first < 1:
        raise ConfigurationError("cases and first must be at least 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigurationError(f"output folder {out} exists and is not empty")
    written: list[ExportedCase] = []
    records = []
    with staged_folder(out) as staging:
        for index in range(first, first + cases):
            patient_id = case_id_for(profile.name, index)
            case = generate_case(
                patient_id, profile.name, case_seed(seed, profile.name, index), scale
            )
            case_id = f"case{index:04d}"  # a pseudonym, not the PatientID
            folder = staging / case_id
            datasets = ct_datasets(case)
            write_ct_series(datasets, folder / "CT")
            rois = department_rois(case)
            rtstruct = folder / f"RS_{case_id}.dcm"
            with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints every save
                write_rtutils_rtstruct(folder / "CT", datasets, rois, rtstruct)
            records.append((case_id, case.clinical))
            exported = ExportedCase(
                case_id=case_id,
                directory=out / case_id,
                rtstruct=out / case_id / rtstruct.name,
                rois={name: int(mask.sum()) for name, mask in rois.items()},
            )
            written.append(exported)
            if progress is not None:
                progress(exported)
        write_clinical_csv(staging / "clinical.csv", records)
    return written
