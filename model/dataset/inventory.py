"""The inventory of a clinical export: what each case holds, and what is wrong with it.

The export has the layout of a training data set (:mod:`model.training.dataset`):
``DATA/clinical.csv`` (one row per case, :data:`model.text.clinical.CSV_COLUMNS`, plus an
optional ``split`` column ``train``/``val``/``test``) and ``DATA/<case_id>/`` with the case's CT
series and RTSTRUCT in any sub-folders.

Per case: the CT (:func:`~model.dicom.series.read_ct_series`), the RTSTRUCT on the CT's frame
of reference (the first in file order, as training takes it), each ROI classified by the
:class:`~model.dataset.structure_map.StructureMap`, and per (structure, side) the union of
its ROIs rasterised on the CT grid (voxel centres inside, even-odd: inner contours are holes,
keyhole contours fill as drawn; :func:`~model.dicom.rtstruct.reader.rasterize`). Volumes are
in cc. The side of an ROI is the one its name carries, else the side of the body midline its
voxels lie on (LPS +x is the patient's left; an unnamed ROI with a good share on both sides,
such as one ROI for both breasts, is split at the midline). The body is the CT above
-400 HU, largest component, holes filled slice by slice
(:func:`~model.imaging.postprocessing.body_mask`).

Every finding is a :class:`Problem` with a code of :data:`PROBLEM_CODES`, *blocking* (the
export would train on a wrong or missing label: fix it first) or a *warning* (look at it).

Patients: PatientIDs never leave this module. A report names a patient by a label hashed
with a salt drawn for each check (``P-`` and 8 hex digits): it groups the cases of one
patient within one report and cannot be looked up.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom

from model.dataset.structure_map import RoiKind, StructureMap
from model.dicom.rtstruct.reader import StructureSet, rasterize, read_structure_set
from model.dicom.series import PARSE_ERRORS, CtSeries, read_ct_series
from model.errors import ConfigurationError, DatasetError, LlmctvError
from model.imaging.geometry import Grid
from model.imaging.postprocessing import body_mask, left_of_midline, midline_x
from model.text.clinical import ClinicalRecord, Surgery, row_to_record

log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
SIDES = ("L", "R")
N_CATEGORIES = ("N0", "N1mi", "N1", "N2", "N3")
_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val"}
_SPLITS |= {"validation": "val", "test": "test", "testing": "test"}
_REQUIRED_COLUMNS = ("case_id", "side", "surgery", "t_stage", "n_stage")


class Severity(StrEnum):
    """How much a problem matters."""

    BLOCKING = "blocking"
    WARNING = "warning"


B, W = Severity.BLOCKING, Severity.WARNING

#: Every problem code, its severity, and what it means (the documentation lists these).
PROBLEM_CODES: dict[str, tuple[Severity, str]] = {
    "invalid_clinical_row": (B, "a clinical.csv row that does not validate"),
    "invalid_split": (B, "a split value other than train, val or test"),
    "case_folder_missing": (B, "a CSV row without its case folder"),
    "folder_without_csv_row": (W, "a case folder that no CSV row names (training skips it)"),
    "ct_unreadable": (B, "the case's CT series cannot be read (its error code is given)"),
    "no_rtstruct": (B, "the case folder holds no readable RTSTRUCT"),
    "rtstruct_unreadable": (W, "a file of modality RTSTRUCT that cannot be parsed"),
    "frame_of_reference_mismatch": (B, "no RTSTRUCT is on the CT's FrameOfReferenceUID"),
    "several_rtstructs": (W, "several RTSTRUCTs on the CT's frame: the first is used"),
    "referenced_series_mismatch": (W, "the RTSTRUCT names another CT series (same frame)"),
    "contour_image_not_in_ct": (W, "contours reference images that are not in the CT series"),
    "several_patients_in_case": (B, "the files of one case carry different PatientIDs"),
    "ambiguous_roi": (B, "an ROI name matches the patterns of two structures"),
    "duplicate_roi_name": (W, "two ROIs of the structure set share a name (both count)"),
    "contours_unreadable": (B, "a target ROI whose contours cannot be placed on the CT"),
    "contours_off_ct": (W, "contours of a target ROI outside the CT's slices (ignored)"),
    "unmatched_target_roi": (W, "an ROI that looks like a CTV but the map does not place"),
    "empty_roi": (W, "a structure or union ROI without voxels (the structure counts absent)"),
    "tiny_structure": (W, "a structure smaller than --min-cc"),
    "side_name_contradicts_position": (B, "an ROI named for one side lies on the other"),
    "structure_on_untreated_side": (B, "a structure on a side the CSV does not name"),
    "no_target_on_treated_side": (B, "a side the CSV names has no structure"),
    "structure_vs_surgery": (W, "breast after mastectomy, or chest wall after conserving"),
    "nodal_absent_node_positive": (W, "N1-N3 side without any nodal structure"),
    "nodal_present_node_negative": (W, "N0/N1mi side with a nodal structure"),
    "outside_body": (B, "a structure lies largely outside the body"),
    "partly_outside_body": (W, "a structure lies partly outside the body"),
    "union_differs_from_structures": (W, "the union ROI and the union of the structures differ"),
    "patient_in_several_splits": (B, "one patient in cases of different splits (leakage)"),
    "patient_in_several_cases": (W, "one patient under several case folders"),
    "case_id_holds_patient_id": (W, "case ids that contain the PatientID (shown by CSV line)"),
}


@dataclass(frozen=True)
class CheckOptions:
    """Thresholds of the check.

    Parameters
    ----------
    min_cc
        A (structure, side) below this volume is *tiny* (warning).
    outside_warn, outside_block
        Fractions of a structure's volume outside the body that give a warning / block.
    side_contradiction
        An ROI named for one side with more than this fraction of its volume on the other
        side of the midline contradicts its name (blocking).
    side_share
        An ROI without a side in its name counts on a side that holds at least this share of
        it; below, its few voxels across the midline go with the rest.
    union_tolerance
        The union ROI and the union of the structures may differ by this fraction of either.
    """

    min_cc: float = 0.5
    outside_warn: float = 0.01
    outside_block: float = 0.10
    side_contradiction: float = 0.8
    side_share: float = 0.2
    union_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if not self.min_cc >= 0:
            raise ConfigurationError(f"min_cc must be >= 0, got {self.min_cc}")
        fractions = {
            "outside_warn": self.outside_warn,
            "outside_block": self.outside_block,
            "side_contradiction": self.side_contradiction,
            "union_tolerance": self.union_tolerance,
        }
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"{name} must lie in [0, 1], got {value}")
        if not 0.0 < self.side_share <= 0.5:
            raise ConfigurationError(f"side_share must lie in (0, 0.5], got {self.side_share}")
        if self.outside_warn > self.outside_block:
            raise ConfigurationError("outside_warn must not exceed outside_block")


@dataclass(frozen=True)
class Problem:
    """One finding: severity, code (:data:`PROBLEM_CODES`), case, ROI and detail."""

    severity: Severity
    code: str
    detail: str
    case: str | None = None
    roi: str | None = None


def problem(code: str, detail: str, case: str | None = None, roi: str | None = None) -> Problem:
    """A :class:`Problem` with the severity that :data:`PROBLEM_CODES` gives ``code``."""
    return Problem(PROBLEM_CODES[code][0], code, detail, case, roi)


@dataclass
class RoiFinding:
    """One ROI of the case's structure set, as the map classifies it.

    ``left_share`` is the share of its voxels on the patient's left of the body midline.
    """

    name: str
    kind: str
    structure: str | None
    side_in_name: str | None
    interpreted_type: str
    contours: int
    volume_cc: float | None = None
    left_share: float | None = None


@dataclass
class StructureFinding:
    """One (structure, side): the union of its ROIs on the CT grid.

    ``side_from`` is ``"name"`` when the ROI names give the side, ``"position"`` when the
    midline does (``"name+position"`` when both contribute).
    """

    structure: str
    side: str
    nodal: bool
    rois: list[str]
    volume_cc: float
    outside_body_fraction: float
    side_from: str


@dataclass
class CaseInventory:
    """What one case holds. ``case_id`` is the display id (see ``case_id_holds_patient_id``)."""

    case_id: str
    patient: str | None = None
    split: str | None = None
    clinical: dict[str, dict[str, str]] = field(default_factory=dict)
    ct: dict[str, Any] | None = None
    rtstruct: dict[str, Any] | None = None
    rois: list[RoiFinding] = field(default_factory=list)
    structures: list[StructureFinding] = field(default_factory=list)
    union: dict[str, Any] | None = None
    target_cc: float | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        """Whether the structures were placed on the CT (CT and RTSTRUCT readable, same frame)."""
        return self.target_cc is not None

    def present(self) -> dict[tuple[str, str], StructureFinding]:
        """The (structure, side) pairs with voxels."""
        return {(s.structure, s.side): s for s in self.structures if s.volume_cc > 0}


@dataclass
class Inventory:
    """The check of one export."""

    data: str
    created: str
    options: CheckOptions
    structure_map: dict[str, Any]
    cases: list[CaseInventory]
    problems: list[Problem]
    tables: dict[str, Any]
    summary: dict[str, Any]

    @property
    def blocking(self) -> list[Problem]:
        """The blocking problems."""
        return [p for p in self.problems if p.severity is Severity.BLOCKING]


# --- the clinical CSV -------------------------------------------------------------------------
@dataclass
class _Row:
    line: int
    case_id: str
    record: ClinicalRecord | None
    split: str | None


def _read_rows(path: Path) -> tuple[list[_Row], list[Problem]]:
    """The CSV rows (records validated one by one) and the problems of the rows."""
    if not path.is_file():
        raise DatasetError(f"clinical CSV not found: {path}")
    rows: list[_Row] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(_REQUIRED_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing columns {sorted(missing)}")
        has_split = "split" in (reader.fieldnames or [])
        for line, raw in enumerate(reader, start=2):
            case_id = (raw.get("case_id") or "").strip()
            where = f"clinical.csv line {line}"
            if not case_id or case_id in seen or case_id in (".", "..") or "/" in case_id:
                problems.append(
                    problem("invalid_clinical_row", f"{where}: empty, repeated or unsafe case_id")
                )
                continue
            seen.add(case_id)
            record = None
            try:
                record = row_to_record(raw)
            except LlmctvError as exc:
                problems.append(
                    problem("invalid_clinical_row", f"{where}: {exc.detail}", case=case_id)
                )
            split = None
            if has_split and (value := (raw.get("split") or "").strip().lower()):
                split = _SPLITS.get(value)
                if split is None:
                    problems.append(
                        problem(
                            "invalid_split",
                            f"{where}: split {value!r} is not train, val or test",
                            case=case_id,
                        )
                    )
            rows.append(_Row(line, case_id, record, split))
    return rows, problems


# --- one case ---------------------------------------------------------------------------------
@dataclass
class _CaseResult:
    inventory: CaseInventory
    patient_ids: set[str]
    series_uid: str | None
    line: int


def _scan(case_dir: Path) -> tuple[list[Path], set[str]]:
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


def _structure_set(
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


def _check_references(structures: StructureSet, ct: CtSeries, case: CaseInventory) -> None:
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


def _off_grid_contours(structures: StructureSet, name: str, grid: Grid) -> tuple[int, int]:
    """``(closed planar contours, those whose slice lies outside the grid)`` of ROI ``name``."""
    total = off = 0
    for roi in structures.rois:
        if roi.name != name:
            continue
        for contour in roi.contours:
            if contour.geometric_type != "CLOSED_PLANAR" or len(contour.points) < 3:
                continue
            total += 1
            k = float(np.mean(grid.lps_to_index(contour.points)[:, 0]))
            if not -0.5 <= k < grid.shape[0] - 0.5:
                off += 1
    return total, off


@dataclass
class _Group:
    mask: BoolArray
    rois: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)


def _place_rois(
    structures: StructureSet,
    ct: CtSeries,
    smap: StructureMap,
    options: CheckOptions,
    case: CaseInventory,
) -> None:
    """Classify the ROIs, rasterise the targets, fill the case's structures and union."""
    grid = ct.volume.grid
    voxel_cc = float(np.prod(grid.spacing)) / 1000.0
    body = body_mask(ct.volume)
    full = tuple(slice(0, n) for n in grid.shape)
    left = left_of_midline(grid, midline_x(body, grid), full)
    counts = Counter(roi.name for roi in structures.rois)
    for name, n in counts.items():
        if n > 1:
            case.problems.append(
                problem("duplicate_roi_name", f"{n} ROIs named {name!r}", case.case_id, name)
            )
    groups: dict[tuple[str, str], _Group] = {}
    union = np.zeros(grid.shape, dtype=bool)
    union_rois: list[str] = []
    done: set[str] = set()
    for roi in structures.rois:
        if roi.name in done:
            continue
        done.add(roi.name)
        cls = smap.classify(roi.name)
        contours = sum(len(r.contours) for r in structures.rois if r.name == roi.name)
        finding = RoiFinding(
            roi.name, cls.kind.value, cls.structure, cls.side, roi.interpreted_type, contours
        )
        case.rois.append(finding)
        if cls.kind is RoiKind.UNMATCHED and (
            "ctv" in roi.name.lower() or roi.interpreted_type.upper() == "CTV"
        ):
            case.problems.append(
                problem(
                    "unmatched_target_roi",
                    f"ROI {roi.name!r} (type {roi.interpreted_type or 'empty'}) looks like a "
                    "CTV but matches no structure and is not ignored",
                    case.case_id,
                    roi.name,
                )
            )
        if cls.kind not in (RoiKind.STRUCTURE, RoiKind.UNION):
            continue
        if cls.also:
            case.problems.append(
                problem(
                    "ambiguous_roi",
                    f"ROI {roi.name!r} matches structures {[cls.structure, *cls.also]}",
                    case.case_id,
                    roi.name,
                )
            )
        mask = _rasterise(structures, roi.name, grid, ct.frame_of_reference_uid, case)
        if mask is None:
            continue
        voxels = int(np.count_nonzero(mask))
        finding.volume_cc = round(voxels * voxel_cc, 3)
        if voxels == 0:
            case.problems.append(
                problem("empty_roi", f"ROI {roi.name!r} has no voxels", case.case_id, roi.name)
            )
            continue
        left_voxels = int(np.count_nonzero(mask & left))
        finding.left_share = round(left_voxels / voxels, 4)
        if cls.kind is RoiKind.UNION:
            union |= mask
            union_rois.append(roi.name)
            continue
        if cls.structure is None:  # a structure match always names its structure
            continue
        for side, part, source in _sides(mask, left, left_voxels / voxels, cls.side, options):
            if source == "contradiction":
                other = 1.0 - finding.left_share if side == "L" else finding.left_share
                case.problems.append(
                    problem(
                        "side_name_contradicts_position",
                        f"ROI {roi.name!r} is named for side {side} but {other:.0%} of it "
                        "lies on the other side of the body midline",
                        case.case_id,
                        roi.name,
                    )
                )
                source = "name"
            group = groups.setdefault(
                (cls.structure, side), _Group(np.zeros(grid.shape, dtype=bool))
            )
            group.mask |= part
            group.rois.append(roi.name)
            group.sources.add(source)
    everything = np.zeros(grid.shape, dtype=bool)
    for (structure, side), group in sorted(groups.items(), key=lambda kv: _order(smap, kv[0])):
        voxels = int(np.count_nonzero(group.mask))
        outside = int(np.count_nonzero(group.mask & ~body))
        everything |= group.mask
        case.structures.append(
            StructureFinding(
                structure=structure,
                side=side,
                nodal=smap.is_nodal(structure),
                rois=group.rois,
                volume_cc=round(voxels * voxel_cc, 3),
                outside_body_fraction=round(outside / voxels, 4) if voxels else 0.0,
                side_from="+".join(sorted(group.sources)),
            )
        )
    case.target_cc = round(int(np.count_nonzero(everything)) * voxel_cc, 3)
    if union_rois:
        case.union = _union_summary(union, everything, union_rois, voxel_cc)
    _check_volumes(case, options)
    _check_union(case, options)


def _order(smap: StructureMap, key: tuple[str, str]) -> tuple[int, str]:
    names = smap.structure_names
    return (names.index(key[0]) if key[0] in names else len(names), key[1])


def _rasterise(
    structures: StructureSet, name: str, grid: Grid, frame: str, case: CaseInventory
) -> BoolArray | None:
    total, off = _off_grid_contours(structures, name, grid)
    if off and off < total:
        case.problems.append(
            problem(
                "contours_off_ct",
                f"{off} of {total} contours of ROI {name!r} lie outside the CT's slices",
                case.case_id,
                name,
            )
        )
    try:
        return rasterize(structures, name, grid, frame_of_reference_uid=frame)
    except LlmctvError as exc:
        case.problems.append(
            problem("contours_unreadable", f"[{exc.code}] {exc.detail}", case.case_id, name)
        )
        return None


def _sides(
    mask: BoolArray,
    left: BoolArray,
    left_share: float,
    named: str | None,
    options: CheckOptions,
) -> list[tuple[str, BoolArray, str]]:
    """``(side, voxels, source)`` parts of one ROI.

    A named ROI goes whole to its side (source ``"contradiction"`` when its voxels say the
    other side). An unnamed one goes to the side holding nearly all of it, or is split at the
    midline when both sides hold at least ``side_share``.
    """
    if named is not None:
        other = 1.0 - left_share if named == "L" else left_share
        return [(named, mask, "contradiction" if other > options.side_contradiction else "name")]
    if left_share >= 1.0 - options.side_share:
        return [("L", mask, "position")]
    if left_share <= options.side_share:
        return [("R", mask, "position")]
    return [("L", mask & left, "position"), ("R", mask & ~left, "position")]


def _union_summary(
    union: BoolArray, structures: BoolArray, rois: list[str], voxel_cc: float
) -> dict[str, Any]:
    u = int(np.count_nonzero(union))
    s = int(np.count_nonzero(structures))
    both = int(np.count_nonzero(union & structures))
    return {
        "rois": rois,
        "volume_cc": round(u * voxel_cc, 3),
        "structures_covered": round(both / s, 4) if s else None,
        "union_covered": round(both / u, 4) if u else None,
    }


def _check_volumes(case: CaseInventory, options: CheckOptions) -> None:
    for s in case.structures:
        label = f"{s.structure} {s.side}"
        if 0 < s.volume_cc < options.min_cc:
            case.problems.append(
                problem(
                    "tiny_structure",
                    f"{label}: {s.volume_cc:.3f} cc < {options.min_cc} cc",
                    case.case_id,
                )
            )
        outside = s.outside_body_fraction
        if outside > options.outside_block:
            code = "outside_body"
        elif outside > options.outside_warn:
            code = "partly_outside_body"
        else:
            continue
        case.problems.append(
            problem(code, f"{label}: {outside:.1%} of its volume outside the body", case.case_id)
        )


def _check_union(case: CaseInventory, options: CheckOptions) -> None:
    if case.union is None or not case.structures:
        return
    limit = 1.0 - options.union_tolerance
    covered, within = case.union["structures_covered"], case.union["union_covered"]
    if (covered is not None and covered < limit) or (within is not None and within < limit):
        case.problems.append(
            problem(
                "union_differs_from_structures",
                f"union ROI holds {covered:.1%} of the structures; "
                f"{within:.1%} of it lies in a structure",
                case.case_id,
            )
        )


def _check_clinical(case: CaseInventory, record: ClinicalRecord, smap: StructureMap) -> None:
    """Sides, surgery and N stage of the CSV against the structures found."""
    present = case.present()
    treated = {d.side.letter: d for d in record.diagnoses}
    for structure, side in sorted(present):
        if side not in treated:
            case.problems.append(
                problem(
                    "structure_on_untreated_side",
                    f"{structure} on side {side}; the CSV names side(s) "
                    f"{', '.join(sorted(treated))}",
                    case.case_id,
                )
            )
    names = set(smap.structure_names)
    for side, diagnosis in sorted(treated.items()):
        here = {structure for structure, s in present if s == side}
        if not here:
            case.problems.append(
                problem("no_target_on_treated_side", f"no structure on side {side}", case.case_id)
            )
            continue
        wrong = "breast" if diagnosis.surgery is Surgery.TOTAL_MASTECTOMY else "chest_wall"
        if wrong in names and wrong in here:
            case.problems.append(
                problem(
                    "structure_vs_surgery",
                    f"{wrong} on side {side} after {diagnosis.surgery.value}",
                    case.case_id,
                )
            )
        if not smap.nodal_names:
            continue
        nodal = sorted(here & set(smap.nodal_names))
        if diagnosis.node_positive and not nodal:
            case.problems.append(
                problem(
                    "nodal_absent_node_positive",
                    f"side {side} is N{diagnosis.n_stage} but has no nodal structure",
                    case.case_id,
                )
            )
        if not diagnosis.node_positive and nodal:
            case.problems.append(
                problem(
                    "nodal_present_node_negative",
                    f"side {side} is N{diagnosis.n_stage} but has {', '.join(nodal)}",
                    case.case_id,
                )
            )


def _check_case(
    row: _Row, case_dir: Path, smap: StructureMap, options: CheckOptions
) -> _CaseResult:
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
    rtstruct_files, patients = _scan(case_dir)
    result = _CaseResult(case, patients, None, row.line)
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
    on_frame, first = _structure_set(rtstruct_files, ct, case)
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
    _check_references(on_frame, ct, case)
    _place_rois(on_frame, ct, smap, options, case)
    if row.record is not None:
        _check_clinical(case, row.record, smap)
    return result


def n_category(n_stage: str) -> str:
    """``"N0"``, ``"N1mi"``, ``"N1"`` (N1, N1a-c), ``"N2"`` or ``"N3"``."""
    return "N1mi" if n_stage == "1mi" else f"N{n_stage[:1]}"


# --- the data set -----------------------------------------------------------------------------
def check_dataset(
    data_dir: Path,
    structure_map: StructureMap,
    options: CheckOptions | None = None,
    *,
    csv_path: Path | None = None,
) -> Inventory:
    """Inventory every case of an export and list its problems.

    Raises
    ------
    DatasetError
        The data folder or its clinical CSV is missing, or the CSV lacks required columns.
    """
    options = options or CheckOptions()
    if not data_dir.is_dir():
        raise DatasetError(f"data folder not found: {data_dir}")
    rows, problems = _read_rows(csv_path or data_dir / "clinical.csv")
    results: list[_CaseResult] = []
    for row in rows:
        case_dir = data_dir / row.case_id
        if not case_dir.is_dir():
            problems.append(
                problem("case_folder_missing", "no folder for this CSV row", row.case_id)
            )
            continue
        results.append(_check_case(row, case_dir, structure_map, options))
    problems += _stray_folders(data_dir, {row.case_id for row in rows})
    problems += _hide_patient_ids(results, problems)
    problems += _patient_problems(results)
    cases = [r.inventory for r in results]
    for case in cases:
        problems += case.problems
    problems.sort(key=lambda p: (p.severity is not Severity.BLOCKING, p.case or "", p.code))
    log.info(
        "dataset check: %d cases, %d blocking problems, %d warnings",
        len(cases),
        sum(p.severity is Severity.BLOCKING for p in problems),
        sum(p.severity is Severity.WARNING for p in problems),
    )
    return Inventory(
        data=str(data_dir),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        options=options,
        structure_map=structure_map.describe(),
        cases=cases,
        problems=problems,
        tables=_tables(cases, structure_map),
        summary=_summary(rows, cases, problems, structure_map),
    )


def _stray_folders(data_dir: Path, named: set[str]) -> list[Problem]:
    """Folders no CSV row names (a name holding its PatientID is not shown)."""
    out = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name not in named):
        if folder.name.startswith("."):
            continue
        if _holds_patient_id(folder.name, _scan(folder)[1]):
            out.append(
                problem(
                    "folder_without_csv_row",
                    "a case folder that no CSV row names (its name, which holds its "
                    "PatientID, is not shown)",
                )
            )
        else:
            out.append(
                problem(
                    "folder_without_csv_row", "a case folder that no CSV row names", folder.name
                )
            )
    return out


def _holds_patient_id(name: str, patient_ids: set[str]) -> bool:
    return any(len(pid) >= 3 and pid.lower() in name.lower() for pid in patient_ids)


def _hide_patient_ids(results: list[_CaseResult], problems: list[Problem]) -> list[Problem]:
    """Label patients by a salted hash; a case id holding its PatientID is shown by CSV line."""
    salt = secrets.token_bytes(16)
    hidden = []
    for result in results:
        case = result.inventory
        ids = sorted(result.patient_ids)
        if ids:
            digest = hashlib.sha256(salt + ids[0].encode("utf-8")).hexdigest()
            case.patient = f"P-{digest[:8]}"
        if not _holds_patient_id(case.case_id, result.patient_ids):
            continue
        old, new = case.case_id, f"csv-line-{result.line}"
        case.case_id = new
        case.problems = [replace(p, case=new) if p.case == old else p for p in case.problems]
        problems[:] = [replace(p, case=new) if p.case == old else p for p in problems]
        hidden.append(new)
    if not hidden:
        return []
    shown = ", ".join(hidden[:10]) + (", ..." if len(hidden) > 10 else "")
    return [
        problem(
            "case_id_holds_patient_id",
            f"{len(hidden)} case ids contain their PatientID; these cases are shown by their "
            f"CSV line ({shown}); rename the folders and CSV rows",
        )
    ]


def _patient_problems(results: list[_CaseResult]) -> list[Problem]:
    by_patient: dict[str, list[_CaseResult]] = {}
    for result in results:
        if len(result.patient_ids) == 1:
            by_patient.setdefault(next(iter(result.patient_ids)), []).append(result)
    out = []
    for group in by_patient.values():
        if len(group) < 2:
            continue
        ids = [r.inventory.case_id for r in group]
        label = group[0].inventory.patient
        splits = {r.inventory.split for r in group if r.inventory.split is not None}
        if len(splits) > 1:
            out.append(
                problem(
                    "patient_in_several_splits",
                    f"patient {label} is in cases {', '.join(ids)} of splits "
                    f"{', '.join(sorted(splits))}",
                )
            )
            continue
        same_ct = len({r.series_uid for r in group}) == 1 and group[0].series_uid is not None
        note = "the same CT series" if same_ct else "different CT series"
        out.append(
            problem(
                "patient_in_several_cases",
                f"patient {label} is in cases {', '.join(ids)} ({note})",
            )
        )
    return out


def _tables(cases: list[CaseInventory], smap: StructureMap) -> dict[str, Any]:
    """Per treated side of the checked cases: structures present, by N stage and by surgery."""
    names = list(smap.structure_names)

    def empty_row() -> dict[str, Any]:
        return {"sides": 0, "any_nodal": 0, "structures": dict.fromkeys(names, 0)}

    by_n = {c: empty_row() for c in N_CATEGORIES}
    by_surgery = {s.value: empty_row() for s in Surgery}
    for case in cases:
        if not case.checked:
            continue
        present = case.present()
        for side, clinical in case.clinical.items():
            here = {structure for structure, s in present if s == side}
            for row in (by_n[clinical["category"]], by_surgery[clinical["surgery"]]):
                row["sides"] += 1
                row["any_nodal"] += int(bool(here & set(smap.nodal_names)))
                for name in here:
                    row["structures"][name] += 1
    return {
        "structures": names,
        "nodal": list(smap.nodal_names),
        "n_stage": by_n,
        "surgery": by_surgery,
    }


def _summary(
    rows: list[_Row],
    cases: list[CaseInventory],
    problems: list[Problem],
    smap: StructureMap,
) -> dict[str, Any]:
    volumes: dict[str, list[float]] = {name: [] for name in smap.structure_names}
    for case in cases:
        for s in case.structures:
            if s.volume_cc > 0:
                volumes.setdefault(s.structure, []).append(s.volume_cc)
    blocked = {p.case for p in problems if p.severity is Severity.BLOCKING}
    return {
        "csv_rows": len(rows),
        "cases": len(cases),
        "cases_checked": sum(c.checked for c in cases),
        "cases_blocked": len({c.case_id for c in cases} & blocked),
        "blocking": sum(p.severity is Severity.BLOCKING for p in problems),
        "warnings": sum(p.severity is Severity.WARNING for p in problems),
        "codes": dict(sorted(Counter(p.code for p in problems).items())),
        "volumes_cc": {
            name: (
                {
                    "n": len(v),
                    "min": min(v),
                    "median": round(median(v), 3),
                    "max": max(v),
                }
                if v
                else {"n": 0}
            )
            for name, v in volumes.items()
        },
    }
