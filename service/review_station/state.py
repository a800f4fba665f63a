"""What the review pages keep between requests: sessions, loaded CT series, parsed structures.

One :class:`ReviewStation` per application, built by the composition root (:mod:`service.app`)
and handed to the routes of :mod:`service.ui` by :data:`service.deps.StationDep`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from model.errors import LlmctvError
from service.errors import JobNotFinishedError
from service.review_station.overlays import StructureView, structure_view
from service.review_station.sessions import SessionStore
from service.review_station.slices import CtCache, CtView, load_ct_view
from workers.jobs import Job, JobFiles

_PATIENT_TAGS = ["PatientName", "PatientID"]


class ReviewStation:
    """What the pages keep between requests: sessions, loaded CT series, parsed structures."""

    def __init__(self, sessions: SessionStore, ct_cache_size: int = 3) -> None:
        self.sessions = sessions
        self.ct_cache_size = ct_cache_size
        self.ct = CtCache(ct_cache_size)
        self._structures: OrderedDict[tuple[str, int], StructureView] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self._patients: dict[str, str] = {}
        self._lock = threading.Lock()

    def patient_of(self, files: JobFiles, job: Job) -> str:
        """``NAME (ID)`` from one stored CT slice of the job (cached), or ``""``."""
        if job.job_id not in self._patients:
            self._patients[job.job_id] = _patient_line(files.input_dir(job.job_id))
        return self._patients[job.job_id]

    def forget(self) -> None:
        """Drop every loaded series and structure set (memory pressure; timing tests)."""
        with self._lock:
            self.ct = CtCache(self.ct_cache_size)
            self._structures.clear()

    def ct_view(self, files: JobFiles, job: Job) -> CtView:
        """The job's CT (cached per job, see :meth:`_ct_loader`)."""
        return self.ct.get(*self._ct_loader(files, job))

    def prefetch(self, files: JobFiles, job: Job) -> None:
        """Load the job's CT and structures in a thread (its page is on its way)."""

        def load() -> None:
            try:
                self.structures(files, job)
            except (LlmctvError, OSError, ValueError):
                return  # the page's own requests report it

        threading.Thread(target=load, name="llmctv-ui-prefetch", daemon=True).start()

    def _ct_loader(self, files: JobFiles, job: Job) -> tuple[str, Callable[[], CtView]]:
        """The cache key and loader of the job's CT: keyed by the job's own stored input.

        Never by SeriesInstanceUID: two patients' series can share one (a reused or forged
        UID), and a superseded partial series shares it with the full one. Each job holds
        the files it was accepted with, so the job id names exactly one patient's CT; a
        counterfactual holds hard links to its original's files and shares its entry.
        """
        folder = files.input_dir(job.job_id)
        owner = job.counterfactual_of or job.job_id
        return f"job:{owner}", lambda: load_ct_view(folder, job.series_instance_uid)

    def structures(self, files: JobFiles, job: Job) -> StructureView:
        """The ROIs of a succeeded job on its CT (re-read when the file is replaced)."""
        path = files.rtstruct(job.job_id)
        try:
            key = (job.job_id, path.stat().st_mtime_ns)
        except OSError as exc:
            raise JobNotFinishedError(f"job {job.job_id} has no structure set") from exc
        with self._lock:
            building = self._building.setdefault(job.job_id, threading.Lock())
        with building:  # one parse per job, however many requests ask at once
            with self._lock:
                if key in self._structures:
                    self._structures.move_to_end(key)
                    return self._structures[key]
            view = structure_view(path, self.ct_view(files, job))
            with self._lock:
                self._structures[key] = view
                while len(self._structures) > 8:
                    self._structures.popitem(last=False)
        return view


def _patient_line(folder: Path) -> str:
    """Patient name and ID of the first readable DICOM file under ``folder`` (headers only)."""
    for path in sorted(folder.rglob("*"))[:20]:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_PATIENT_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        name = str(ds.get("PatientName", "") or "").replace("^", " ").strip()
        return f"{name or '(no name)'} ({ds.get('PatientID', '') or '?'})"
    return ""
