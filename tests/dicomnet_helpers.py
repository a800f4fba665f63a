"""Helpers for the DICOM networking tests: free ports, waiting, a listener with a recorder."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from service.dicomnet.admission import AdmissionLimits
from service.dicomnet.assembly import ReceivedSeries
from service.dicomnet.events import DicomEvents
from service.dicomnet.listener import DicomListener
from service.dicomnet.pdu_stream import PduLimits

LUNG1 = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001"
LUNG1_CT = LUNG1 / "image"
LUNG1_RTSTRUCT = LUNG1 / "mask_rtstruct" / "1-1.dcm"
AE_TITLE = "LLMCTV"


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    """The path of a command-line tool, or skip the test."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package dcmtk)")
    return path


def require_lung1() -> None:
    """Skip when the shared LUNG1 data are missing."""
    if not LUNG1_CT.is_dir() or not LUNG1_RTSTRUCT.is_file():
        pytest.skip(f"LUNG1 test data not found at {LUNG1}")


@dataclass
class Recorder:
    """Collects completed series with the time they were reported."""

    series: list[ReceivedSeries] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _event: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, series: ReceivedSeries) -> None:
        with self._event:
            self.series.append(series)
            self.times.append(time.monotonic())
            self._event.notify_all()

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[ReceivedSeries]:
        """Wait until ``count`` series were reported; returns all of them."""
        with self._event:
            self._event.wait_for(lambda: len(self.series) >= count, timeout_s)
            return list(self.series)


@contextmanager
def running_listener(
    root: Path,
    *,
    allowed: Sequence[str] = ("STORESCU", "ECHOSCU", "TESTER"),
    timeout_s: float = 0.5,
    on_complete: Callable[[ReceivedSeries], None] | None = None,
    port: int = 0,
    pdu_limits: PduLimits | None = None,
    admission: AdmissionLimits | None = None,
    events: DicomEvents | None = None,
) -> Iterator[tuple[DicomListener, Recorder]]:
    """A started listener on a free loopback port that records completed series."""
    recorder = Recorder()
    listener = DicomListener(
        pdu_limits=pdu_limits,
        ae_title=AE_TITLE,
        host="127.0.0.1",
        port=port,
        allowed_aets=allowed,
        transfer_syntaxes=[],
        storage_root=root,
        series_timeout_s=timeout_s,
        on_complete=on_complete or recorder,
        admission=admission,
        events=events,
    )
    listener.start()
    try:
        yield listener, recorder
    finally:
        listener.stop()


# --- a throw-away PKI for DICOM TLS tests ---------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """PEM files made by :func:`make_pki`: a CA, a server and a client it issued, and a client
    certificate from another (untrusted) CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    openssl = require_tool("openssl")
    done = subprocess.run(
        [openssl, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr[-1000:]}")


def _authority(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
        "-days", "2", "-subj", f"/CN=llmctv test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return cert, key


def _issue(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", f"/CN=llmctv test {name}", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext, cwd=folder,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A CA with a server (``127.0.0.1``, ``localhost``) and a client certificate, and a
    client certificate of another CA, in ``folder`` (openssl, RSA 2048, valid two days)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _authority(folder, "ca")
    server = _issue(folder, "server", ca, "serverAuth")
    client = _issue(folder, "client", ca, "clientAuth")
    rogue = _issue(folder, "rogue", _authority(folder, "rogue-ca"), "clientAuth")
    return Pki(ca[0], *server, *client, *rogue)
