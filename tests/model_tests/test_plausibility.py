"""Anatomical plausibility on the real LUNG1 CT (a man treated for lung cancer: no breast).

With a left breast-conserving N1 note, the shipped model on e766665 drew a 277 cc
``CTVp_Breast_L`` in the left upper abdomen, 25 cc of left chest wall and 20 cc of right
breast, and the job warned only about the wrong-side pieces. The model shipped since
2026-12-08 draws a 168 cc breast in front of the heart and over the liver, behind the ribs.
Now the job runs the real model through :func:`workers.pipeline.run_job`, and its RTSTRUCT
is checked against the clinical lung contours of the same CT (drawn by a clinical system,
independent of our landmarks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REPO
from rtstruct_factories import LUNG1_CT, lung1_lungs_mask, roi_mask_from_rtstruct

from model.contouring.engine import ContourEngine
from model.dicom.rtstruct import ReferencedSeries
from model.dicom.series import read_ct_series
from model.inference import Predictor
from workers.jobs import FileJobStore, Job, JobFiles, JobStatus
from workers.pipeline import run_job
from workers.settings import WorkerSettings

pytestmark = pytest.mark.skipif(not LUNG1_CT.is_dir(), reason=f"shared data absent: {LUNG1_CT}")
LEFT_BCS_N1 = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}]
}


@pytest.fixture(scope="module")
def lung1_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Job, Path]:
    root = tmp_path_factory.mktemp("lung1")
    settings = WorkerSettings.from_env(storage_dir=root, device="cpu")
    files = JobFiles(root)
    store = FileJobStore(files)
    shutil.copytree(LUNG1_CT, files.input_dir("ab1234"))
    store.create(Job(job_id="ab1234", clinical=LEFT_BCS_N1))
    predictor = Predictor.from_checkpoint(REPO / "checkpoints" / "demo", device="cpu")
    run_job("ab1234", store, files, ContourEngine(predictor), settings)
    return store.get("ab1234"), files.rtstruct("ab1234")


def test_a_ct_without_breast_needs_attention(lung1_job: tuple[Job, Path]) -> None:
    job, _ = lung1_job
    assert job.status is JobStatus.SUCCEEDED, job.error
    print("\nLUNG1, left BCS N1: attention", json.dumps(job.attention, indent=1))
    print("volumes", job.roi_volumes_cc)
    assert any("breast CTV on the left side" in finding for finding in job.attention)
    # The shipped model (since 2026-12-08) draws a breast in front of the heart and over the
    # liver: that part lies behind the ribs and is removed and reported.
    assert any("breast" in f and "behind the ribs" in f for f in job.attention), job.attention
    # What is left the network itself is unsure of: every structure is flagged for review.
    flag = WorkerSettings.from_env(storage_dir=REPO, device="cpu").contouring.confidence_flag_below
    assert job.structure_confidence and max(job.structure_confidence.values()) < flag
    low = [f for f in job.attention if f.startswith("low confidence")]
    assert len(low) == len(job.structure_confidence), low
    assert any("implausible" in w for w in job.warnings), job.warnings


def test_nothing_inside_the_lungs_below_the_diaphragm_or_in_bone(
    lung1_job: tuple[Job, Path],
) -> None:
    _, rtstruct = lung1_job
    ct = read_ct_series(LUNG1_CT)
    reference = ReferencedSeries.from_datasets(ct.datasets)
    lungs = lung1_lungs_mask(reference)
    voxel_cc = float(np.prod(ct.volume.grid.spacing)) / 1000.0
    lowest_lung_k = int(np.flatnonzero(lungs.any(axis=(1, 2))).min())
    ours = pydicom.dcmread(rtstruct)
    names = [str(r.ROIName) for r in ours.StructureSetROISequence]
    for name in names:
        mask = roi_mask_from_rtstruct(ours, name, reference, check_slices=False)
        in_lung = float((mask & lungs).sum()) * voxel_cc
        below = float(mask[:lowest_lung_k].sum()) * voxel_cc
        bone = float((mask & (ct.volume.array > 300)).sum()) * voxel_cc
        print(
            f"{name}: {mask.sum() * voxel_cc:.1f} cc; in lung {in_lung:.2f}, "
            f"below the lung bases {below:.2f}, bone {bone:.2f}"
        )
        # Breast and chest wall never touch a lung; nodes may abut the pleura (the phantom
        # spec's node regions even overlap the lungs: model/imaging/plausibility.py).
        assert in_lung < (0.1 if name.startswith("CTVp_") else 2.0), name
        assert below == 0.0, name
        assert bone < 1.0, name
    assert "CTVp_Breast_R" not in names and "CTVp_ChestWall_L" not in names


def test_a_structure_cut_by_the_field_of_view_needs_attention() -> None:
    """A patient wider than the field of view: the right breast CTV reaches the image edge
    and may go on outside it. Before, nothing said so; now the job needs attention."""
    from model.contouring.attention import attention_findings
    from model.dataset.prescription import SPEC_PRESCRIPTION
    from model.imaging.geometry import Grid, Volume
    from model.imaging.plausibility import check_structures, find_landmarks
    from model.imaging.postprocessing import midline_x
    from model.text.clinical import parse_clinical

    shape = (12, 40, 40)
    grid = Grid(shape, (-80.0, -80.0, 0.0), (3.0, 4.0, 4.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[:, 1:38, :] = 40.0  # the body fills the image from side to side: cut by the FOV
    hu[:, 15:30, 5:16] = -800.0  # right lung (i grows toward the patient's left)
    hu[:, 15:30, 25:36] = -800.0  # left lung
    volume = Volume(hu, grid)
    body = hu > -400.0
    body[:, 15:30, 5:16] = body[:, 15:30, 25:36] = True
    mid = midline_x(body, grid)
    right, left = np.zeros(shape, bool), np.zeros(shape, bool)
    right[2:10, 2:7, 0:6] = True  # reaches the image edge (i = 0)
    left[2:10, 2:7, 24:30] = True
    kept, report = check_structures(
        volume,
        {("breast", "R"): right, ("breast", "L"): left},
        find_landmarks(volume, body, mid),
        mid,
    )
    assert set(kept) == {("breast", "R"), ("breast", "L")}
    assert report.fov_edge_slices == {("breast", "R"): 8}
    record = parse_clinical(
        {
            "diagnoses": [
                {"side": side, "surgery": "breast_conserving", "t_stage": "2", "n_stage": "0"}
                for side in ("left", "right")
            ]
        }
    )
    found = attention_findings(record, kept, report, 0.048, 1.0)
    edge = [f for f in found if "field of view" in f]
    assert len(edge) == 1 and "breast CTV on the right side" in edge[0] and "8 slice" in edge[0]
    # A left-only note: the note rule removes the right breast, and with it the finding.
    left_only = record.model_copy(update={"diagnoses": record.diagnoses[:1]})
    assert left_only.diagnoses[0].side.letter == "L"
    outcome = SPEC_PRESCRIPTION.apply(kept, {}, left_only, grid.spacing)
    assert outcome is not None and set(outcome.structures) == {("breast", "L")}
    found = attention_findings(left_only, outcome.structures, report, 0.048, 1.0)
    assert not [f for f in found if "field of view" in f], found


def test_the_ctv_is_the_union_of_what_the_rules_left() -> None:
    """After the rules remove voxels (a lot, on a CT without breast), the CTV is exactly the
    union of the structures kept, updated in their boxes rather than rebuilt."""
    volume = read_ct_series(LUNG1_CT).volume
    predictor = Predictor.from_checkpoint(REPO / "checkpoints" / "demo", device="cpu")
    pred = predictor.predict(volume, "N1, cT2, breast conserving surgery, left side")
    assert pred.plausibility is not None and pred.plausibility.removed_cc
    union = np.zeros(volume.grid.shape, dtype=bool)
    for mask in pred.structures.values():
        union |= mask
    assert pred.mask.any() and np.array_equal(pred.mask, union)
