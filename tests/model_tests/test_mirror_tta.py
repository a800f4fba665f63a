"""Mirror test-time augmentation: the shipped model, a generated patient, both passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.dicom.series import read_ct_series
from model.evaluation.metrics import dice
from model.imaging.postprocessing import body_mask, midline_x
from model.inference import Predictor
from model.lab.phantoms import write_cohort
from workers.model_loading import DEMO_CHECKPOINT


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    case = write_cohort(tmp_path_factory.mktemp("tta") / "A", 1, "A", seed=11, scale=0.5)[0]
    return case.directory / "ct", case.clinical


def test_mirror_tta_contours_the_noted_side_from_both_passes(patient: tuple) -> None:
    """Twice the windows, the mirrored note encoded, and the CTV still on the noted side:
    a second pass not reflected back would put half of its map on the other breast."""
    folder, record = patient
    volume = read_ct_series(folder).volume
    single = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")
    both = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", mirror_tta=True)
    one = single.predict_record(volume, record)
    two = both.predict_record(volume, record)
    assert two.windows == 2 * one.windows
    mid = midline_x(body_mask(volume), volume.grid)
    x = volume.grid.lps_coordinate(np.argwhere(two.mask), 0)
    noted_left = record.diagnoses[0].side.letter == "L"
    on_side = float(np.mean((x > mid) == noted_left))
    assert on_side >= 0.95, on_side
    assert dice(one.mask, two.mask) >= 0.85
    assert {key[1] for key in two.structures} == {record.diagnoses[0].side.letter}


def test_a_bare_context_and_a_vision_network_are_never_mirrored(patient: tuple) -> None:
    folder, record = patient
    volume = read_ct_series(folder).volume
    both = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu", mirror_tta=True)
    g = both.context_for(record.prompt_text())
    assert (
        both.predict(volume, context=g).windows
        == Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")
        .predict(volume, context=g)
        .windows
    )
    vision = Predictor.from_checkpoint(DEMO_CHECKPOINT.parent / "demo-vision", mirror_tta=True)
    assert not vision.mirrors and vision._mirrored_context(record.prompt_text()) is None
    # A side spelt otherwise cannot be mirrored: the mirrored pass would keep "Lt" and put
    # its map on the other side; such a note is contoured once.
    assert both._mirrored_context("Lt breast cancer, N1, breast conserving surgery") is None
    assert both._mirrored_context("N1, cT2, breast conserving surgery, left side") is not None


def test_a_worker_serves_tta_as_set_and_refuses_it_without_its_text_encoder(
    patient: tuple, tmp_path: Path
) -> None:
    """LLMCTV_MIRROR_TTA reaches the predictor of a real job; a cache-only worker (the
    mirrored note is never in the gateway's cache) refuses to start with it."""
    import shutil

    from model.errors import ConfigurationError
    from workers.jobs import FileJobStore, Job, JobFiles, JobStatus, new_job_id
    from workers.model_loading import load_engine
    from workers.pipeline import run_job
    from workers.settings import WorkerSettings

    folder, record = patient
    settings = WorkerSettings.from_env(redis_url=None, storage_dir=tmp_path / "store", device="cpu")
    settings = settings.model_copy(
        update={"contouring": settings.contouring.model_copy(update={"mirror_tta": True})}
    )
    with pytest.raises(ConfigurationError, match="MIRROR_TTA"):
        load_engine(settings, with_text_encoder=False)
    engine = load_engine(settings)
    assert engine.predictor.mirror_tta
    files = JobFiles(settings.storage.storage_dir)
    store = FileJobStore(files)
    job_id = new_job_id()
    shutil.copytree(folder, files.input_dir(job_id))
    store.create(Job(job_id=job_id, clinical=record.model_dump(mode="json")))
    run_job(job_id, store, files, engine, settings)
    job = store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and files.rtstruct(job_id).is_file()
