"""A job's structure set: the union CTV plus one TG-263 ROI per sub-volume and side."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from model.contouring.consistency import structure_warnings
from model.contouring.engine import ContourEngine, EngineResult
from model.contouring.naming import naming_map
from model.dataset.prescription import SPEC_PRESCRIPTION
from model.errors import ConfigurationError
from model.imaging.geometry import Volume
from model.lab.phantoms import generate_case
from model.lab.phantoms.cohort import write_case
from model.network.context import ContextCache
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery
from service.settings import Settings
from workers.jobs import FileJobStore, Job, JobFiles, JobStatus
from workers.pipeline import run_job

_PHANTOM_NAMES = {
    "CTV_Breast": "breast",
    "CTV_ChestWall": "chest_wall",
    "CTV_LN_Axilla": "axilla",
    "CTV_LN_SCF": "scf",
    "CTV_LN_IMN": "imn",
}


class TruthEngine(ContourEngine):
    """Answers with the phantom's own sub-volumes on the left side (a perfect network)."""

    def __init__(self, masks: dict[str, np.ndarray]) -> None:
        structures = tuple(_PHANTOM_NAMES.values())
        network = SimpleNamespace(alignment=None, config=SimpleNamespace(structures=structures))
        stub = SimpleNamespace(
            checkpoint_hash="truth000",
            network=network,
            context=None,
            cache=ContextCache(),
            prescription=SPEC_PRESCRIPTION,
        )
        super().__init__(stub)  # type: ignore[arg-type]
        self.masks = masks

    def window_count(self, grid: object) -> int:
        return 1

    def contour(self, volume: Volume, note: str, progress: object) -> EngineResult:
        subs = {(_PHANTOM_NAMES[k], "L"): v for k, v in self.masks.items() if k in _PHANTOM_NAMES}
        timings = {"network": 0.0}
        return EngineResult(self.masks["CTV"], timings, 1, subs, {"outside the body": 2.5})


def _run(tmp_path: Path, record: ClinicalRecord, masks_from: ClinicalRecord) -> tuple[Job, object]:
    case = generate_case("A0001", "A", 11, scale=0.25, clinical=masks_from)
    written = write_case(case, tmp_path / "case")
    files = JobFiles(tmp_path / "storage")
    store = FileJobStore(files)
    files.input_dir("ab12cd").mkdir(parents=True)
    for path in written.ct_files:
        shutil.copy(path, files.input_dir("ab12cd") / path.name)
    store.create(Job(job_id="ab12cd", clinical=record.model_dump(mode="json")))
    settings = Settings.from_env(storage_dir=tmp_path / "storage", nodal_check_cc=5.0)
    run_job("ab12cd", store, files, TruthEngine(case.masks), settings.worker)
    return store.get("ab12cd"), pydicom.dcmread(files.rtstruct("ab12cd"))


def _record(n: str, surgery: Surgery = Surgery.BREAST_CONSERVING) -> ClinicalRecord:
    return ClinicalRecord(
        diagnoses=(Diagnosis(side=Side.LEFT, surgery=surgery, t_stage="2", n_stage=n),)
    )


def test_rtstruct_has_the_union_and_a_roi_per_sub_volume(tmp_path: Path) -> None:
    job, rs = _run(tmp_path, _record("1"), _record("1"))
    assert job.status is JobStatus.SUCCEEDED, job.error
    names = [r.ROIName for r in rs.StructureSetROISequence]
    assert names == ["CTV", "CTVp_Breast_L", "CTVn_Axilla_L", "CTVn_SCF_L", "CTVn_IMN_L"]
    assert all(len(n) <= 16 for n in names)
    types = {o.RTROIInterpretedType for o in rs.RTROIObservationsSequence}
    assert types == {"CTV"}
    assert set(job.roi_volumes_cc) == set(names)
    assert job.roi_volumes_cc["CTV"] == pytest.approx(
        sum(v for k, v in job.roi_volumes_cc.items() if k != "CTV"), rel=0.05
    )
    assert not [w for w in job.warnings if "nodal" in w], job.warnings
    assert any("2.5 cc (outside the body)" in w for w in job.warnings)
    assert "nodal_check" not in job.timings, "no second pass with separate structures"


def test_nodal_ctv_for_an_n0_note_is_removed_and_said(tmp_path: Path) -> None:
    """Nodes drawn for an N0 note never reach the RTSTRUCT: the job says how much it removed
    and why (before the note rule they were kept with a warning)."""
    job, rs = _run(tmp_path, _record("0"), _record("1"))
    assert job.status is JobStatus.SUCCEEDED, job.error
    names = [r.ROIName for r in rs.StructureSetROISequence]
    assert names == ["CTV", "CTVp_Breast_L"]
    removed = [w for w in job.warnings if "note rule" in w and "N0, no nodal CTV" in w]
    assert {w.split("(note rule: ")[1].split(" ")[0] for w in removed} == {"axilla", "scf", "imn"}
    assert job.roi_volumes_cc["CTV"] == pytest.approx(job.roi_volumes_cc["CTVp_Breast_L"], rel=0.01)


def test_n1mi_is_node_negative_and_mastectomy_contradiction_is_named() -> None:
    shape = (4, 8, 8)
    breast = np.zeros(shape, bool)
    breast[1:3, 2:6, 2:6] = True
    nodes = np.zeros(shape, bool)
    nodes[0, 0:3, 0:3] = True
    structures = {("breast", "L"): breast, ("axilla", "L"): nodes}
    found = structure_warnings(_record("1mi", Surgery.TOTAL_MASTECTOMY), structures, 1.0, 5.0)
    assert any("N1mi (no nodal CTV)" in w for w in found)
    assert any("no chest wall CTV" in w for w in found)
    assert any("breast CTV on the left side" in w and "mastectomy" in w for w in found)


def test_site_naming_map_and_its_limits() -> None:
    names = naming_map(["breast=PTV_Br_{side}"])
    assert names["breast"] == "PTV_Br_{side}" and names["imn"] == "CTVn_IMN_{side}"
    with pytest.raises(ConfigurationError):
        naming_map(["breast=CTVp_Breast_Whole_{side}"])
    with pytest.raises(ConfigurationError):
        naming_map(["kidney=X"])


class NoteReadingEngine(ContourEngine):
    """A multimodal structure network that reads only a one-sided note well: it answers a
    breast on both sides, and nodes on both sides whenever the note holds any N+ clause."""

    def __init__(self) -> None:
        network = SimpleNamespace(
            alignment=object(), config=SimpleNamespace(structures=("breast", "axilla"))
        )
        stub = SimpleNamespace(
            checkpoint_hash="sides000",
            network=network,
            context=None,
            cache=ContextCache(),
            prescription=SPEC_PRESCRIPTION,
        )
        super().__init__(stub)  # type: ignore[arg-type]
        self.notes: list[str] = []

    def contour(self, volume: Volume, note: str, progress: object) -> EngineResult:
        self.notes.append(note)
        shape = volume.array.shape
        masks = {}
        for index, side in enumerate(("R", "L")):  # rows of the toy volume: one per key
            for row, name in enumerate(("breast", "axilla")):
                if name == "axilla" and "N1" not in note:
                    continue
                mask = np.zeros(shape, dtype=bool)
                mask[0, 2 * index + row, :] = True
                masks[(name, side)] = mask
        union = np.logical_or.reduce(list(masks.values()))
        return EngineResult(union, {"network": 0.5}, 1, masks, {"islands": 1.0})


def test_a_bilateral_record_is_contoured_side_by_side() -> None:
    engine = NoteReadingEngine()
    volume = SimpleNamespace(array=np.zeros((1, 4, 3)), grid=SimpleNamespace(spacing=(10.0,) * 3))
    record = ClinicalRecord(
        diagnoses=(
            Diagnosis(side=Side.LEFT, surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage="1"),
            Diagnosis(side=Side.RIGHT, surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage="0"),
        )
    )
    result = engine.contour_record(volume, record, None)  # type: ignore[arg-type]
    assert engine.notes == [
        "N1, cT2, breast conserving surgery, left side",
        "N0, cT2, breast conserving surgery, right side",
    ]
    assert set(result.structures) == {("breast", "L"), ("axilla", "L"), ("breast", "R")}
    assert result.mask.sum() == 3 * 3, "the union of the kept structures only"
    assert result.timings["network"] == 1.0 and result.windows == 2
    assert result.removed_cc == {"islands": 2.0}
    with_note = record.model_copy(update={"note": "bilateral: left N1, right N0"})
    engine.notes.clear()
    whole = engine.contour_record(volume, with_note, None)  # type: ignore[arg-type]
    assert engine.notes == ["bilateral: left N1, right N0"], "a free text is never split"
    # One pass reads "N1" for both sides; the structured fields say N0 on the right.
    assert set(whole.structures) == {("breast", "L"), ("axilla", "L"), ("breast", "R")}
    assert whole.removed_cc["note rule: axilla R: N0, no nodal CTV"] == 3.0  # cc
