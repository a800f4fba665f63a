"""Configured C-STORE destinations (``dicom_destinations``: ``NAME=AET@host:port``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from model.errors import ConfigurationError
from service.dicomnet.errors import InvalidDestinationError, UnknownDestinationError
from service.dicomnet.settings import DicomSettings, get_settings

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
    """

    name: str
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}={self.ae_title}@{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``AET@host:port`` for messages."""
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> DicomDestination:
    """Parse one ``NAME=AET@host:port`` setting value.

    Parameters
    ----------
    text
        E.g. ``TPS=ECLIPSE@10.0.0.5:104`` or ``PACS=ORTHANC@[::1]:4242``.

    Returns
    -------
    DicomDestination
        The parsed destination.

    Raises
    ------
    InvalidDestinationError
        With the expected form and the part that is wrong.
    """
    form = "expected NAME=AET@host:port"
    name, sep, rest = text.strip().partition("=")
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
    return DicomDestination(name, ae_title, host.strip("[]"), int(port_text))


def parse_destinations(values: Iterable[str]) -> dict[str, DicomDestination]:
    """Parse several settings values into a mapping by name; duplicate names are refused.

    Raises
    ------
    InvalidDestinationError
        On the first malformed value or a repeated name.
    """
    result: dict[str, DicomDestination] = {}
    for text in values:
        destination = parse_destination(text)
        if destination.name in result:
            raise InvalidDestinationError(f"destination name {destination.name!r} is repeated")
        result[destination.name] = destination
    return result


def destinations_from_settings(
    settings: DicomSettings | None = None,
) -> dict[str, DicomDestination]:
    """The configured ``dicom_destinations`` by name (process settings by default)."""
    return parse_destinations((settings or get_settings()).dicom_destinations)


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
