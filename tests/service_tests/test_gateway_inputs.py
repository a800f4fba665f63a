"""The bad-input matrix over real HTTP: every refusal has its status and stable code.

No case may crash the service or leave a job stuck: the last test checks every job created
here is finished, and that ``/health`` still answers.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from factories import CtSpec, slice_position, write_ct_series
from fake_engine import HoldingDispatcher
from fastapi import FastAPI
from gateway_client import AUTH, TOKEN, submit, wait_finished
from live_server import serve_app
from pydicom.dataset import FileDataset
from pydicom.uid import RLELossless

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.deps import ServiceState
from service.settings import Settings
from workers.jobs import FileJobStore, JobFiles, iter_jobs

CLINICAL = json.dumps(
    {
        "diagnoses": [
            {"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}
        ]
    }
)


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    return body


# --- DICOM content refused at submission ------------------------------------------------------
def _tilted(spec: CtSpec) -> Callable[[int, FileDataset], None]:
    def edit(k: int, ds: FileDataset) -> None:
        x, y, z = slice_position(spec, k)
        ds.ImagePositionPatient = [x, y + k * spec.slice_spacing * np.tan(np.radians(15)), z]

    return edit


def _series(kind: str, folder: Path) -> list[Path]:
    if kind == "not_ct":
        return write_ct_series(folder, CtSpec(modality="MR"))
    if kind == "mixed_series":
        return write_ct_series(folder / "a", CtSpec()) + write_ct_series(
            folder / "b", CtSpec(seed=1)
        )
    if kind == "oblique_series":
        spec = CtSpec()
        return write_ct_series(folder, spec, edit=_tilted(spec))
    if kind == "inconsistent_geometry":
        return write_ct_series(
            folder,
            edit=lambda k, ds: setattr(ds, "PixelSpacing", [0.8, 0.75] if k == 2 else [0.8, 0.7]),
        )
    if kind == "missing_slices":
        paths = write_ct_series(folder, CtSpec(n_slices=8))
        ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
        ordered[4].unlink()
        return [p for p in paths if p.exists()]
    if kind == "too_few_slices":
        return write_ct_series(folder, CtSpec(n_slices=4))
    if kind == "no_series":
        (folder / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("not a DICOM file")
        return [folder / "notes.txt"]
    if kind == "unreadable_dicom":  # cut inside the header
        paths = write_ct_series(folder, CtSpec())
        data = paths[3].read_bytes()
        paths[3].write_bytes(data[:200])
        return paths
    raise ValueError(kind)


@pytest.mark.parametrize(
    "code",
    [
        "not_ct",
        "mixed_series",
        "oblique_series",
        "inconsistent_geometry",
        "missing_slices",
        "too_few_slices",
        "no_series",
        "unreadable_dicom",
    ],
)
def test_dicom_refused_with_its_code(
    gateway: tuple[str, FastAPI], tmp_path: Path, code: str
) -> None:
    url, _ = gateway
    body = _problem(submit(url, _series(code, tmp_path), CLINICAL), 422, code)
    assert body["type"] == f"urn:llmctv:problem:{code}"
    assert str(body["detail"])


def test_named_series_among_two_is_accepted(gateway: tuple[str, FastAPI], tmp_path: Path) -> None:
    url, _ = gateway
    second = CtSpec(seed=1)
    paths = write_ct_series(tmp_path / "a", CtSpec()) + write_ct_series(tmp_path / "b", second)
    answer = submit(url, paths, CLINICAL, extra={"series_instance_uid": second.series_uid})
    assert answer.status_code == 202, answer.text
    status = wait_finished(url, answer.json()["job_id"])
    assert status["series_instance_uid"] == second.series_uid
    assert status["status"] == "succeeded"


def test_truncated_pixel_data_fails_the_job_not_the_service(
    gateway: tuple[str, FastAPI], phantoms: list[WrittenCase], tmp_path: Path
) -> None:
    url, _ = gateway
    paths = []
    for p in phantoms[0].ct_files:
        paths.append(tmp_path / p.name)
        paths[-1].write_bytes(p.read_bytes())
    paths[10].write_bytes(paths[10].read_bytes()[:-500])  # headers intact, pixels cut
    answer = submit(url, paths, phantoms[0].clinical.model_dump_json())
    if answer.status_code == 422:  # refused up front is as good
        _problem(answer, 422, "unreadable_dicom")
        return
    status = wait_finished(url, answer.json()["job_id"])
    assert status["status"] == "failed"
    assert status["error"]["code"] == "unreadable_dicom"
    rtstruct = httpx.get(f"{url}/jobs/{status['job_id']}/rtstruct", headers=AUTH)
    _problem(rtstruct, 409, "job_failed")


def test_compressed_series_is_contoured(
    gateway: tuple[str, FastAPI], phantoms: list[WrittenCase], tmp_path: Path
) -> None:
    url, _ = gateway
    paths = []
    for p in phantoms[1].ct_files:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        paths.append(tmp_path / p.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    answer = submit(url, paths, phantoms[1].clinical.model_dump_json())
    assert answer.status_code == 202, answer.text
    assert wait_finished(url, answer.json()["job_id"])["status"] == "succeeded"


# --- clinical fields ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("clinical", "field"),
    [
        (
            '{"diagnoses": [{"side": "up", "surgery": "breast_conserving", "t_stage": "2", '
            '"n_stage": "1"}]}',
            "diagnoses.0.side",
        ),
        (
            '{"diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", '
            '"n_stage": "5"}]}',
            "diagnoses.0.n_stage",
        ),
        (
            '{"diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", '
            '"n_stage": "1"}], "smoker": true}',
            "smoker",
        ),
        (
            '{"diagnoses": [{"side": "left", "surgery": "total_mastectomy", "t_stage": "2", '
            '"n_stage": "1"}, {"side": "left", "surgery": "breast_conserving", "t_stage": "1", '
            '"n_stage": "0"}]}',
            "diagnoses",
        ),
        ("not json", "clinical"),
    ],
    ids=["bad-side", "bad-n-stage", "unknown-field", "side-twice", "not-json"],
)
def test_invalid_clinical_names_the_field(
    gateway: tuple[str, FastAPI], phantoms: list[WrittenCase], clinical: str, field: str
) -> None:
    url, _ = gateway
    body = _problem(submit(url, list(phantoms[0].ct_files[:6]), clinical), 422, "invalid_clinical")
    assert str(body["detail"]).startswith(field)


def test_missing_clinical_field_is_a_request_error(gateway: tuple[str, FastAPI]) -> None:
    url, _ = gateway
    answer = httpx.post(f"{url}/contour", files=[("files", ("a.dcm", b"x"))], headers=AUTH)
    body = _problem(answer, 422, "invalid_request")
    assert "clinical" in str(body["detail"])


def test_neither_files_nor_archive(gateway: tuple[str, FastAPI]) -> None:
    url, _ = gateway
    answer = httpx.post(f"{url}/contour", data={"clinical": CLINICAL}, headers=AUTH)
    _problem(answer, 422, "no_input")


# --- archives -------------------------------------------------------------------------------
def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _post_zip(url: str, data: bytes, clinical: str = CLINICAL) -> httpx.Response:
    return httpx.post(
        f"{url}/contour",
        files={"archive": ("series.zip", data, "application/zip")},
        data={"clinical": clinical},
        headers=AUTH,
        timeout=60,
    )


def test_zip_with_non_dicom_member_is_contoured_with_a_warning(
    gateway: tuple[str, FastAPI], phantoms: list[WrittenCase]
) -> None:
    url, _ = gateway
    case = phantoms[1]
    members = {f"ct/{p.name}": p.read_bytes() for p in case.ct_files}
    members["README.txt"] = b"exported by a PACS"
    answer = _post_zip(url, _zip(members), case.clinical.model_dump_json())
    assert answer.status_code == 202, answer.text
    status = wait_finished(url, answer.json()["job_id"])
    assert status["status"] == "succeeded"
    assert any("non-DICOM" in w for w in status["warnings"])


@pytest.mark.parametrize(
    "name", ["../../etc/evil.dcm", "/abs/evil.dcm", "C:/evil.dcm", "a/../../evil.dcm"]
)
def test_zip_path_traversal_is_refused(gateway: tuple[str, FastAPI], name: str) -> None:
    url, _ = gateway
    _problem(_post_zip(url, _zip({name: b"\0" * 200})), 422, "unsafe_archive")


def test_zip_bomb_is_refused(gateway: tuple[str, FastAPI]) -> None:
    url, _ = gateway
    _problem(_post_zip(url, _zip({"bomb.dcm": b"\0" * (64 << 20)})), 422, "unsafe_archive")


def test_not_a_zip(gateway: tuple[str, FastAPI]) -> None:
    url, _ = gateway
    _problem(_post_zip(url, b"PK\x03\x04 this is not really a zip"), 422, "unsafe_archive")


# --- authentication and job lookup ------------------------------------------------------------
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_no_or_wrong_token_is_401(
    gateway: tuple[str, FastAPI], phantoms: list[WrittenCase], headers: dict[str, str]
) -> None:
    url, _ = gateway
    answer = submit(url, list(phantoms[0].ct_files[:6]), CLINICAL, headers=headers)
    _problem(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"] == "Bearer"
    _problem(httpx.get(f"{url}/jobs/0123abcd", headers=headers), 401, "unauthorized")


@pytest.mark.parametrize("job_id", ["0123456789abcdef", "not-hex", "..%2F..%2Fetc"])
def test_unknown_job_is_404(gateway: tuple[str, FastAPI], job_id: str) -> None:
    url, _ = gateway
    for suffix in ("", "/rtstruct", "/preview.png"):
        answer = httpx.get(f"{url}/jobs/{job_id}{suffix}", headers=AUTH)
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == "application/problem+json"


# --- limits and unfinished jobs: a gateway with small limits and a worker that holds jobs ------
@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings.from_env(
        api_tokens=[TOKEN],
        storage_dir=tmp_path_factory.mktemp("strict"),
        max_upload_bytes=600_000,
        max_unpacked_bytes=700_000,
        max_archive_members=30,
        dicom_listener=False,
    )
    files = JobFiles(settings.storage.storage_dir)
    state = ServiceState(settings, FileJobStore(files), files, HoldingDispatcher())
    with serve_app(create_app(settings, state)) as url:
        yield url


def test_upload_over_the_limit_is_413(strict: str, phantoms: list[WrittenCase]) -> None:
    body = _problem(submit(strict, list(phantoms[0].ct_files), CLINICAL), 413, "payload_too_large")
    assert "limit" in str(body["detail"])


def test_chunked_upload_over_the_limit_is_413(strict: str) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.dcm"\r\n\r\n'
        for _ in range(48):  # 3 MiB, over the limit plus the 1 MiB multipart slack
            yield b"\0" * 65536

    answer = httpx.post(
        f"{strict}/contour",
        content=body(),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    _problem(answer, 413, "payload_too_large")


def test_archive_unpacking_over_the_limit_is_413(strict: str) -> None:
    members = {
        f"m{n}.dcm": bytes(np.random.default_rng(n).integers(0, 255, 40_000, np.uint8))
        for n in range(20)
    }
    _problem(_post_zip(strict, _zip(members, zipfile.ZIP_STORED)), 413, "payload_too_large")


def test_too_many_archive_members(strict: str) -> None:
    _problem(_post_zip(strict, _zip({f"m{n}.dcm": b"x" for n in range(31)})), 422, "unsafe_archive")


def test_result_before_the_job_is_done_is_409(strict: str, phantoms: list[WrittenCase]) -> None:
    answer = submit(strict, list(phantoms[0].ct_files[:12]), CLINICAL)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert httpx.get(strict + job["status_url"], headers=AUTH).json()["status"] == "queued"
    for link in ("rtstruct_url", "preview_url"):
        _problem(httpx.get(strict + job[link], headers=AUTH), 409, "job_not_finished")


def test_no_job_left_behind(gateway: tuple[str, FastAPI]) -> None:
    """Runs last in this module: every accepted job finished; the service still answers."""
    url, app = gateway
    for job in iter_jobs(app.state.llmctv.store):
        if not job.status.finished:
            wait_finished(url, job.job_id)
    assert httpx.get(f"{url}/health").status_code == 200


def test_refused_uploads_leave_no_files(gateway: tuple[str, FastAPI]) -> None:
    _, app = gateway
    files: JobFiles = app.state.llmctv.files
    with_record = {p.parent.name for p in files.jobs.glob("*/job.json")}
    assert {p.name for p in files.jobs.iterdir()} == with_record
