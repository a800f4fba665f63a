"""The DICOM listener against hostile or broken peers (issue #15): raw sockets on loopback."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomnet_helpers import (
    AE_TITLE,
    LUNG1_CT,
    Recorder,
    require_lung1,
    require_tool,
    running_listener,
)
from pydicom.dataset import Dataset
from pynetdicom import AE

from service.dicomnet.admission import AdmissionLimits
from service.dicomnet.listener import DicomListener
from service.dicomnet.pdu_stream import GuardedSocket, PduLimits
from service.dicomnet.settings import DicomSettings
from workers.settings import StorageSettings

VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


@contextmanager
def guarded_listener(
    root: Path,
    *,
    pdu: PduLimits | None = None,
    admission: AdmissionLimits | None = None,
    allowed: tuple[str, ...] = ("TESTER", "ECHOSCU"),
) -> Iterator[DicomListener]:
    with running_listener(
        root,
        allowed=allowed,
        timeout_s=0.3,
        pdu_limits=pdu or PduLimits(artim_timeout_s=1.0, pdu_timeout_s=2.0),
        admission=admission,
    ) as (listener, _):
        yield listener


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(calling: bytes = b"TESTER", called: bytes = AE_TITLE.encode()) -> bytes:
    """A minimal A-ASSOCIATE-RQ PDU proposing Verification (PS3.8 §9.3.2)."""
    context = bytes((1, 0, 0, 0)) + _item(0x30, VERIFICATION.encode())
    context += _item(0x40, IMPLICIT_LE.encode())
    user = _item(0x51, struct.pack(">L", 16384))
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context) + _item(0x50, user)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer ends the connection within ``seconds`` (data before EOF is ignored)."""
    deadline = time.monotonic() + seconds
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def _echo(port: int, calling: str = "TESTER") -> tuple[bool, float]:
    """(C-ECHO succeeded, seconds it took) with a pynetdicom client."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION, EXPLICIT_LE)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return False, time.monotonic() - started
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0, time.monotonic() - started
    finally:
        assoc.release()


def _send_until_refused(sock: socket.socket, total: int) -> int:
    """Send up to ``total`` zero bytes; how many went before the listener closed."""
    sent, chunk = 0, bytes(1 << 20)
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # reset, or a full window for 5 s: the listener stopped reading
        return sent
    return sent


# --- PDU size and the ARTIM timer ----------------------------------------------------------------
@pytest.mark.parametrize("pdu_type", [0x04, 0x01], ids=["p-data", "associate-rq"])
def test_oversized_pdu_before_association_is_aborted_without_buffering(
    tmp_path: Path, pdu_type: int
) -> None:
    with guarded_listener(tmp_path) as listener, _connect(listener.port) as sock:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFFF))
        sent = _send_until_refused(sock, 600 << 20)
        assert sent < 64 << 20, f"the listener read {sent >> 20} MiB of the oversized PDU"


def test_oversized_pdu_in_an_association_is_aborted(tmp_path: Path) -> None:
    with guarded_listener(tmp_path) as listener, _connect(listener.port) as sock:
        sock.sendall(associate_rq())
        assert sock.recv(6)[0] == 0x02  # A-ASSOCIATE-AC
        sock.sendall(struct.pack(">BBL", 0x04, 0, 300_000) + bytes(4096))
        assert _closed_within(sock, 3.0)


def test_idle_connection_is_dropped_by_the_artim_timer(tmp_path: Path) -> None:
    with guarded_listener(tmp_path) as listener, _connect(listener.port) as sock:
        started = time.monotonic()
        assert _closed_within(sock, 4.0)
        assert time.monotonic() - started < 3.0


def test_dripping_request_is_dropped_by_the_artim_timer(tmp_path: Path) -> None:
    request = associate_rq()
    with guarded_listener(tmp_path) as listener, _connect(listener.port) as sock:
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes((byte,)))
            except OSError:
                closed = True
                break
            if _closed_within(sock, 0.2):
                closed = True
                break
        assert closed
        assert time.monotonic() - started < 3.0


# --- association slots ---------------------------------------------------------------------------
def test_echo_succeeds_while_ten_idle_sockets_are_held(tmp_path: Path) -> None:
    pdu = PduLimits(artim_timeout_s=30.0)  # the idle sockets stay for the whole test
    with guarded_listener(tmp_path, pdu=pdu) as listener:
        idle = [_connect(listener.port) for _ in range(10)]
        try:
            time.sleep(0.2)
            results = [_echo(listener.port) for _ in range(5)]
        finally:
            for sock in idle:
                sock.close()
    assert all(ok for ok, _ in results), results


def test_one_address_cannot_take_every_slot(tmp_path: Path) -> None:
    limits = AdmissionLimits(max_associations=3, max_per_peer=2)
    with guarded_listener(tmp_path, admission=limits) as listener:
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(VERIFICATION, EXPLICIT_LE)
        held = [ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE) for _ in range(2)]
        try:
            assert all(a.is_established for a in held)
            third = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
            assert third.is_rejected
            answer = third.acceptor.primitive
            assert answer is not None
            assert answer.result == 0x02  # transient: try again later
            assert answer.diagnostic == 0x02  # local limit exceeded
        finally:
            for assoc in held:
                assoc.release()
        time.sleep(0.2)
        assert _echo(listener.port)[0]


def test_slots_are_freed_when_peers_release_or_reset(tmp_path: Path) -> None:
    limits = AdmissionLimits(max_associations=2, max_per_peer=2)
    with guarded_listener(tmp_path, admission=limits) as listener:
        for _ in range(3):  # associations that end with a TCP reset, not a release
            with _connect(listener.port) as sock:
                sock.sendall(associate_rq())
                assert sock.recv(6)[0] == 0x02  # A-ASSOCIATE-AC
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.5)
        assert all(_echo(listener.port)[0] for _ in range(4))
        deadline = time.monotonic() + 5
        while listener.admission.open_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.admission.open_count() == 0


def test_calling_ae_is_checked_before_slots_are_counted(tmp_path: Path) -> None:
    limits = AdmissionLimits(max_associations=1, max_per_peer=1)
    with guarded_listener(tmp_path, admission=limits) as listener:
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(VERIFICATION, EXPLICIT_LE)
        held = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
        try:
            assert held.is_established
            intruder = AE(ae_title="INTRUDER")
            intruder.add_requested_context(VERIFICATION, EXPLICIT_LE)
            refused = intruder.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
            answer = refused.acceptor.primitive
            assert refused.is_rejected and answer is not None
            # permanent, calling AE title not recognised: not "try again later"
            assert (answer.result, answer.diagnostic) == (0x01, 0x03)
        finally:
            held.release()


def test_too_many_pending_connections_from_one_address_are_closed(tmp_path: Path) -> None:
    limits = AdmissionLimits(max_pending_per_peer=3)
    with guarded_listener(tmp_path, admission=limits) as listener:
        socks = [_connect(listener.port) for _ in range(4)]
        try:
            assert _closed_within(socks[3], 0.8)
            assert not _closed_within(socks[0], 0.3)
        finally:
            for sock in socks:
                sock.close()


# --- instance size, modality and AE titles -------------------------------------------------------
def _ct(rows: int) -> Dataset:
    ds = pydicom.dcmread(sorted(LUNG1_CT.glob("*.dcm"))[0])
    ds.Rows = ds.Columns = rows
    ds.PixelData = np.zeros((rows, rows), dtype=np.int16).tobytes()
    return ds


def _store(port: int, ds: Dataset) -> int | None:
    """The C-STORE status, or ``None`` when the association was aborted."""
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(ds.SOPClassUID, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status and "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()


def test_instance_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    require_lung1()
    pdu = PduLimits(max_instance_bytes=300_000, artim_timeout_s=1.0, pdu_timeout_s=2.0)
    with guarded_listener(tmp_path, pdu=pdu) as listener:
        assert _store(listener.port, _ct(512)) is None  # 512 KiB of pixels: aborted
        assert not list(tmp_path.rglob("*.dcm"))
        assert _store(listener.port, _ct(128)) == 0  # 32 KiB: stored
    assert len(list(tmp_path.rglob("*.dcm"))) == 1


def test_ct_object_with_another_modality_is_refused_at_once(tmp_path: Path) -> None:
    require_lung1()
    ds = _ct(16)
    ds.Modality = "MR"
    with guarded_listener(tmp_path) as listener:
        assert _store(listener.port, ds) == 0xA900
        assert listener.assembler.pending_count() == 0
    assert not list(tmp_path.rglob("*.dcm"))


def test_newline_in_a_calling_ae_title_cannot_forge_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with guarded_listener(tmp_path) as listener, _connect(listener.port) as sock:
        sock.sendall(associate_rq(calling=b"EVIL\nFORGED"))
        assert _closed_within(sock, 3.0)
    assert "EVIL\\nFORGED" in caplog.text
    assert not any("\n" in r.getMessage() for r in caplog.records if "EVIL" in r.getMessage())


def test_echoscu_still_works_with_the_limits(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    with guarded_listener(tmp_path) as listener:
        cmd = [echoscu, "-aet", "ECHOSCU", "-aec", AE_TITLE, "127.0.0.1", str(listener.port)]
        assert subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def test_limits_come_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCTV_DICOM_MAX_INSTANCE_BYTES", "1000000")
    monkeypatch.setenv("LLMCTV_DICOM_MAX_ASSOCIATIONS_PER_PEER", "3")
    settings = DicomSettings(dicom_port=0)
    storage = StorageSettings(storage_dir=tmp_path)
    listener = DicomListener.from_settings(settings, storage, Recorder())
    assert listener.storage_root == tmp_path / "dicom" / "received"
    assert listener.admission.pdu_limits.max_instance_bytes == 1_000_000
    assert listener.admission.limits.max_per_peer == 3
    assert listener.admission.pdu_limits.artim_timeout_s == 5.0


def test_concurrent_stores_from_one_peer_within_its_slots(tmp_path: Path) -> None:
    require_lung1()
    statuses: list[int | None] = []
    with guarded_listener(tmp_path) as listener:
        threads = [
            threading.Thread(target=lambda: statuses.append(_store(listener.port, _ct(32))))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert statuses == [0, 0, 0]


# --- the stream guard alone, fed in awkward pieces -----------------------------------------------
@contextmanager
def _guarded_pair(limits: PduLimits) -> Iterator[tuple[socket.socket, GuardedSocket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    guarded = GuardedSocket(accepted, limits)
    try:
        yield client, guarded
    finally:
        client.close()
        guarded.close()


def _pdata(*pdvs: tuple[int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (message control header, value) PDV items on context 1."""
    items = b"".join(struct.pack(">LBB", len(v) + 2, 1, c) + v for c, v in pdvs)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def _feed(client: socket.socket, guarded: GuardedSocket, stream: bytes, piece: int) -> int:
    """Send ``stream`` in ``piece``-byte parts; how many bytes the guard handed on."""
    handed = 0
    for start in range(0, len(stream), piece):
        client.sendall(stream[start : start + piece])
        want = min(piece, len(stream) - start)
        got = 0
        while got < want:
            data = guarded.recv(want - got)
            if not data:
                return handed
            got += len(data)
            handed += len(data)
    return handed


@pytest.mark.parametrize("piece", [1, 5, 7, 4096])
def test_stream_guard_counts_data_set_fragments_across_pdus(piece: int) -> None:
    limits = PduLimits(max_instance_bytes=100, artim_timeout_s=5.0, pdu_timeout_s=5.0)
    command = (0x03, bytes(40))  # command, last fragment: not counted as data
    within = [
        associate_rq(),
        _pdata(command),
        _pdata((0x00, bytes(60))),
        _pdata((0x02, bytes(40))),  # 100 bytes: the limit exactly
        _pdata((0x00, bytes(99)), (0x02, bytes(1))),  # the next message starts from zero
    ]
    stream = b"".join(within)
    with _guarded_pair(limits) as (client, guarded):
        assert _feed(client, guarded, stream, piece) == len(stream)
        assert not guarded.refused
        over = _pdata((0x00, bytes(60))) + _pdata((0x02, bytes(41)))
        assert _feed(client, guarded, over, piece) < len(over)
        assert guarded.refused


def test_stream_guard_refuses_an_oversized_associate_request() -> None:
    with _guarded_pair(PduLimits()) as (client, guarded):
        header = struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF)
        assert _feed(client, guarded, header, 6) == 0
        assert guarded.refused
        assert client.recv(10)[0] == 0x07  # A-ABORT
