"""Where one job's CT goes: the files its data visits, and the workers/model crossings.

Runs one real job (:func:`workers.pipeline.run_job`, the shipped model, a generated phantom)
under a profiler hook and follows the job's CT: the input folder, then the
:class:`~model.dicom.series.CtSeries`, its volume and HU array. A *visit* is a call of one of
our functions that receives one of those objects as an argument. Calls are followed down to
the first function of a library module (DICOM reading and writing, the network and inference,
imaging, text): what happens inside the reader or the network is their business, not the job's
path. Printed: the sequence of stays (consecutive visits in one file), the distinct files,
the returns to a file already left, and the crossings between ``workers/`` and ``model/``.

``python benchmarks/job_path.py`` (the numbers of issue #21's closing note).
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.lab.phantoms.cohort import write_cohort  # noqa: E402
from workers.jobs import FileJobStore, Job, JobFiles, new_job_id  # noqa: E402
from workers.pipeline import run_job  # noqa: E402

#: Library modules: visits stop there (their insides are not the job's path).
LIBRARIES = (
    "model/dicom/",
    "model/inference.py",
    "model/imaging/",
    "model/network/",
    "model/text/",
)
CLINICAL = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}]
}


def _settings(storage: Path) -> Any:
    from workers.settings import WorkerSettings

    if hasattr(WorkerSettings, "from_env"):
        return WorkerSettings.from_env(storage_dir=storage)
    from service.settings import Settings  # flat settings (before issue 21)

    return Settings(storage_dir=storage)  # type: ignore[call-arg,unused-ignore]


def _load_engine(settings: Any) -> Any:
    try:
        from workers.model_loading import load_engine
    except ImportError:  # before the contouring package (e766665 and earlier)
        from workers.engine import ContourEngine  # type: ignore[import-not-found,unused-ignore]

        return ContourEngine.from_settings(settings)
    return load_engine(settings)


class CtTracer:
    """A profile hook that records the files of the calls receiving the job's CT."""

    def __init__(self, input_dir: Path) -> None:
        self.input_dir = input_dir
        self.tracked: set[int] = set()
        self.visits: list[str] = []
        self.library_depth = 0

    def _ours(self, frame: FrameType) -> str | None:
        path = Path(frame.f_code.co_filename)
        try:
            relative = path.resolve().relative_to(REPO).as_posix()
        except ValueError:
            return None
        return relative if relative.startswith(("model/", "workers/")) else None

    def _is_ct(self, value: object) -> bool:
        return id(value) in self.tracked or (isinstance(value, Path) and value == self.input_dir)

    def _receives_ct(self, frame: FrameType) -> bool:
        """An argument is the CT (or its folder), or a request object holding it."""
        for value in frame.f_locals.values():
            if self._is_ct(value):
                return True
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                fields = (getattr(value, f.name, None) for f in dataclasses.fields(value))
                if any(self._is_ct(v) for v in fields):
                    return True
        return False

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event not in ("call", "return"):
            return
        where = self._ours(frame)
        if where is None:
            return
        library = where.startswith(LIBRARIES)
        if event == "return":
            if frame.f_code.co_name == "read_ct_series" and arg is not None:
                ct: Any = arg
                self.tracked |= {id(ct), id(ct.volume), id(ct.volume.array), id(ct.datasets)}
            if library and self.library_depth:
                self.library_depth -= 1
            return
        if self.library_depth:
            if library:
                self.library_depth += 1
            return
        if frame.f_code.co_name == "run_job" or self._receives_ct(frame):
            self.visits.append(where)
        if library:
            self.library_depth = 1


def summarise(visits: list[str]) -> dict[str, Any]:
    """Stays, files, returns and crossings of a visit sequence."""
    stays: list[str] = []
    for where in visits:
        if not stays or stays[-1] != where:
            stays.append(where)
    returns = sum(1 for n, where in enumerate(stays) if where in stays[:n])
    crossings = sum(1 for a, b in itertools.pairwise(stays) if a.split("/")[0] != b.split("/")[0])
    return {"stays": stays, "files": sorted(set(stays)), "returns": returns, "crossings": crossings}


def main() -> int:
    """Run one job under the tracer and print its path."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = write_cohort(root / "ph", 1, "A", 5, scale=0.35)[0].directory / "ct"
        settings = _settings(root / "store")
        files = JobFiles(root / "store")
        store = FileJobStore(files)
        engine = _load_engine(settings)
        job_id = new_job_id()
        shutil.copytree(case, files.input_dir(job_id))
        store.create(Job(job_id=job_id, clinical=CLINICAL))
        tracer = CtTracer(files.input_dir(job_id))
        sys.setprofile(tracer)
        try:
            run_job(job_id, store, files, engine, settings)
        finally:
            sys.setprofile(None)
        job = store.get(job_id)
        if job.error is not None:
            print(f"the job failed: {job.error.code}")
            return 1
    found = summarise(tracer.visits)
    print("stays:", " -> ".join(found["stays"]))
    print(f"files: {len(found['files'])}: {', '.join(found['files'])}")
    print(f"stays: {len(found['stays'])}, returns to a file already left: {found['returns']}")
    print(f"crossings between workers/ and model/: {found['crossings']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
