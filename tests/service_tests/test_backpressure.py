"""Disk backpressure: below the watermark every way in refuses new data, running jobs finish,
readiness says so; a disk that is really full (tmpfs) leaves no partial file."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from factories import CtSpec, make_ct_slice
from fake_engine import FakeEngine
from gateway_client import AUTH, TOKEN, submit, wait_finished, wait_ready_state
from live_server import free_port, serve_app
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.settings import Settings
from workers.storage_space import DiskUsage

GIB = 1 << 30


@dataclass
class FakeDisk:
    """An injected free-space probe: a 100 GiB disk with ``used`` bytes used."""

    used: int = 10 * GIB

    def __call__(self, folder: Path) -> DiskUsage:
        return DiskUsage(100 * GIB, self.used, 100 * GIB - self.used)


@pytest.fixture
def disk() -> FakeDisk:
    """Given to the gateway as its free-space probe (``create_app(..., disk_probe=disk)``)."""
    return FakeDisk()


def _stow_body(n: int = 1, side: int = 12) -> tuple[bytes, dict[str, str]]:
    spec = CtSpec(n_slices=n, rows=side, columns=side)
    parts = []
    for k in range(n):
        buffer = io.BytesIO()
        make_ct_slice(spec, k).save_as(buffer, enforce_file_format=True)
        parts.append(b"--bnd\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue())
    body = b"\r\n".join(parts) + b"\r\n--bnd--\r\n"
    content_type = 'multipart/related; type="application/dicom"; boundary=bnd'
    return body, {**AUTH, "Content-Type": content_type}


def _stow(url: str, n: int = 1) -> httpx.Response:
    body, headers = _stow_body(n)
    return httpx.post(f"{url}/dicomweb/studies", content=body, headers=headers, timeout=30)


def _associate(port: int) -> tuple[bool, tuple[int | None, ...]]:
    """(established, (result, source, diagnostic) of a rejection)."""
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="LLMCTV")
    try:
        answer = assoc.acceptor.primitive
        if assoc.is_established or answer is None:
            return assoc.is_established, ()
        return False, (answer.result, answer.result_source, answer.diagnostic)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _settings(storage: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "api_tokens": [TOKEN],
        "storage_dir": storage,
        "dicom_listener": True,
        "dicom_host": "127.0.0.1",
        "dicom_port": free_port(),
        "dicom_series_timeout_s": 0.5,
        "storage_min_free_bytes": 1_000_000,
        "storage_max_used_fraction": 0.9,
    }
    return Settings.from_env(**{**values, **changes})


def test_full_disk_refuses_new_data_and_lets_the_running_job_finish(
    tmp_path: Path, disk: FakeDisk, phantoms: list[WrittenCase]
) -> None:
    settings = _settings(tmp_path / "storage")
    gate = threading.Event()
    case = phantoms[0]
    with serve_app(create_app(settings, engine=FakeEngine(gate=gate), disk_probe=disk)) as url:
        wait_ready_state(url, 200)
        job = submit(url, list(case.ct_files), case.clinical.model_dump_json()).json()
        disk.used = 95 * GIB  # above storage_max_used_fraction 0.9

        refused = _stow(url)
        assert refused.status_code == 503
        assert refused.json()["code"] == "storage_full"
        assert refused.headers["retry-after"] == "60"
        upload = submit(url, list(case.ct_files), case.clinical.model_dump_json())
        assert upload.status_code == 503
        assert upload.json()["code"] == "storage_full"
        assert upload.headers["retry-after"] == "60"
        # A-ASSOCIATE-RJ: transient (2), service provider / presentation (3), congestion (1)
        assert _associate(settings.dicom.dicom_port) == (False, (0x02, 0x03, 0x01))
        ready = wait_ready_state(url, 503)
        assert "storage" in ready["failing"]

        gate.set()  # the job accepted before the disk filled finishes
        assert wait_finished(url, job["job_id"])["status"] == "succeeded"
        assert httpx.get(f"{url}/jobs", headers=AUTH).status_code != 503  # reads still work

        disk.used = 10 * GIB  # space freed: everything accepts again
        assert _stow(url).status_code == 200
        assert _associate(settings.dicom.dicom_port) == (True, ())
        wait_ready_state(url, 200)


def test_min_free_bytes_is_a_watermark_too(tmp_path: Path, disk: FakeDisk) -> None:
    disk.used = 100 * GIB - 999_999  # fewer than storage_min_free_bytes left, 99.99 % used
    settings = _settings(tmp_path / "storage", dicom_listener=False, storage_max_used_fraction=1.0)
    with serve_app(create_app(settings, engine=FakeEngine(), disk_probe=disk)) as url:
        answer = _stow(url)
        assert answer.status_code == 503
        assert "storage_min_free_bytes" in answer.json()["detail"]


# --- a real full disk: a 4 MiB tmpfs ------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount is not installed")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Grow a ballast file until about ``leave`` bytes are free."""
    ballast = folder / "ballast"
    size = ballast.stat().st_size if ballast.exists() else 0
    free = shutil.disk_usage(folder).free
    with contextlib.suppress(OSError):  # the very last page: full is what was asked for
        ballast.write_bytes(b"\0" * max(size + free - leave, 0))


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".tmp"))


def test_really_full_disk_refuses_without_partial_files(tiny_disk: Path) -> None:
    # The watermark is off (0 bytes, 100 %): the disk itself runs out during the request.
    settings = _settings(
        tiny_disk / "storage",
        dicom_listener=False,
        storage_min_free_bytes=0,
        storage_max_used_fraction=1.0,
    )
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        received = tiny_disk / "storage" / "dicom" / "received"
        _fill(tiny_disk, leave=300_000)  # room to spool one 180 kB slice, not to store it
        body, headers = _stow_body(1, side=300)
        answer = httpx.post(f"{url}/dicomweb/studies", content=body, headers=headers)
        assert answer.status_code == 409, answer.text  # refused, not half-stored
        failed = answer.json()["00081198"]["Value"]
        assert [i["00081197"]["Value"][0] for i in failed] == [0xA700]  # out of resources
        assert list(received.rglob("*.dcm")) == []
        assert _leftovers(tiny_disk) == []

        _fill(tiny_disk, leave=0)  # not even room to spool the part
        answer = httpx.post(f"{url}/dicomweb/studies", content=body, headers=headers)
        assert answer.status_code == 503
        assert answer.json()["code"] == "storage_full"
        assert list(received.rglob("*.dcm")) == []
        assert _leftovers(tiny_disk) == []


def test_tmpfs_below_the_watermark_is_refused_everywhere(tiny_disk: Path) -> None:
    settings = _settings(tiny_disk / "storage", storage_min_free_bytes=1_000_000)
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        assert _stow(url).status_code == 200  # 4 MiB free: fine
        _fill(tiny_disk, leave=500_000)
        assert _stow(url).status_code == 503
        assert _associate(settings.dicom.dicom_port) == (False, (0x02, 0x03, 0x01))
        (tiny_disk / "ballast").unlink()
        assert _stow(url).status_code == 200
        assert _leftovers(tiny_disk) == []
