"""One case of an export: its files, its CT, its structure set, and what the check finds.

Per case: every PatientID its DICOM files carry (headers only), the CT
(:func:`~model.dicom.series.read_ct_series`), the RTSTRUCT on the CT's frame of reference (the
first in file order, as training takes it), its references to the CT, its structures placed
on the CT (:mod:`model.dataset.structure_placement`) and their agreement with the clinical CSV
(:mod:`model.dataset.case_inventory`). PatientIDs stay in :class:`CaseResult`, which never
leaves the check (:mod:`model.dataset.patients` turns them into labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from model.dataset.case_inventory import CaseInventory, RoiFinding, check_clinical
from model.dataset.clinical_rows import CsvRow, n_category
from model.dataset.problems import CheckOptions, problem
from model.dataset.structure_map import StructureMap
from model.dataset.structure_placement import place_rois
from model.dicom.rtstruct.reader import StructureSet, read_structure_set
from model.dicom.series import PARSE_ERRORS, CtSeries, read_ct_series
from model.errors import LlmctvError


@dataclass
class CaseResult:
    """One checked case, with what must not leave the check: its PatientIDs, and its CSV line."""

    inventory: CaseInventory
    patient_ids: set[str]
    series_uid: str | None
    line: int


def scan_case_folder(case_dir: Path) -> tuple[list[Path], set[str]]:
    """The case's RTSTRUCT files and every PatientID its DICOM files carry (headers only)."""
    rtstructs: list[Path] = []
    patients: set[str] = set()
    for path in sorted(p for p in case_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["Modality", "PatientID"]
            )
        except PARSE_ERRORS:
            continue
        patient_id = str(ds.get("PatientID", "") or "").strip()
        if patient_id:
            patients.add(patient_id)
        if str(ds.get("Modality", "")) == "RTSTRUCT":
            rtstructs.append(path)
    return rtstructs, patients


def choose_structure_set(
    rtstruct_files: list[Path], ct: CtSeries, case: CaseInventory
) -> tuple[StructureSet | None, StructureSet | None]:
    """``(on the CT's frame, first readable)``; problems go to ``case``."""
    readable: list[StructureSet] = []
    for number, path in enumerate(rtstruct_files, start=1):
        try:
            readable.append(read_structure_set(path))
        except (LlmctvError, *PARSE_ERRORS) as exc:
            code = exc.code if isinstance(exc, LlmctvError) else "unreadable"
            case.problems.append(
                problem("rtstruct_unreadable", f"RTSTRUCT #{number}: [{code}]", case.case_id)
            )
    if not readable:
        case.problems.append(problem("no_rtstruct", "no readable RTSTRUCT", case.case_id))
        return None, None
    frame = ct.frame_of_reference_uid
    on_frame = [s for s in readable if s.frame_of_reference_uid == frame]
    if not on_frame:
        frames = ", ".join(sorted({s.frame_of_reference_uid for s in readable}))
        case.problems.append(
            problem(
                "frame_of_reference_mismatch",
                f"CT frame {frame}; RTSTRUCT frame(s) {frames}",
                case.case_id,
            )
        )
        return None, readable[0]
    if len(on_frame) > 1:
        case.problems.append(
            problem(
                "several_rtstructs",
                f"{len(on_frame)} RTSTRUCTs on the CT's frame; the first in file order is used",
                case.case_id,
            )
        )
    return on_frame[0], on_frame[0]


def check_references(structures: StructureSet, ct: CtSeries, case: CaseInventory) -> None:
    """The structure set's referenced series and contour images against the CT."""
    referenced = structures.referenced_series_instance_uid
    if referenced is not None and referenced != ct.series_instance_uid:
        case.problems.append(
            problem(
                "referenced_series_mismatch",
                f"RTSTRUCT references series {referenced}, the CT is {ct.series_instance_uid}",
                case.case_id,
            )
        )
    slices = set(ct.sop_instance_uids)
    foreign = sum(
        1
        for roi in structures.rois
        for contour in roi.contours
        if any(uid not in slices for uid in contour.referenced_sop_instance_uids)
    )
    if foreign:
        case.problems.append(
            problem(
                "contour_image_not_in_ct",
                f"{foreign} contours reference images not in the CT series",
                case.case_id,
            )
        )


def check_case(
    row: CsvRow, case_dir: Path, smap: StructureMap, options: CheckOptions
) -> CaseResult:
    """Inventory one case folder against its CSV row (its problems go into the inventory)."""
    case = CaseInventory(case_id=row.case_id, split=row.split)
    if row.record is not None:
        case.clinical = {
            d.side.letter: {
                "surgery": d.surgery.value,
                "t_stage": d.t_stage,
                "n_stage": d.n_stage,
                "category": n_category(d.n_stage),
            }
            for d in row.record.diagnoses
        }
    rtstruct_files, patients = scan_case_folder(case_dir)
    result = CaseResult(case, patients, None, row.line)
    if len(patients) > 1:
        case.problems.append(
            problem(
                "several_patients_in_case",
                f"the case's DICOM files carry {len(patients)} different PatientIDs",
                case.case_id,
            )
        )
    try:
        ct = read_ct_series(case_dir)
    except LlmctvError as exc:
        case.problems.append(problem("ct_unreadable", f"[{exc.code}] {exc.detail}", case.case_id))
        return result
    grid = ct.volume.grid
    result.series_uid = ct.series_instance_uid
    case.ct = {
        "series_instance_uid": ct.series_instance_uid,
        "frame_of_reference_uid": ct.frame_of_reference_uid,
        "shape": list(grid.shape),
        "spacing_mm": [round(float(s), 4) for s in grid.spacing],
    }
    on_frame, first = choose_structure_set(rtstruct_files, ct, case)
    if first is not None:
        case.rtstruct = {
            "frame_of_reference_uid": first.frame_of_reference_uid,
            "referenced_series_instance_uid": first.referenced_series_instance_uid,
            "rois": len(first.rois),
        }
    if on_frame is None:
        if first is not None:  # list the ROIs, without volumes: they are on another frame
            for roi in first.rois:
                cls = smap.classify(roi.name)
                contours = len(roi.contours)
                case.rois.append(
                    RoiFinding(
                        roi.name,
                        cls.kind.value,
                        cls.structure,
                        cls.side,
                        roi.interpreted_type,
                        contours,
                    )
                )
        return result
    check_references(on_frame, ct, case)
    place_rois(on_frame, ct, smap, options, case)
    if row.record is not None:
        check_clinical(case, row.record, smap)
    return result
