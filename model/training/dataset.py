"""Training and evaluation data from DICOM, the format clinics have.

Layout of a data set folder::

    DATA/clinical.csv            one row per case (columns: model.text.clinical.CSV_COLUMNS)
    DATA/<case_id>/...           the case's CT series and its RTSTRUCT, any sub-folders

The target label is the union of the RTSTRUCT's ROIs that a :class:`RoiRule` selects, or a
class map with one class per structure (:class:`TargetRule`), whose ROIs are chosen by
ROI-name patterns or by a site's structure map (:meth:`TargetRule.from_structure_map`,
:mod:`model.dataset.structure_targets`). :func:`build_cache` reads the DICOM once and writes
one ``<case_id>.npz`` per case (CT in [0, 1] as float16 and the label as uint8, both on the
network grid), so epochs never re-read DICOM. A case that cannot be read is reported with its
error code and skipped — never silently. Logs give counts only; case ids appear in the
returned report, not in logs.

Entries are uncompressed (``np.savez``), so :func:`load_cached` memory-maps their arrays in
place instead of reading them: a cohort larger than RAM trains, the pages a crop touches are
read on demand and shared (page cache) by DataLoader workers and by the ranks of a
``torchrun`` job, and the kernel may drop them again under memory pressure.

Patients: each entry records its CT's series (``group``) and its patient as a label
(``patient``): ``P-`` and 16 hex digits of SHA-256 over a random salt kept in the cache
folder (``.patient-salt``) and the PatientID. The trainer keeps the cases of one patient on one
side of its split; the PatientID itself is never stored, logged or printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from model.dataset.patients import patient_label
from model.dataset.structure_map import StructureMap
from model.dataset.structure_targets import MapRule
from model.dicom.rtstruct.reader import RoiRule, StructureSet, rasterize, read_structure_set
from model.dicom.series import CtSeries, read_ct_series
from model.errors import DatasetError, LlmctvError, StructureSetError
from model.imaging.preprocessing import PreprocessConfig, preprocess_ct, resample_labels
from model.text.clinical import ClinicalRecord, read_clinical_csv
from model.training.mmap_cache import cached_arrays
from model.training.sampling import TrainingCase

log = logging.getLogger(__name__)
CACHE_VERSION = 4
SALT_FILE = ".patient-salt"
#: Hex digits of a patient label in the cache (collisions only merge split groups).
PATIENT_DIGITS = 16

#: Selects ROIs by name: regular expressions, or a site's structure map.
RoiSelector = RoiRule | MapRule


def _rule_key(rule: RoiSelector) -> str:
    if isinstance(rule, MapRule):
        return rule.key()
    return f"{rule.include}|{rule.exclude}"


@dataclass(frozen=True)
class TargetRule:
    """Which ROIs make the training label.

    ``union`` selects the ROIs of a single CTV class (label 1). With ``structures`` the label
    is a class map instead: 0 background, ``n`` where the ``n``-th structure's ROIs are (the
    first listed structure wins where two overlap); ``union`` then only requires the case to
    have a target at all.
    """

    union: RoiSelector = field(default_factory=RoiRule)
    structures: tuple[tuple[str, RoiSelector], ...] = ()

    @classmethod
    def from_structure_map(cls, structure_map: StructureMap) -> TargetRule:
        """One class per structure of the map, in map order; the ROIs are the map's.

        The union ROI and the ignored ROIs are in no class; a case needs at least one ROI
        that the map places in a structure.
        """
        return cls(
            union=MapRule(structure_map),
            structures=tuple(
                (name, MapRule(structure_map, name)) for name in structure_map.structure_names
            ),
        )

    @property
    def structure_names(self) -> tuple[str, ...]:
        """The structures in label order (empty: one CTV class)."""
        return tuple(name for name, _ in self.structures)

    def key(self) -> str:
        """A stable text of the rule (part of the cache fingerprint)."""
        parts = [_rule_key(self.union)]
        parts += [f"{name}:{_rule_key(r)}" for name, r in self.structures]
        return ";".join(parts)


@dataclass
class LoadedCase:
    """One case read from DICOM: the CT, the target mask on its grid, the clinical record."""

    case_id: str
    ct: CtSeries
    mask: np.ndarray
    record: ClinicalRecord


@dataclass
class CacheReport:
    """What :func:`build_cache` did."""

    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (case, code, detail)

    def summary(self) -> str:
        """One line per skipped case plus totals (for the terminal, not for logs)."""
        lines = [f"  skipped {c}: [{code}] {detail}" for c, code, detail in self.skipped]
        lines.append(
            f"cache: {len(self.built)} built, {len(self.reused)} reused, "
            f"{len(self.skipped)} skipped"
        )
        return "\n".join(lines)


def _rtstruct_files(case_dir: Path) -> list[Path]:
    found = []
    for path in sorted(p for p in case_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if getattr(ds, "Modality", "") == "RTSTRUCT":
            found.append(path)
    return found


def _structure_set_for(case_dir: Path, ct: CtSeries) -> StructureSet:
    candidates = [read_structure_set(p) for p in _rtstruct_files(case_dir)]
    matching = [s for s in candidates if s.frame_of_reference_uid == ct.frame_of_reference_uid]
    if not matching:
        raise StructureSetError(
            f"no RTSTRUCT on the CT's frame of reference ({len(candidates)} RTSTRUCT files found)"
        )
    return matching[0]


def load_case(case_dir: Path, record: ClinicalRecord, rule: RoiSelector | TargetRule) -> LoadedCase:
    """Read a case's CT and target label (on the CT grid, ``(k, j, i)``).

    The label is a bool mask for a single CTV, or a uint8 class map for a
    :class:`TargetRule` with structures.
    """
    target = rule if isinstance(rule, TargetRule) else TargetRule(union=rule)
    ct = read_ct_series(case_dir)
    structures = _structure_set_for(case_dir, ct)
    frame = ct.frame_of_reference_uid
    if not target.structures:
        names = [roi.name for roi in target.union.select(structures)]
        mask = rasterize(structures, names, ct.volume.grid, frame_of_reference_uid=frame)
        return LoadedCase(case_dir.name, ct, mask, record)
    target.union.select(structures)  # the case must have a CTV at all (RoiNotFoundError)
    label = np.zeros(ct.volume.grid.shape, dtype=np.uint8)
    for index, (_, structure_rule) in enumerate(target.structures, start=1):
        names = [
            roi.name
            for roi in structures.rois
            if roi.contours and structure_rule.matches(roi.name, roi.interpreted_type)
        ]
        if names:
            region = rasterize(structures, names, ct.volume.grid, frame_of_reference_uid=frame)
            label[(label == 0) & region] = index
    return LoadedCase(case_dir.name, ct, label, record)


def iter_cases(
    data_dir: Path, csv_path: Path | None = None
) -> list[tuple[str, Path, ClinicalRecord]]:
    """``(case_id, folder, record)`` for every CSV row; a missing folder is an error."""
    records = read_clinical_csv(csv_path or data_dir / "clinical.csv")
    out = []
    for case_id, record in records.items():
        folder = data_dir / case_id
        if not folder.is_dir():
            raise DatasetError(f"case folder missing for a CSV row: {folder}")
        out.append((case_id, folder, record))
    return out


def patient_salt(cache_dir: Path) -> bytes:
    """The cache's salt of patient labels: read, or drawn once and kept (owner-only file).

    Raises
    ------
    DatasetError
        The salt file holds something else (delete it: the entries are then rebuilt).
    """
    path = cache_dir / SALT_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read as a patient salt; delete it") from exc
    if text is not None:
        try:
            salt = bytes.fromhex(text)
        except ValueError:
            salt = b""
        if len(salt) < 16:
            raise DatasetError(f"{path} is not a patient salt; delete it (entries are rebuilt)")
        return salt
    salt = secrets.token_bytes(16)
    tmp = cache_dir / f"{SALT_FILE}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(salt.hex())
    try:
        os.link(tmp, path)  # atomic, and never over a salt another process drew first
    except FileExistsError:
        return patient_salt(cache_dir)
    except OSError:  # a file system without hard links: an atomic rename instead
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return salt


def case_patient(ct: CtSeries, salt: bytes) -> str:
    """The label of the CT's PatientID under ``salt`` (``""`` when the CT has none)."""
    patient_id = str(ct.datasets[0].get("PatientID", "") or "").strip()
    return patient_label(salt, patient_id, PATIENT_DIGITS) if patient_id else ""


def _fingerprint(
    folder: Path, note: str, rule: TargetRule, pre: PreprocessConfig, salt: bytes
) -> str:
    salt_id = hashlib.sha256(salt).hexdigest()[:16]
    h = hashlib.sha256(f"v{CACHE_VERSION}|{note}|{rule.key()}|{salt_id}".encode())
    h.update(json.dumps(asdict(pre), sort_keys=True, default=str).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def build_cache(
    data_dir: Path,
    cache_dir: Path,
    *,
    rule: RoiSelector | TargetRule | None = None,
    preprocess: PreprocessConfig | None = None,
    csv_path: Path | None = None,
) -> CacheReport:
    """Preprocess every case once into ``cache_dir`` (reusing unchanged entries)."""
    rule = rule if isinstance(rule, TargetRule) else TargetRule(union=rule or RoiRule())
    pre = preprocess or PreprocessConfig()
    cache_dir.mkdir(parents=True, exist_ok=True)
    salt = patient_salt(cache_dir)
    report = CacheReport()
    for case_id, folder, record in iter_cases(data_dir, csv_path):
        note = record.prompt_text()
        fp = _fingerprint(folder, note, rule, pre, salt)
        target = cache_dir / f"{case_id}.npz"
        if target.is_file() and _stored_fingerprint(target) == fp:
            report.reused.append(case_id)
            continue
        try:
            case = load_case(folder, record, rule)
        except LlmctvError as exc:
            report.skipped.append((case_id, exc.code, exc.detail))
            continue
        image, plan = preprocess_ct(case.ct.volume, pre)
        label = resample_labels(case.mask.astype(np.uint8), plan)
        meta = {
            "case_id": case_id,
            "note": note,
            "fingerprint": fp,
            "spacing": list(plan.target.spacing),
            "source_shape": list(plan.source.shape),
            "group": case.ct.series_instance_uid,
            "patient": case_patient(case.ct, salt),
        }
        tmp = cache_dir / f".{case_id}.tmp.npz"
        np.savez(
            tmp,
            image=image.astype(np.float16),
            label=label.astype(np.uint8),
            meta=np.array(json.dumps(meta)),
        )
        tmp.replace(target)
        report.built.append(case_id)
    log.info(
        "cache: %d built, %d reused, %d skipped",
        len(report.built),
        len(report.reused),
        len(report.skipped),
    )
    return report


def _stored_fingerprint(path: Path) -> str | None:
    try:
        with np.load(path) as data:
            return str(json.loads(str(data["meta"]))["fingerprint"])
    except (OSError, KeyError, ValueError):
        return None


def load_cached(
    cache_dir: Path, case_ids: list[str] | None = None, *, mmap: bool = True
) -> list[TrainingCase]:
    """Load cached cases (all, or the listed ids) as :class:`TrainingCase` objects.

    With ``mmap`` (the default) the arrays are read-only memory maps of the cache entries:
    nothing is read until a crop touches it, and a case pickled to a DataLoader worker
    (``spawn``) travels as its path, not its voxels.
    """
    paths = sorted(cache_dir.glob("*.npz"))
    if case_ids is not None:
        wanted = set(case_ids)
        paths = [p for p in paths if p.stem in wanted]
    cases = []
    for path in paths:
        if path.name.startswith("."):
            continue
        image, label, meta = cached_arrays(path, mmap)
        cases.append(
            TrainingCase(
                meta["case_id"],
                image,
                label,
                meta["note"],
                tuple(meta["spacing"]),
                meta.get("group", ""),
                meta.get("patient", ""),
                source=str(path) if mmap else "",
            )
        )
    if not cases:
        raise DatasetError(f"no cached cases in {cache_dir}")
    return cases
