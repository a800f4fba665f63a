"""Configured C-STORE destinations (``dicom_destinations``: ``NAME=AET@host:port[/tls]``).

A destination ending in ``/tls`` is reached over DICOM TLS with the credentials of the
``dicom_tls_*`` settings (:class:`~service.dicomnet.tls.TlsCredentials`): its certificate is
verified against ``dicom_tls_ca`` (or the system's authorities), and our certificate is
presented as the client certificate when one is configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from model.errors import ConfigurationError
from service.dicomnet.errors import InvalidDestinationError, UnknownDestinationError
from service.dicomnet.settings import DicomSettings, get_settings
from service.dicomnet.tls import TLS_SUFFIX, TlsCredentials

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")
_AE_TITLE_MAX = 16


def ae_title_problem(title: str) -> str | None:
    """Why ``title`` is not a valid DICOM AE title, or ``None`` when it is valid.

    A valid title has 1 to 16 characters of printable ASCII without backslash and is not
    only spaces.
    """
    printable = all(32 <= ord(ch) < 127 and ch != "\\" for ch in title)
    if not title.strip() or len(title) > _AE_TITLE_MAX or not printable:
        return f"must be 1 to {_AE_TITLE_MAX} printable ASCII characters without backslash"
    return None


def check_ae_title(title: str, what: str = "AE title") -> str:
    """Return ``title`` if it is a valid DICOM AE title.

    Parameters
    ----------
    title
        The AE title.
    what
        How to name the value in the error, e.g. ``dicom_ae_title``.

    Raises
    ------
    ConfigurationError
        When the title is not valid.
    """
    problem = ae_title_problem(title)
    if problem:
        raise ConfigurationError(f"{what} {title!r} {problem}")
    return title


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM peer that accepts C-STORE (planning system, PACS).

    Attributes
    ----------
    name
        The local name used to pick it (letters, digits, ``_.-``).
    ae_title
        The peer's (called) AE title.
    host
        Host name or IP address (IPv6 in brackets in the setting, stored without them).
    port
        TCP port, 1 to 65535.
    tls
        The credentials of DICOM TLS when the destination is marked ``/tls``; ``None``: plain
        TCP.
    """

    name: str
    ae_title: str
    host: str
    port: int
    tls: TlsCredentials | None = None

    def __str__(self) -> str:
        suffix = TLS_SUFFIX if self.tls is not None else ""
        return f"{self.name}={self.ae_title}@{self.host}:{self.port}{suffix}"

    @property
    def address(self) -> str:
        """``AET@host:port`` for messages (``(TLS)`` appended for a TLS destination)."""
        suffix = " (TLS)" if self.tls is not None else ""
        return f"{self.ae_title}@{self.host}:{self.port}{suffix}"


def parse_destination(text: str, tls: TlsCredentials | None = None) -> DicomDestination:
    """Parse one ``NAME=AET@host:port[/tls]`` setting value.

    Parameters
    ----------
    text
        E.g. ``TPS=ECLIPSE@10.0.0.5:104``, ``PACS=ORTHANC@[::1]:4242`` or, over DICOM TLS,
        ``TPS=ECLIPSE@tps.example.org:2762/tls``.
    tls
        The credentials a ``/tls`` destination uses (default: no client certificate, the
        system's certificate authorities).

    Returns
    -------
    DicomDestination
        The parsed destination.

    Raises
    ------
    InvalidDestinationError
        With the expected form and the part that is wrong.
    """
    form = "expected NAME=AET@host:port or NAME=AET@host:port/tls"
    stripped = text.strip()
    secure = stripped.lower().endswith(TLS_SUFFIX)
    if secure:
        stripped = stripped[: -len(TLS_SUFFIX)]
    name, sep, rest = stripped.partition("=")
    if not sep or not _NAME.match(name):
        raise InvalidDestinationError(f"destination {text!r}: bad or missing NAME ({form})")
    ae_title, sep, address = rest.rpartition("@")
    if not sep:
        raise InvalidDestinationError(f"destination {text!r}: missing '@' ({form})")
    problem = ae_title_problem(ae_title)
    if problem:
        raise InvalidDestinationError(f"destination {text!r}: AE title {problem} ({form})")
    host, sep, port_text = address.rpartition(":")
    if not sep or not _HOST.match(host):
        raise InvalidDestinationError(f"destination {text!r}: bad or missing host ({form})")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidDestinationError(
            f"destination {text!r}: port must be a number from 1 to 65535 ({form})"
        )
    credentials = (tls or TlsCredentials()) if secure else None
    return DicomDestination(name, ae_title, host.strip("[]"), int(port_text), credentials)


def parse_destinations(
    values: Iterable[str], tls: TlsCredentials | None = None
) -> dict[str, DicomDestination]:
    """Parse several settings values into a mapping by name; duplicate names are refused.

    ``tls`` is what the ``/tls`` destinations use (see :func:`parse_destination`).

    Raises
    ------
    InvalidDestinationError
        On the first malformed value or a repeated name.
    """
    result: dict[str, DicomDestination] = {}
    for text in values:
        destination = parse_destination(text, tls)
        if destination.name in result:
            raise InvalidDestinationError(f"destination name {destination.name!r} is repeated")
        result[destination.name] = destination
    return result


def destinations_from_settings(
    settings: DicomSettings | None = None,
) -> dict[str, DicomDestination]:
    """The configured ``dicom_destinations`` by name (process settings by default); the
    ``/tls`` ones carry the ``dicom_tls_*`` credentials."""
    settings = settings or get_settings()
    return parse_destinations(settings.dicom_destinations, TlsCredentials.from_settings(settings))


def resolve_destination(name: str, destinations: dict[str, DicomDestination]) -> DicomDestination:
    """Look up ``name``.

    Raises
    ------
    UnknownDestinationError
        When no destination of that name is configured; the message lists the known names.
    """
    try:
        return destinations[name]
    except KeyError:
        known = ", ".join(sorted(destinations)) or "none configured"
        raise UnknownDestinationError(
            f"unknown DICOM destination {name!r} (known: {known})"
        ) from None
