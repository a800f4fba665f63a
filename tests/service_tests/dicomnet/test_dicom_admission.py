"""Fair DICOM admission (issue #23): per-AE slots, idle release despite C-ECHO keep-alives, and
rejections aggregated in the audit. Real pynetdicom peers and raw sockets on loopback."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dicomnet_helpers import AE_TITLE, Recorder, running_listener
from factories import CtSpec, make_ct_slice
from pynetdicom import AE
from pynetdicom.association import Association

from service.dicomnet.admission import AdmissionLimits
from service.dicomnet.events import MAX_TITLES_PER_ADDRESS, DicomEvents
from service.dicomnet.listener import DicomListener
from service.dicomnet.pdu_stream import PduLimits
from service.dicomnet.settings import DicomSettings
from workers.audit import AuditKind, AuditLog
from workers.counters import LocalMetrics, parse_key
from workers.settings import StorageSettings

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@contextmanager
def listener_with(
    root: Path,
    *,
    admission: AdmissionLimits | None = None,
    events: DicomEvents | None = None,
    allowed: tuple[str, ...] = ("PACS", "TPS"),
) -> Iterator[DicomListener]:
    with running_listener(
        root / "received",
        allowed=allowed,
        timeout_s=0.3,
        pdu_limits=PduLimits(artim_timeout_s=1.0, pdu_timeout_s=5.0),
        admission=admission,
        events=events,
    ) as (listener, _):
        yield listener


def _associate(port: int, calling: str, source: str = "127.0.0.1") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION, EXPLICIT_LE)
    ae.add_requested_context(CT_IMAGE, EXPLICIT_LE)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE, bind_address=(source, 0))


def _require_loopback_aliases() -> None:
    for address in ADDRESSES:
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                pytest.skip(f"cannot bind the loopback alias {address}")


def _metric(events: DicomEvents, outcome: str, reason: str) -> float:
    total = 0.0
    for field, value in events.metrics.snapshot().items():
        name, labels, _ = parse_key(field)
        if name == "dicom_associations" and labels == {"outcome": outcome, "reason": reason}:
            total += value
    return total


# --- one AE title, many addresses ----------------------------------------------------------------
def test_one_ae_from_three_addresses_cannot_take_every_slot(tmp_path: Path) -> None:
    _require_loopback_aliases()
    limits = AdmissionLimits(max_associations=6, max_per_peer=2, max_per_ae=3)
    with listener_with(tmp_path, admission=limits) as listener:
        # two rounds over three addresses: what passed the per-address limit before
        attempts = [_associate(listener.port, "PACS", a) for _ in range(2) for a in ADDRESSES]
        try:
            held = [a for a in attempts if a.is_established]
            refused = [a for a in attempts if a.is_rejected]
            tps = _associate(listener.port, "TPS", "127.0.0.1")
            tps_ok = tps.is_established and tps.send_c_echo().Status == 0
            slots_in_use = len(listener.admission.admitted())
            if tps.is_established:
                tps.release()
        finally:
            for assoc in attempts:
                if assoc.is_established:
                    assoc.release()
    assert (len(held), len(refused)) == (3, 3)
    answers = [a.acceptor.primitive for a in refused]
    assert all(p is not None and (p.result, p.diagnostic) == (0x02, 0x02) for p in answers)
    assert tps_ok and slots_in_use == 4


def test_per_ae_cap_comes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTV_DICOM_MAX_ASSOCIATIONS_PER_AE", "2")
    monkeypatch.setenv("LLMCTV_DICOM_IDLE_TIMEOUT_S", "7.5")
    listener = DicomListener.from_settings(
        DicomSettings(dicom_port=0), StorageSettings(storage_dir=tmp_path), Recorder()
    )
    assert listener.admission.limits.per_ae == 2
    assert listener.admission.limits.idle_timeout_s == 7.5
    fields = DicomSettings.model_fields
    defaults = (
        fields["dicom_max_associations_per_ae"].default,
        fields["dicom_idle_timeout_s"].default,
    )
    assert defaults == (4, 60.0)


# --- idle associations ---------------------------------------------------------------------------
def _echo_until_dropped(assoc: Association, every_s: float, limit_s: float) -> tuple[float, int]:
    """C-ECHO every ``every_s`` until the association ends; (seconds it lasted, echoes)."""
    started, echoes = time.monotonic(), 0
    while assoc.is_established and time.monotonic() - started < limit_s:
        status = assoc.send_c_echo()
        if status and status.Status == 0:
            echoes += 1
        time.sleep(every_s)
    return time.monotonic() - started, echoes


def test_echo_keepalives_do_not_hold_a_slot_past_the_idle_timeout(tmp_path: Path) -> None:
    events = DicomEvents()
    limits = AdmissionLimits(max_associations=2, max_per_peer=2, idle_timeout_s=1.0)
    with listener_with(tmp_path, admission=limits, events=events) as listener:
        assoc = _associate(listener.port, "PACS")
        assert assoc.is_established
        lasted, echoes = _echo_until_dropped(assoc, every_s=0.2, limit_s=10.0)
        aborted = assoc.is_aborted
        time.sleep(0.3)
        slots_after = len(listener.admission.admitted())
        again = _associate(listener.port, "PACS")
        reconnect_ok = again.is_established
        if reconnect_ok:
            again.release()
    assert aborted and 1.0 <= lasted < 4.0, (lasted, echoes)
    assert echoes >= 4  # the keep-alives were answered until the release
    assert slots_after == 0 and reconnect_ok
    assert _metric(events, "released", "idle") == 1


def test_an_association_that_stores_is_not_idle(tmp_path: Path) -> None:
    limits = AdmissionLimits(max_associations=2, max_per_peer=2, idle_timeout_s=1.0)
    spec = CtSpec(n_slices=12, rows=8, columns=8)
    statuses: list[int] = []
    with listener_with(tmp_path, admission=limits) as listener:
        assoc = _associate(listener.port, "PACS")
        try:
            for k in range(spec.n_slices):  # one slice every 0.25 s: 3 s, three idle timeouts
                status = assoc.send_c_store(make_ct_slice(spec, k))
                statuses.append(int(status.Status) if status else -1)
                time.sleep(0.25)
            still_up = assoc.is_established
        finally:
            if assoc.is_established:
                assoc.release()
    assert statuses == [0] * spec.n_slices and still_up


# --- rejections in the audit ---------------------------------------------------------------------
def _associate_rq(calling: bytes) -> bytes:
    """A minimal A-ASSOCIATE-RQ PDU proposing Verification (PS3.8 §9.3.2)."""

    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(value)) + value

    context = (
        bytes((1, 0, 0, 0)) + item(0x30, VERIFICATION.encode()) + item(0x40, IMPLICIT_LE.encode())
    )
    body = struct.pack(">HH", 1, 0) + AE_TITLE.encode().ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1") + item(0x20, context)
    body += item(0x50, item(0x51, struct.pack(">L", 16384)))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def _rejected(port: int, calling: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_associate_rq(calling))
        return sock.recv(1) == b"\x03"  # A-ASSOCIATE-RJ


def test_a_burst_of_unknown_ae_associations_writes_two_audit_entries(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", max_bytes=1 << 24, retention_days=1)
    events = DicomEvents(audit, LocalMetrics())
    with listener_with(tmp_path, events=events) as listener:
        started = time.monotonic()
        answers = [_rejected(listener.port, b"INTRUDER") for _ in range(300)]
        burst_s = time.monotonic() - started
        during = audit.read(kind=AuditKind.DICOM_REJECTED)
    after = audit.read(kind=AuditKind.DICOM_REJECTED)  # the listener's stop wrote the summary
    assert all(answers), f"{answers.count(False)} not rejected"
    assert _metric(events, "rejected", "calling_ae_not_allowed") == 300
    assert len(during) == 1 and during[0]["who"] == "INTRUDER@127.0.0.1"
    assert len(after) == 2, [e.get("repeats") for e in after]
    assert after[1]["repeats"] == 299 and after[1]["reason"] == "calling_ae_not_allowed"
    assert after[1]["calling_ae_hash"] == after[0]["calling_ae_hash"]
    assert burst_s < 30


def test_rejection_windows_end_and_titles_are_folded(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", max_bytes=1 << 24, retention_days=1)
    clock = [0.0]
    events = DicomEvents(audit, LocalMetrics(), rejection_window_s=60.0, clock=lambda: clock[0])
    for _ in range(50):  # minute 1: one title
        events.association_rejected("INTRUDER", "10.0.0.9", "calling_ae_not_allowed")
    clock[0] = 61.0
    assert events.flush_rejections() == 49
    for n in range(40):  # minute 2: a new title each time, same address
        events.association_rejected(f"T{n}", "10.0.0.9", "calling_ae_not_allowed")
    clock[0] = 122.0
    events.flush_rejections()
    entries = audit.read(kind=AuditKind.DICOM_REJECTED)
    minute1, minute2 = entries[:2], entries[2:]
    assert [e.get("repeats") for e in minute1] == [None, 49]
    assert len(minute2) == MAX_TITLES_PER_ADDRESS + 2  # 8 titles, the '*' group, its summary
    assert minute2[-1]["who"] == "*@10.0.0.9" and minute2[-1]["repeats"] == 40 - 9
    assert _metric(events, "rejected", "calling_ae_not_allowed") == 90


def test_the_watch_writes_the_summary_without_a_new_rejection(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", max_bytes=1 << 24, retention_days=1)
    events = DicomEvents(audit, LocalMetrics(), rejection_window_s=0.5)
    with listener_with(tmp_path, events=events) as listener:
        for _ in range(5):
            assert _rejected(listener.port, b"INTRUDER")
        deadline = time.monotonic() + 5
        while len(audit.read(kind=AuditKind.DICOM_REJECTED)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        entries = audit.read(kind=AuditKind.DICOM_REJECTED)
    assert [e.get("repeats") for e in entries] == [None, 4]


def test_concurrent_rejections_are_all_counted(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", max_bytes=1 << 24, retention_days=1)
    events = DicomEvents(audit, LocalMetrics())

    def burst() -> None:
        for _ in range(100):
            events.association_rejected("INTRUDER", "10.0.0.9", "calling_ae_not_allowed")

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events.flush_rejections(force=True)
    entries = audit.read(kind=AuditKind.DICOM_REJECTED)
    assert len(entries) == 2 and entries[1]["repeats"] == 399
