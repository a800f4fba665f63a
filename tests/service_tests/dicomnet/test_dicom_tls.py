"""DICOM TLS (issue #23) against real peers: dcmtk echoscu/storescu with ``+tls`` against our
listener, our sender against dcmtk storescp with ``+tls``; a throw-away PKI made by openssl."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dicomnet_helpers import (
    AE_TITLE,
    Pki,
    Recorder,
    free_port,
    make_pki,
    require_tool,
)
from factories import CtSpec, write_ct_series
from pynetdicom import AE

from service.dicomnet.destinations import destinations_from_settings, parse_destination
from service.dicomnet.errors import DicomSendError, DicomTlsError
from service.dicomnet.events import DicomEvents
from service.dicomnet.listener import DicomListener
from service.dicomnet.pdu_stream import PduLimits
from service.dicomnet.sender import send_instances
from service.dicomnet.settings import DicomSettings
from service.dicomnet.tls import TlsCredentials, check_sender_tls, server_context
from workers.audit import AuditKind, AuditLog
from workers.settings import StorageSettings

VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextmanager
def tls_listener(
    root: Path,
    pki: Pki,
    *,
    require_client_cert: bool = True,
    audit: AuditLog | None = None,
    artim_s: float = 1.5,
) -> Iterator[DicomListener]:
    credentials = TlsCredentials(
        pki.server_cert, pki.server_key, pki.ca, require_peer_cert=require_client_cert
    )
    listener = DicomListener(
        ae_title=AE_TITLE,
        host="127.0.0.1",
        port=0,
        allowed_aets=("ECHOSCU", "STORESCU", "TESTER"),
        transfer_syntaxes=[],
        storage_root=root / "received",
        series_timeout_s=0.3,
        on_complete=Recorder(),
        pdu_limits=PduLimits(artim_timeout_s=artim_s, pdu_timeout_s=5.0),
        events=DicomEvents(audit),
        tls=server_context(credentials),
    )
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


def _dcmtk(
    tool: str,
    port: int,
    *options: str | Path,
    calling: str = "ECHOSCU",
    files: tuple[Path, ...] = (),
) -> int:
    """A dcmtk tool's exit code against our listener on ``port``."""
    cmd = [require_tool(tool), "-aet", calling, "-aec", AE_TITLE, *map(str, options)]
    cmd += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode


def _mutual(pki: Pki) -> tuple[str | Path, ...]:
    return ("+tls", pki.client_key, pki.client_cert, "+cf", pki.ca)


def _plain_echo(port: int) -> bool:
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(VERIFICATION, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


def _wait_closed(listener: DicomListener, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while listener.admission.open_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    return listener.admission.open_count()


# --- the listener against dcmtk -------------------------------------------------------------------
def test_echoscu_and_storescu_with_client_certificates_are_served(tmp_path: Path, pki: Pki) -> None:
    audit = AuditLog(tmp_path / "audit", max_bytes=1 << 20, retention_days=1)
    ct = write_ct_series(tmp_path / "ct", CtSpec(n_slices=3))
    with tls_listener(tmp_path, pki, audit=audit) as listener:
        assert listener.tls
        echo = _dcmtk("echoscu", listener.port, *_mutual(pki))
        store = _dcmtk(
            "storescu", listener.port, *_mutual(pki), calling="STORESCU", files=tuple(ct)
        )
    assert (echo, store) == (0, 0)
    assert len(list((tmp_path / "received").rglob("*.dcm"))) == 3
    accepted = audit.read(kind=AuditKind.DICOM_ACCEPTED)
    assert [e["who"] for e in accepted] == ["ECHOSCU@127.0.0.1", "STORESCU@127.0.0.1"]
    assert all(e["tls"] is True for e in accepted)


def test_plain_tcp_client_is_refused_by_the_tls_listener(tmp_path: Path, pki: Pki) -> None:
    with tls_listener(tmp_path, pki) as listener:
        plain_echoscu = _dcmtk("echoscu", listener.port)
        plain_pynetdicom = _plain_echo(listener.port)
        after = _dcmtk("echoscu", listener.port, *_mutual(pki))
        assert _wait_closed(listener) == 0
    assert plain_echoscu != 0 and not plain_pynetdicom
    assert after == 0


def test_client_without_an_accepted_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    rogue = ("+tls", pki.rogue_key, pki.rogue_cert, "+cf", pki.ca)
    with tls_listener(tmp_path, pki, require_client_cert=True) as listener:
        no_certificate = _dcmtk("echoscu", listener.port, "+tla", "+cf", pki.ca)
        other_ca = _dcmtk("echoscu", listener.port, *rogue)
        assert _wait_closed(listener) == 0
    with tls_listener(tmp_path, pki, require_client_cert=False) as listener:
        optional = _dcmtk("echoscu", listener.port, "+tla", "+cf", pki.ca)
    assert no_certificate != 0 and other_ca != 0
    assert optional == 0  # without mutual authentication a certificate is not needed


def test_a_silent_connection_does_not_hold_up_tls_clients(tmp_path: Path, pki: Pki) -> None:
    """The handshake runs in the association's thread, inside the ARTIM timer: a TCP client
    that never starts TLS neither blocks the accepting thread nor stays open."""
    with tls_listener(tmp_path, pki, artim_s=3.0) as listener:
        silent = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        try:
            started = time.monotonic()
            echo = _dcmtk("echoscu", listener.port, *_mutual(pki))
            echo_s = time.monotonic() - started
            silent.settimeout(6.0)
            closed = silent.recv(1) == b""
            closed_after = time.monotonic() - started
        finally:
            silent.close()
    assert echo == 0 and echo_s < 3.0, echo_s  # served while the silent one is still open
    assert closed and 2.5 < closed_after < 5.5, closed_after  # dropped by the ARTIM timer


def test_pdu_limits_apply_to_the_decrypted_stream(tmp_path: Path, pki: Pki) -> None:
    """An A-ASSOCIATE-RQ declaring 4 GiB inside a valid TLS session is aborted at its header."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with tls_listener(tmp_path, pki) as listener:
        raw = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
            secure.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
            sent, chunk = 0, bytes(1 << 16)
            try:
                while sent < 64 << 20:
                    secure.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # closed by the listener
                pass
        assert _wait_closed(listener) == 0
    assert sent < 8 << 20, f"the listener read {sent >> 20} MiB of the oversized PDU"


# --- our sender against dcmtk storescp ------------------------------------------------------------
@contextmanager
def storescp_tls(folder: Path, pki: Pki) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """dcmtk storescp over TLS, client certificates required (its default)."""
    port = free_port()
    folder.mkdir(parents=True)
    cmd = [require_tool("storescp"), "-aet", "STORESCP", "+tls", str(pki.server_key)]
    cmd += [str(pki.server_cert), "+cf", str(pki.ca), "--require-peer-cert", "-od", str(folder)]
    process = subprocess.Popen([*cmd, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


def _settings(port: int, **tls: object) -> DicomSettings:
    destinations = [f"TPS=STORESCP@127.0.0.1:{port}/tls"]
    return DicomSettings.model_validate({"dicom_destinations": destinations, **tls})


def test_sender_stores_over_mutual_tls_to_storescp(tmp_path: Path, pki: Pki) -> None:
    files = write_ct_series(tmp_path / "ct", CtSpec(n_slices=2))
    with storescp_tls(tmp_path / "scp", pki) as (port, process):
        settings = _settings(
            port, dicom_tls_cert=pki.client_cert, dicom_tls_key=pki.client_key, dicom_tls_ca=pki.ca
        )
        assert check_sender_tls(settings)
        target = destinations_from_settings(settings)["TPS"]
        result = send_instances(files, target, calling_ae="LLMCTV", retries=0, backoff_s=0)
        alive = process.poll() is None
    assert result.attempts == 1 and result.status == 0 and len(result.sop_instance_uids) == 2
    assert len(list((tmp_path / "scp").glob("CT.*"))) == 2
    assert alive  # storescp served the association (it ends only when terminated)


def test_sender_without_certificate_or_trust_fails_with_tls_failed(
    tmp_path: Path, pki: Pki
) -> None:
    files = write_ct_series(tmp_path / "ct", CtSpec(n_slices=1))
    rogue_ca = pki.rogue_cert.parent / "rogue-ca.pem"
    with storescp_tls(tmp_path / "scp", pki) as (port, _):
        no_client_cert = destinations_from_settings(_settings(port, dicom_tls_ca=pki.ca))["TPS"]
        wrong_trust = destinations_from_settings(
            _settings(
                port,
                dicom_tls_cert=pki.client_cert,
                dicom_tls_key=pki.client_key,
                dicom_tls_ca=rogue_ca,
            )
        )["TPS"]
        plain = parse_destination(f"TPS=STORESCP@127.0.0.1:{port}")
        failures = []
        for target in (no_client_cert, wrong_trust, plain):
            with pytest.raises(DicomSendError) as caught:
                send_instances(files, target, calling_ae="LLMCTV", retries=0, backoff_s=0)
            failures.append((caught.value.failure, caught.value.detail))
    assert failures[0][0] == "tls_failed" and "CERTIFICATE_REQUIRED" in failures[0][1]
    assert failures[1][0] == "tls_failed" and "certificate was not accepted" in failures[1][1]
    assert failures[2][0] == "association_aborted"  # plain DICOM to a TLS port
    assert not list((tmp_path / "scp").glob("CT.*"))


# --- configuration --------------------------------------------------------------------------------
def test_destination_syntax_marks_tls() -> None:
    credentials = TlsCredentials(ca=Path("/etc/ca.pem"))
    secure = parse_destination("TPS=ECLIPSE@tps.example.org:2762/tls", credentials)
    plain = parse_destination("TPS=ECLIPSE@tps.example.org:104")
    assert secure.tls == credentials and (secure.host, secure.port) == ("tps.example.org", 2762)
    assert str(secure) == "TPS=ECLIPSE@tps.example.org:2762/tls"
    assert plain.tls is None
    assert parse_destination("TPS=ECLIPSE@[::1]:2762/TLS").tls == TlsCredentials()


def test_listener_refuses_to_start_with_missing_or_bad_tls_files(tmp_path: Path, pki: Pki) -> None:
    storage = StorageSettings(storage_dir=tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    good = {"dicom_tls_cert": pki.server_cert, "dicom_tls_key": pki.server_key}
    cases: dict[str, dict[str, object]] = {
        "missing cert": {**good, "dicom_tls_cert": tmp_path / "absent.pem"},
        "cert is a folder": {**good, "dicom_tls_cert": tmp_path},
        "no key": {"dicom_tls_cert": pki.server_cert},
        "garbage cert": {**good, "dicom_tls_cert": garbage},
        "key of another certificate": {**good, "dicom_tls_key": pki.client_key},
        "client certs without CA": {**good, "dicom_tls_require_client_cert": True},
        "garbage CA": {**good, "dicom_tls_ca": garbage},
    }
    messages = {}
    for name, values in cases.items():
        settings = DicomSettings.model_validate({"dicom_port": 0, "dicom_tls": True, **values})
        with pytest.raises(DicomTlsError) as caught:
            DicomListener.from_settings(settings, storage, Recorder())
        assert caught.value.code == "dicom_tls_invalid", name
        messages[name] = caught.value.detail
    assert "absent.pem does not exist" in messages["missing cert"]
    assert "not a file" in messages["cert is a folder"]
    assert "dicom_tls_ca" in messages["client certs without CA"]
    # off by default: v1 settings build a plain listener
    plain = DicomListener.from_settings(DicomSettings(dicom_port=0), storage, Recorder())
    assert not plain.tls


def test_sender_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    plain = DicomSettings(dicom_destinations=["TPS=TPS@127.0.0.1:104"])
    assert check_sender_tls(plain) is False
    secure = DicomSettings(
        dicom_destinations=["TPS=TPS@127.0.0.1:2762/tls"], dicom_tls_ca=tmp_path / "absent.pem"
    )
    with pytest.raises(DicomTlsError, match=r"absent\.pem does not exist"):
        check_sender_tls(secure)
