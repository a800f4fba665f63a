"""Anatomical plausibility on the real LUNG1 CT (a man treated for lung cancer: no breast).

With a left breast-conserving N1 note, the shipped model on e766665 drew a 277 cc
``CTVp_Breast_L`` in the left upper abdomen, 25 cc of left chest wall and 20 cc of right
breast, and the job warned only about the wrong-side pieces. Now the job runs the real model
through :func:`workers.pipeline.run_job`, and its RTSTRUCT is checked against the clinical
lung contours of the same CT (drawn by a clinical system, independent of our landmarks).
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
    # What is left (nodes over a man's chest) the network itself is unsure of.
    assert job.structure_confidence and max(job.structure_confidence.values()) < 0.5
    assert any(finding.startswith("low confidence") for finding in job.attention)
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
