"""DICOM TLS (PS3.15 Annex B.9, BCP 195 profile): the listener's and the sender's TLS contexts.

Both sides speak TLS 1.2 or 1.3 only, with the ciphers of Python's secure defaults. Our one
certificate and key (``dicom_tls_cert``, ``dicom_tls_key``) are the listener's server
certificate and the sender's client certificate; ``dicom_tls_ca`` holds the certificate
authorities trusted for peers (clients of the listener, destinations of the sender; without it
the sender trusts the system's store and the listener verifies no client).

- Listener (``dicom_tls``): only TLS connections; with ``dicom_tls_require_client_cert`` a
  client must present a certificate issued by ``dicom_tls_ca`` (mutual authentication),
  otherwise the handshake fails and the connection is closed. The handshake runs in the
  association's thread, inside the ARTIM timer (:mod:`service.dicomnet.pdu_stream`), never in
  the accepting thread.
- Sender: a destination marked ``/tls`` (``NAME=AET@host:port/tls``) is reached over TLS; the
  destination's certificate must chain to ``dicom_tls_ca`` and, with
  ``dicom_tls_check_hostname`` (default), name the destination's host.

Every file is checked when the context is built; a missing, unreadable or malformed file, or
a key that does not belong to its certificate, raises
:class:`~service.dicomnet.errors.DicomTlsError` (code ``dicom_tls_invalid``) naming the setting
and the path, never the file's content.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from service.dicomnet.errors import DicomTlsError
from service.dicomnet.settings import DicomSettings

logger = logging.getLogger(__name__)

#: The oldest protocol version spoken (BCP 195: TLS 1.2 and later).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: The suffix of a destination reached over DICOM TLS (``NAME=AET@host:port/tls``).
TLS_SUFFIX = "/tls"


@dataclass(frozen=True)
class TlsCredentials:
    """Certificate, key and trusted authorities of one side of DICOM TLS.

    Attributes
    ----------
    cert, key
        Our certificate (PEM, optionally followed by its chain) and its private key (PEM, not
        encrypted). Required for the listener; for the sender only when a destination asks
        for a client certificate.
    ca
        PEM bundle of the certificate authorities trusted for peers.
    require_peer_cert
        Listener: refuse clients without a certificate issued by ``ca``.
    check_hostname
        Sender: the destination's certificate must name its host.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_peer_cert: bool = False
    check_hostname: bool = True

    @classmethod
    def from_settings(cls, settings: DicomSettings) -> TlsCredentials:
        """The ``dicom_tls_*`` settings."""
        return cls(
            cert=settings.dicom_tls_cert,
            key=settings.dicom_tls_key,
            ca=settings.dicom_tls_ca,
            require_peer_cert=settings.dicom_tls_require_client_cert,
            check_hostname=settings.dicom_tls_check_hostname,
        )


def _readable(path: Path, setting: str) -> str:
    """``path`` as a string once it is a readable regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DicomTlsError(f"{setting}: {path} does not exist") from None
    except OSError as exc:
        raise DicomTlsError(f"{setting}: {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DicomTlsError(f"{setting}: {path} is not a file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise DicomTlsError(f"{setting}: {path} cannot be read ({exc.strerror})") from None
    return str(path)


def _load_identity(context: ssl.SSLContext, tls: TlsCredentials) -> None:
    if tls.cert is None or tls.key is None:
        raise DicomTlsError("dicom_tls_cert and dicom_tls_key must both be set")
    cert = _readable(tls.cert, "dicom_tls_cert")
    key = _readable(tls.key, "dicom_tls_key")
    if os.stat(key).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("dicom_tls_key %s is readable by other users: chmod 600 it", key)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise DicomTlsError(
            f"dicom_tls_cert {cert} / dicom_tls_key {key}: not a PEM certificate and its "
            f"unencrypted private key ({exc.reason or exc.strerror})"
        ) from None


def _load_authorities(context: ssl.SSLContext, ca: Path) -> None:
    path = _readable(ca, "dicom_tls_ca")
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise DicomTlsError(
            f"dicom_tls_ca {path}: not a PEM certificate bundle ({exc.reason or exc.strerror})"
        ) from None


def server_context(tls: TlsCredentials) -> ssl.SSLContext:
    """The listener's TLS context: our certificate, TLS 1.2+, client certificates as asked.

    Raises
    ------
    DicomTlsError
        When a file is missing, unreadable or malformed, or client certificates are required
        without ``ca``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION
    _load_identity(context, tls)
    if tls.ca is not None:
        _load_authorities(context, tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_cert else ssl.CERT_OPTIONAL
    elif tls.require_peer_cert:
        raise DicomTlsError(
            "dicom_tls_require_client_cert needs dicom_tls_ca: the authorities that issue the "
            "clients' certificates"
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: TlsCredentials) -> ssl.SSLContext:
    """The sender's TLS context: the destination's certificate verified, TLS 1.2+, our
    certificate presented when configured.

    Raises
    ------
    DicomTlsError
        When a configured file is missing, unreadable or malformed, or only one of the
        certificate and the key is set.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION
    context.check_hostname = tls.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.ca is not None:
        _load_authorities(context, tls.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert is not None or tls.key is not None:
        _load_identity(context, tls)
    return context


def listener_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """The listener's TLS context when ``dicom_tls`` is on, else ``None``.

    Raises
    ------
    DicomTlsError
        As :func:`server_context`.
    """
    if not settings.dicom_tls:
        return None
    return server_context(TlsCredentials.from_settings(settings))


def check_sender_tls(settings: DicomSettings) -> bool:
    """Build the sender's TLS context when a destination is marked ``/tls`` (at start-up, so
    a missing file stops the gateway rather than the first send); whether one is.

    Raises
    ------
    DicomTlsError
        As :func:`client_context`.
    """
    if not any(d.strip().lower().endswith(TLS_SUFFIX) for d in settings.dicom_destinations):
        return False
    client_context(TlsCredentials.from_settings(settings))
    return True


def describe(sock: ssl.SSLSocket) -> str:
    """``TLSv1.3`` and, when the peer presented one, its certificate's common name."""
    version = sock.version() or "TLS"
    try:
        peer = sock.getpeercert()
    except ValueError:  # no handshake yet
        return version
    subject = (peer or {}).get("subject", ())
    common = [
        str(pair[1])
        for rdn in subject
        if isinstance(rdn, tuple)
        for pair in rdn
        if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName"
    ]
    if common:
        return f"{version}, client certificate CN={common[0]!r}"
    return version
