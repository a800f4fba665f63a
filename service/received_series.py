"""Received-series manifests: what the order desk knows about CT series that came over DICOM.

A manifest (``series.json``) is written next to a series' instances each time the series
completes a reception cycle (:mod:`service.dicomnet.assembly`). It counts *every* instance in
the folder at that moment, not only those of the last cycle, so a series sent in two pushes
says 134, not 74, after the second. Each write also touches ``<received>/.manifests``, so a
desk in another process learns of new manifests with one ``stat``.

:class:`ManifestIndex` keeps the manifests in memory and re-reads the tree only when that
marker changed (or every :data:`RESCAN_S` seconds).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from model.files import write_atomically
from service.dicomnet.assembly import ReceivedSeries
from service.dicomnet.storage import (
    CHANGE_MARKER,
    REFUSAL_NOTE,
    identity_marker,
    touch_change_marker,
)
from workers.jobs import utcnow

log = logging.getLogger(__name__)
MANIFEST = "series.json"
#: The manifests are re-read at least this often even when the marker looks unchanged.
RESCAN_S = 60.0


@dataclass(frozen=True)
class Manifest:
    """A completed CT series as recorded in its ``series.json``."""

    folder: Path
    study_instance_uid: str
    series_instance_uid: str
    accession_number: str | None
    modality: str
    instance_count: int
    cycle: int
    completed_at: datetime
    patient: str = ""

    def still_receiving(self) -> bool:
        """Whether more instances were stored since the manifest (a new cycle is under way)."""
        return instance_count(self.folder) > self.instance_count


def instance_count(folder: Path) -> int:
    """Instances (``*.dcm``) in a series folder."""
    return sum(1 for _ in folder.glob("*.dcm"))


def _patient_of(series: ReceivedSeries) -> str:
    """The series' patient as the listener recorded it (a hash of PatientID, shortened), or
    ``""`` when unknown: enough to tell two patients apart, never the ID itself."""
    root = series.folder.parent.parent
    marker = identity_marker(root, series.study_instance_uid, series.series_instance_uid)
    try:
        return marker.read_text().strip()[:16]
    except OSError:
        return ""


def write_manifest(series: ReceivedSeries) -> None:
    """Mark a completed series as usable (atomically), with what matching needs."""
    manifest = {
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "accession_number": series.accession_number,
        "modality": series.modality,
        "instance_count": max(instance_count(series.folder), series.instance_count),
        "cycle": series.cycle,
        "completed_at": utcnow().isoformat(),
        "patient": _patient_of(series),
    }
    write_atomically(series.folder / MANIFEST, json.dumps(manifest).encode())
    touch_change_marker(series.folder.parent.parent)


def absorb_non_ct_cycle(series: ReceivedSeries) -> bool:
    """A non-CT object (an RTSTRUCT, a report) stored under a completed CT series' UIDs.

    It never blocks the series: the CT manifest is rewritten to count it (so the series is
    not taken as still receiving, and no order waits for it until expiry) and it is noted,
    without a new cycle (nothing is contoured again for it). The job's reader ignores it with
    a warning (:mod:`model.dicom.series`). Returns whether a CT manifest was there.
    """
    path = series.folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("modality") != "CT":
        return False
    manifest["instance_count"] = instance_count(series.folder)
    manifest["non_ct_objects"] = int(manifest.get("non_ct_objects", 0)) + series.instance_count
    write_atomically(path, json.dumps(manifest).encode())
    touch_change_marker(series.folder.parent.parent)
    log.warning(
        "%d %s object(s) stored inside CT series %s: counted, ignored for contouring",
        series.instance_count,
        series.modality,
        series.series_instance_uid,
    )
    return True


@dataclass(frozen=True)
class Refusal:
    """Instances of a study refused by the listener for a reason its orders should report."""

    study_instance_uid: str
    accession_number: str | None
    code: str
    detail: str


def _read_refusal(path: Path) -> Refusal | None:
    try:
        data = json.loads(path.read_text())
        return Refusal(
            study_instance_uid=path.parent.name,
            accession_number=data.get("accession_number"),
            code=str(data["code"]),
            detail=str(data["detail"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read(path: Path) -> Manifest | None:
    try:
        data = json.loads(path.read_text())
        return Manifest(
            folder=path.parent,
            study_instance_uid=str(data["study_instance_uid"]),
            series_instance_uid=str(data["series_instance_uid"]),
            accession_number=data.get("accession_number"),
            modality=str(data.get("modality", "")),
            instance_count=int(data.get("instance_count", 0)),
            cycle=int(data.get("cycle", 1)),
            completed_at=datetime.fromisoformat(data["completed_at"]),
            patient=str(data.get("patient", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ManifestIndex:
    """The CT manifests under ``root`` by study, accession number and series (in memory)."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self._clock = clock
        self._marker: int | None = None
        self._scanned_at = float("-inf")
        self._files: dict[Path, tuple[int, Manifest | None]] = {}
        # Keyed by (study, series): a series UID alone may be reused by another study.
        self.by_series: dict[tuple[str, str], Manifest] = {}
        self._by_study: dict[str, list[Manifest]] = {}
        self._by_accession: dict[str, list[Manifest]] = {}
        self._refusals: list[Refusal] = []
        self._stale = False
        self.generation = 0

    def invalidate(self) -> None:
        """Make the next :meth:`refresh` re-read (a manifest was written in this process)."""
        self._stale = True

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read changed manifests when the marker changed; whether anything was re-read."""
        try:
            marker = (self.root / CHANGE_MARKER).stat().st_mtime_ns
        except OSError:
            marker = None
        now = self._clock()
        fresh = marker == self._marker and now - self._scanned_at < RESCAN_S
        if fresh and not (force or self._stale):
            return False
        self._marker, self._scanned_at, self._stale = marker, now, False
        files: dict[Path, tuple[int, Manifest | None]] = {}
        for path in self.root.glob(f"*/*/{MANIFEST}"):
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            known = self._files.get(path)
            files[path] = known if known and known[0] == mtime else (mtime, _read(path))
        refusals = [r for p in self.root.glob(f"*/{REFUSAL_NOTE}") if (r := _read_refusal(p))]
        changed = files != self._files or refusals != self._refusals
        self._files, self._refusals = files, refusals
        if changed:
            self._rebuild()
            self.generation += 1
        return changed

    def _rebuild(self) -> None:
        self.by_series, self._by_study, self._by_accession = {}, {}, {}
        for _, manifest in self._files.values():
            if manifest is None or manifest.modality != "CT":
                continue
            key = (manifest.study_instance_uid, manifest.series_instance_uid)
            self.by_series[key] = manifest
            self._by_study.setdefault(manifest.study_instance_uid, []).append(manifest)
            if manifest.accession_number:
                self._by_accession.setdefault(manifest.accession_number, []).append(manifest)

    def refusal(
        self, study_instance_uid: str | None, accession_number: str | None
    ) -> Refusal | None:
        """A refusal noted for the order's study (by UID, else by accession number)."""
        for refusal in self._refusals:
            if study_instance_uid and refusal.study_instance_uid == study_instance_uid:
                return refusal
            if not study_instance_uid and accession_number == refusal.accession_number:
                return refusal
        return None

    def candidates(
        self,
        study_instance_uid: str | None,
        accession_number: str | None,
        series_instance_uid: str | None,
    ) -> list[Manifest]:
        """CT manifests that fit an order's study, accession number and series."""
        if study_instance_uid:
            found = self._by_study.get(study_instance_uid, [])
        else:
            found = self._by_accession.get(accession_number or "", [])
        return [
            m
            for m in found
            if (not accession_number or m.accession_number == accession_number)
            and (not series_instance_uid or m.series_instance_uid == series_instance_uid)
        ]
