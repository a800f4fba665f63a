"""The C-STORE sender against our own listener, a real Orthanc, and peers that fail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from dicomnet_helpers import (
    AE_TITLE,
    LUNG1_CT,
    LUNG1_RTSTRUCT,
    free_port,
    require_lung1,
    running_listener,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1
from pynetdicom.dsutils import split_dataset

from model.errors import ConfigurationError
from model.settings import clear_settings_cache
from service.dicomnet.destinations import (
    DicomDestination,
    destinations_from_settings,
    parse_destination,
    parse_destinations,
    resolve_destination,
)
from service.dicomnet.errors import (
    DicomSendError,
    InvalidDestinationError,
    UnknownDestinationError,
)
from service.dicomnet.listener import DicomListener
from service.dicomnet.sender import send_instances

REPO = Path(__file__).resolve().parents[3]
SCENARIO = Path(__file__).resolve().parents[2] / "orthanc_scenario.py"


class SleepRecorder:
    """Records the waits instead of sleeping; may run an action on the first wait."""

    def __init__(self, on_first: object = None) -> None:
        self.waits: list[float] = []
        self.on_first = on_first

    def __call__(self, seconds: float) -> None:
        if not self.waits and callable(self.on_first):
            self.on_first()
        self.waits.append(seconds)


# --- destinations --------------------------------------------------------------------------------
def test_destination_parsing() -> None:
    assert parse_destination("TPS=ECLIPSE@10.0.0.5:104") == DicomDestination(
        "TPS", "ECLIPSE", "10.0.0.5", 104
    )
    assert parse_destination(" PACS=MY AE@[::1]:4242 ").host == "::1"
    bad = ["TPS", "=AE@h:1", "TPS=@h:1", "TPS=AE@h", "TPS=AE@h:0", "TPS=AE@h:x", "TPS=AE:1"]
    bad += ["TPS=" + "A" * 17 + "@h:1", "TPS=AE@:104", "T PS=AE@h:1"]
    for text in bad:
        with pytest.raises(InvalidDestinationError, match="NAME=AET@host:port"):
            parse_destination(text)
    with pytest.raises(InvalidDestinationError, match="repeated"):
        parse_destinations(["A=X@h:1", "A=Y@h:2"])
    assert issubclass(InvalidDestinationError, ConfigurationError)


def test_destinations_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTV_DICOM_DESTINATIONS", "TPS=ECLIPSE@tps.local:104, PACS=O@h:4242")
    clear_settings_cache()
    try:
        destinations = destinations_from_settings()
    finally:
        clear_settings_cache()
    assert sorted(destinations) == ["PACS", "TPS"]
    assert resolve_destination("TPS", destinations).address == "ECLIPSE@tps.local:104"
    with pytest.raises(UnknownDestinationError, match="known: PACS, TPS") as caught:
        resolve_destination("NOPE", destinations)
    assert caught.value.code == "unknown_destination"


def _data_set_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


# --- our own listener ----------------------------------------------------------------------------
def test_sender_delivers_rtstruct_to_our_listener(tmp_path: Path) -> None:
    require_lung1()
    original = pydicom.dcmread(LUNG1_RTSTRUCT)
    with running_listener(tmp_path, allowed=["LLMCTV"]) as (listener, recorder):
        target = DicomDestination("SELF", AE_TITLE, "127.0.0.1", listener.port)
        result = send_instances(
            [LUNG1_RTSTRUCT], target, calling_ae="LLMCTV", retries=2, backoff_s=0.01
        )
        (series,) = recorder.wait_for(1)
    assert (result.attempts, result.status) == (1, 0x0000)
    assert result.sop_instance_uids == (original.SOPInstanceUID,)
    assert (series.modality, series.calling_ae, series.instance_count) == ("RTSTRUCT", "LLMCTV", 1)
    stored = series.folder / f"{original.SOPInstanceUID}.dcm"
    assert _data_set_bytes(stored) == _data_set_bytes(LUNG1_RTSTRUCT)  # streamed unchanged
    assert pydicom.dcmread(stored).SOPInstanceUID == original.SOPInstanceUID


def _implicit_copy(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(target, enforce_file_format=True)
    return target


def test_sender_streams_or_converts_by_accepted_syntax(tmp_path: Path) -> None:
    require_lung1()
    dcmcjpeg = shutil.which("dcmcjpeg")
    if dcmcjpeg is None:
        pytest.skip("dcmcjpeg is not installed (Debian package dcmtk)")
    first, second = sorted(LUNG1_CT.glob("*.dcm"))[:2]
    compressed = tmp_path / "jpeg.dcm"
    subprocess.run([dcmcjpeg, str(first), str(compressed)], check=True)
    implicit = _implicit_copy(second, tmp_path / "implicit.dcm")
    with running_listener(tmp_path / "any", allowed=["LLMCTV"]) as (listener, recorder):
        target = DicomDestination("SELF", AE_TITLE, "127.0.0.1", listener.port)
        send_instances([compressed, implicit], target, calling_ae="LLMCTV", retries=0, backoff_s=0)
        (series,) = recorder.wait_for(1)
    syntaxes = {
        p.stem: pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in series.folder.iterdir()
    }
    assert sorted(syntaxes.values()) == [ImplicitVRLittleEndian, JPEGLosslessSV1]  # unchanged

    explicit_only = DicomListener(
        ae_title=AE_TITLE,
        host="127.0.0.1",
        port=0,
        allowed_aets=[],
        transfer_syntaxes=[ExplicitVRLittleEndian],
        storage_root=tmp_path / "explicit",
        series_timeout_s=5.0,
        on_complete=lambda series: None,
    )
    with explicit_only:
        target = DicomDestination("SELF", AE_TITLE, "127.0.0.1", explicit_only.port)
        send_instances([implicit], target, calling_ae="LLMCTV", retries=0, backoff_s=0)
        with pytest.raises(DicomSendError) as caught:
            send_instances([compressed], target, calling_ae="LLMCTV", retries=0, backoff_s=0)
    (converted,) = (tmp_path / "explicit").rglob("*.dcm")
    assert pydicom.dcmread(converted).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert caught.value.failure == "association_aborted"
    assert "no presentation context accepted" in caught.value.detail


# --- failures and retries ------------------------------------------------------------------------
def test_nothing_listening_fails_after_the_configured_retries() -> None:
    require_lung1()
    target = DicomDestination("GONE", "NOBODY", "127.0.0.1", free_port())
    sleep = SleepRecorder()
    with pytest.raises(DicomSendError) as caught:
        send_instances(
            [LUNG1_RTSTRUCT], target, calling_ae="LLMCTV", retries=2, backoff_s=0.5, sleep=sleep
        )
    error = caught.value
    assert (error.code, error.failure, error.attempts) == (
        "dicom_send_failed",
        "connection_failed",
        3,
    )
    assert "connection refused" in error.detail and "after 3 attempt(s)" in error.detail
    assert sleep.waits == [0.5, 1.0]  # exponential backoff, none after the last attempt


def test_retry_succeeds_once_the_peer_is_up(tmp_path: Path) -> None:
    require_lung1()
    port = free_port()
    listeners: list[DicomListener] = []

    def start_peer() -> None:
        listener = DicomListener(
            ae_title=AE_TITLE,
            host="127.0.0.1",
            port=port,
            allowed_aets=[],
            transfer_syntaxes=[],
            storage_root=tmp_path,
            series_timeout_s=5.0,
            on_complete=lambda series: None,
        )
        listener.start()
        listeners.append(listener)

    target = DicomDestination("LATE", AE_TITLE, "127.0.0.1", port)
    try:
        result = send_instances(
            [LUNG1_RTSTRUCT],
            target,
            calling_ae="LLMCTV",
            retries=3,
            backoff_s=0.1,
            sleep=SleepRecorder(on_first=start_peer),
        )
    finally:
        for listener in listeners:
            listener.stop()
    assert result.attempts == 2
    assert len(list(tmp_path.rglob("*.dcm"))) == 1


def test_rejected_association_is_reported(tmp_path: Path) -> None:
    require_lung1()
    with running_listener(tmp_path, allowed=["SOMEONE"]) as (listener, _):
        target = DicomDestination("SELF", AE_TITLE, "127.0.0.1", listener.port)
        with pytest.raises(DicomSendError) as caught:
            send_instances([LUNG1_RTSTRUCT], target, calling_ae="LLMCTV", retries=1, backoff_s=0.01)
    assert (caught.value.failure, caught.value.attempts) == ("association_rejected", 2)
    assert "Calling AE title not recognised" in caught.value.detail


def test_failure_status_is_reported(tmp_path: Path) -> None:
    require_lung1()
    study = pydicom.dcmread(LUNG1_RTSTRUCT, stop_before_pixels=True).StudyInstanceUID
    (tmp_path / str(study)).write_text("blocks the study folder: the listener answers 0xA700")
    with running_listener(tmp_path, allowed=["LLMCTV"]) as (listener, _):
        target = DicomDestination("SELF", AE_TITLE, "127.0.0.1", listener.port)
        with pytest.raises(DicomSendError) as caught:
            send_instances([LUNG1_RTSTRUCT], target, calling_ae="LLMCTV", retries=1, backoff_s=0.01)
    error = caught.value
    assert (error.failure, error.status, error.attempts) == ("status_failure", 0xA700, 2)
    assert "status 0xA700" in error.detail


def test_unreadable_file_fails_before_any_association(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    target = DicomDestination("GONE", "NOBODY", "127.0.0.1", 9)
    with pytest.raises(DicomSendError) as caught:
        send_instances([junk], target, calling_ae="LLMCTV", retries=3, backoff_s=1.0)
    assert (caught.value.failure, caught.value.attempts) == ("unreadable_file", 0)


# --- a real Orthanc, inside a private network namespace ------------------------------------------
def _unshare_problem() -> str | None:
    """Why the Orthanc scenario cannot run here, or None."""
    for tool in ("unshare", "ip", "Orthanc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages util-linux, iproute2, orthanc)"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.strip()[:200]}"
    return None


def test_sender_delivers_rtstruct_to_orthanc(tmp_path: Path) -> None:
    require_lung1()
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)
    cmd = [sys.executable, str(SCENARIO), "--rtstruct", str(LUNG1_RTSTRUCT)]
    done = subprocess.run(
        ["unshare", "-n", *cmd, "--workdir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in report, report
    uid = str(pydicom.dcmread(LUNG1_RTSTRUCT, stop_before_pixels=True).SOPInstanceUID)
    assert report["send"] == {
        "ok": True,
        "attempts": 1,
        "status": 0,
        "sop_instance_uids": [uid],
    }
    assert report["orthanc_sop_instance_uids"] == [uid]
    assert report["wrong_called_aet"]["failure"] == "association_rejected"
    assert "Called AE title not recognised" in report["wrong_called_aet"]["detail"]
