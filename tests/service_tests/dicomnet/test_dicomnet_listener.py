"""The DICOM listener on real sockets, driven by dcmtk (echoscu, storescu) and pynetdicom."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomnet_helpers import (
    AE_TITLE,
    LUNG1_CT,
    LUNG1_RTSTRUCT,
    Recorder,
    free_port,
    require_lung1,
    require_tool,
    running_listener,
)
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE

from model.errors import ConfigurationError, UnreadableDicomError
from service.dicomnet.assembly import ReceivedInstance, SeriesAssembler
from service.dicomnet.errors import (
    DicomStorageError,
    IncompleteInstanceError,
    InstanceConflictError,
    InvalidUidError,
    SopClassMismatchError,
)
from service.dicomnet.listener import DEFAULT_TRANSFER_SYNTAXES, DicomListener, status_for_error
from service.dicomnet.storage import store_instance

REPO = Path(__file__).resolve().parents[3]


def _echo(port: int, *, calling: str = "ECHOSCU", called: str = AE_TITLE) -> int:
    echoscu = require_tool("echoscu")
    cmd = [echoscu, "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode


def _storescu(
    port: int, *files: Path, calling: str = "STORESCU", propose: Sequence[str] = ()
) -> None:
    storescu = require_tool("storescu")
    cmd = [storescu, *propose, "-aet", calling, "-aec", AE_TITLE, "+sd", "127.0.0.1", str(port)]
    done = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --- verification and association policy ---------------------------------------------------------
def test_echoscu_succeeds(tmp_path: Path) -> None:
    with running_listener(tmp_path) as (listener, _):
        assert _echo(listener.port) == 0


def test_calling_ae_not_on_allow_list_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.dicomnet")
    with running_listener(tmp_path) as (listener, _):
        assert _echo(listener.port, calling="INTRUDER") != 0
        assert _echo(listener.port, calling="ECHOSCU") == 0
    assert "association rejected from INTRUDER@" in caplog.text
    assert "calling AE title not allowed" in caplog.text


def test_wrong_called_ae_title_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.dicomnet")
    with running_listener(tmp_path) as (listener, _):
        assert _echo(listener.port, called="SOMEONE") != 0
    assert "called AE title 'SOMEONE'" in caplog.text


def test_empty_allow_list_accepts_any_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.dicomnet")
    with running_listener(tmp_path, allowed=()) as (listener, _):
        assert _echo(listener.port, calling="ANYONE") == 0
    assert "dicom_allowed_aets is empty" in caplog.text


def _listener(root: Path, ae_title: str, syntaxes: Sequence[str]) -> DicomListener:
    return DicomListener(
        ae_title=ae_title,
        host="127.0.0.1",
        port=0,
        allowed_aets=[],
        transfer_syntaxes=syntaxes,
        storage_root=root,
        series_timeout_s=1.0,
        on_complete=Recorder(),
    )


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="dicom_ae_title"):
        _listener(tmp_path, "A" * 17, [])
    with pytest.raises(ConfigurationError, match="not a UID"):
        _listener(tmp_path, "X", ["JPEG"])
    assert _listener(tmp_path, "X", []).transfer_syntaxes == DEFAULT_TRANSFER_SYNTAXES


# --- the real LUNG1 series -----------------------------------------------------------------------
def test_storescu_pushes_lung1_series(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_lung1()
    originals = sorted(LUNG1_CT.glob("*.dcm"))
    assert len(originals) == 134
    first = pydicom.dcmread(originals[0], stop_before_pixels=True)
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "received"
    with running_listener(root, timeout_s=0.5) as (listener, recorder):
        _storescu(listener.port, LUNG1_CT)
        pushed = time.monotonic()
        completed = recorder.wait_for(1)
        time.sleep(0.3)  # nothing more may arrive
        assert len(recorder.series) == 1
    series = completed[0]
    assert series.instance_count == 134
    assert series.study_instance_uid == first.StudyInstanceUID
    assert series.series_instance_uid == first.SeriesInstanceUID
    assert series.accession_number == str(first.AccessionNumber)
    assert (series.modality, series.calling_ae, series.cycle) == ("CT", "STORESCU", 1)
    assert series.folder == root / first.StudyInstanceUID / first.SeriesInstanceUID
    assert recorder.times[0] - pushed > 0.25  # reported after the inactivity timeout

    every_file = [p for p in root.rglob("*") if p.is_file()]
    assert len(every_file) == 134
    assert all(p.suffix == ".dcm" and p.parent == series.folder for p in every_file)
    assert {p.stem for p in every_file} == {_sop_uid(p) for p in originals}
    assert {_sop_uid(p) for p in every_file} == {_sop_uid(p) for p in originals}
    stored = pydicom.dcmread(series.folder / f"{_sop_uid(originals[0])}.dcm")
    original = pydicom.dcmread(originals[0])
    assert stored.PixelData == original.PixelData

    for secret in (str(first.PatientName), str(first.PatientID)):
        assert secret and secret not in caplog.text


def test_more_instances_after_completion_start_a_new_cycle(tmp_path: Path) -> None:
    require_lung1()
    files = sorted(LUNG1_CT.glob("*.dcm"))
    with running_listener(tmp_path, timeout_s=0.3) as (listener, recorder):
        _storescu(listener.port, *files[:3])
        recorder.wait_for(1)
        _storescu(listener.port, *files[2:4])
        completed = recorder.wait_for(2)
    assert [(s.cycle, s.instance_count) for s in completed] == [(1, 3), (2, 2)]
    assert completed[0].folder == completed[1].folder
    assert len(list(completed[0].folder.glob("*.dcm"))) == 4


def _compress(source: Path, target: Path, tool: str) -> None:
    """Compress ``source`` with a dcmtk tool, or with pydicom for ``j2k``."""
    if tool != "j2k":
        subprocess.run([require_tool(tool), str(source), str(target)], check=True)
        return
    ds = pydicom.dcmread(source)
    try:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    except (RuntimeError, ImportError) as exc:
        pytest.skip(f"no JPEG 2000 encoder: {exc}")
    ds.save_as(target)


@pytest.mark.parametrize(
    ("tool", "propose", "syntax"),
    [
        ("dcmcjpeg", "-xs", "1.2.840.10008.1.2.4.70"),  # JPEG Lossless SV1
        ("dcmcjpls", "-xt", "1.2.840.10008.1.2.4.80"),  # JPEG-LS Lossless
        ("dcmcrle", "-xr", "1.2.840.10008.1.2.5"),  # RLE Lossless
        ("j2k", "-xv", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 Lossless (pydicom encodes)
        (None, "-xd", "1.2.840.10008.1.2.1.99"),  # Deflated: storescu deflates on the fly
    ],
)
def test_compressed_transfer_syntax_is_accepted(
    tmp_path: Path, tool: str | None, propose: str, syntax: str
) -> None:
    require_lung1()
    source = sorted(LUNG1_CT.glob("*.dcm"))[0]
    compressed = tmp_path / "compressed.dcm"
    if tool is None:
        compressed = source
    else:
        _compress(source, compressed, tool)
        assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == syntax
    with running_listener(tmp_path / "received") as (listener, recorder):
        _storescu(listener.port, compressed, propose=[propose])
        (series,) = recorder.wait_for(1)
    stored = pydicom.dcmread(series.folder / f"{_sop_uid(source)}.dcm")
    assert stored.file_meta.TransferSyntaxUID == syntax  # stored as received
    assert np.array_equal(stored.pixel_array, pydicom.dcmread(source).pixel_array)


def test_rtstruct_is_accepted(tmp_path: Path) -> None:
    require_lung1()
    with running_listener(tmp_path) as (listener, recorder):
        _storescu(listener.port, LUNG1_RTSTRUCT)
        (series,) = recorder.wait_for(1)
    assert series.modality == "RTSTRUCT"
    assert series.accession_number is None or series.accession_number.strip()


# --- refusals map to C-STORE statuses ------------------------------------------------------------
def _store_with_pynetdicom(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(ds.SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _small_ct(**changes: str) -> Dataset:
    """A LUNG1 CT header without pixel data, with ``changes`` applied."""
    ds = pydicom.dcmread(sorted(LUNG1_CT.glob("*.dcm"))[0], stop_before_pixels=True)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the bad UID is on purpose
def test_refusals_map_to_statuses(tmp_path: Path) -> None:
    require_lung1()
    good = _small_ct()
    blocked = tmp_path / str(good.StudyInstanceUID)
    blocked.write_text("a file where the study folder should be")
    with running_listener(tmp_path) as (listener, recorder):
        assert _store_with_pynetdicom(listener.port, good) == 0xA700
        bad_uid = _small_ct(SeriesInstanceUID="1.2.3/../../etc")
        assert _store_with_pynetdicom(listener.port, bad_uid) == 0xC000
        no_modality = _small_ct(Modality="")
        assert _store_with_pynetdicom(listener.port, no_modality) == 0xC000
        assert listener.assembler.pending_count() == 0
    assert recorder.series == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == [blocked.name]


def test_status_mapping_is_in_one_place() -> None:
    assert status_for_error(DicomStorageError("disk full")) == 0xA700
    assert status_for_error(SopClassMismatchError("x")) == 0xA900
    assert status_for_error(InvalidUidError("x")) == 0xC000
    assert status_for_error(IncompleteInstanceError("x")) == 0xC000
    assert status_for_error(UnreadableDicomError("x")) == 0xC000
    assert status_for_error(RuntimeError("x")) == 0x0110


# --- atomic storage ------------------------------------------------------------------------------
def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(DicomStorageError, match="No space left"):
        store_instance(tmp_path, "1.2", "1.2.3", "1.2.3.4", b"x" * 1000)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_store_is_atomic_idempotent_and_refuses_bad_uids(tmp_path: Path) -> None:
    path = store_instance(tmp_path, "1.2", "1.2.3", "1.2.3.4", b"first")
    assert store_instance(tmp_path, "1.2", "1.2.3", "1.2.3.4", b"first") == path  # sent again
    assert [p.name for p in path.parent.iterdir()] == ["1.2.3.4.dcm"]
    with pytest.raises(InstanceConflictError):  # other content under the same SOPInstanceUID
        store_instance(tmp_path, "1.2", "1.2.3", "1.2.3.4", b"second")
    assert path.read_bytes() == b"first"
    for bad in ("..", "1.2/3", "", "1." + "2" * 70, "1.2a"):
        with pytest.raises(InvalidUidError):
            store_instance(tmp_path, "1.2", bad, "1.2.3.4", b"x")


# --- assembler -----------------------------------------------------------------------------------
def _instance(series: str, sop: str) -> ReceivedInstance:
    return ReceivedInstance("1.2", series, sop, None, "CT", "TESTER", Path("/x") / f"{sop}.dcm")


def test_assembler_completion_rule_with_a_fake_clock() -> None:
    now = [100.0]
    recorder = Recorder()
    assembler = SeriesAssembler(5.0, recorder, clock=lambda: now[0])
    assembler.record(_instance("1.2.3", "1.1"))
    now[0] += 4.0
    assembler.record(_instance("1.2.3", "1.2"))
    assembler.record(_instance("1.2.3", "1.2"))  # a duplicate counts once
    now[0] += 1.0
    assembler.record(_instance("1.2.4", "2.1"))
    now[0] += 3.9
    assert assembler.check() == []
    now[0] += 0.1
    assert [(s.series_instance_uid, s.instance_count) for s in assembler.check()] == [("1.2.3", 2)]
    assert assembler.pending_count() == 1
    assembler.stop(flush=True)
    assert [s.series_instance_uid for s in recorder.series] == ["1.2.3", "1.2.4"]


def test_assembler_survives_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def failing(series: object) -> None:
        calls.append("called")
        raise RuntimeError("boom")

    def wait_for_calls(count: int) -> None:
        deadline = time.monotonic() + 10.0
        while len(calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    assembler = SeriesAssembler(0.05, failing)
    assembler.start()
    try:
        assembler.record(_instance("1.2.3", "1.1"))
        wait_for_calls(1)
        assembler.record(_instance("1.2.5", "1.1"))
        wait_for_calls(2)
    finally:
        assembler.stop()
    assert calls == ["called", "called"]
    assert "on_complete failed for series 1.2.3: RuntimeError" in caplog.text


# --- the sub-command -----------------------------------------------------------------------------
_COMMAND = """
import argparse, sys
from service.cli import log_completed_series, register_dicom_listener
parser = argparse.ArgumentParser()
register_dicom_listener(parser.add_subparsers(dest="command"), on_complete=log_completed_series)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_dicom_listener_command_runs_until_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_lung1()
    monkeypatch.setenv("LLMCTV_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("LLMCTV_DICOM_SERIES_TIMEOUT_S", "0.2")
    monkeypatch.setenv("LLMCTV_DICOM_ALLOWED_AETS", "STORESCU")
    port = free_port()
    cmd = [sys.executable, "-c", _COMMAND, "dicom-listener", "--port", str(port)]
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            assert "DICOM listener LLMCTV on 127.0.0.1" in proc.stdout.readline()
            _storescu(port, LUNG1_RTSTRUCT)
            line = proc.stdout.readline()
            assert "series complete" in line and "1 RTSTRUCT instance(s) from STORESCU" in line
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert len(list((tmp_path / "dicom" / "received").rglob("*.dcm"))) == 1
