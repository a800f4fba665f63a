"""Incremental reading of a ``multipart/related`` body (RFC 2387, DICOM PS3.18 §8.6).

:class:`PartSpooler` is fed the body chunk by chunk as it arrives and spools each part's
content to its own hidden temporary file (``.stow-<random>.tmp``) in a given folder, so a body
of any size costs one chunk of memory. :meth:`PartSpooler.feed` returns the parts that are
complete; the caller owns their files from then on (:meth:`SpooledPart.discard`). A part
larger than ``max_part_bytes`` stops being written and is handed out marked ``too_large``.
:meth:`PartSpooler.close` deletes every file not yet handed out, so a body cut off half way
leaves nothing behind.

The framing itself is parsed by ``python-multipart`` (already the form parser of FastAPI).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from model.files import TEMP_SUFFIX
from service.errors import MalformedMultipartError, UnsupportedMediaTypeError

SPOOL_PREFIX = ".stow-"
#: Largest part header block accepted (a few headers of a few hundred bytes each).
MAX_HEADER_BYTES = 8_192
#: Most parts (instances) in one request: a CT series has a few hundred, rarely 2,000.
MAX_PARTS = 5_000
#: Largest preamble before the first boundary (RFC 2046 allows one; clients rarely send it).
MAX_PREAMBLE_BYTES = 65_536


def related_boundary(content_type: str, part_type: str) -> bytes:
    """The boundary of a ``multipart/related; type="<part_type>"`` Content-Type.

    Raises
    ------
    UnsupportedMediaTypeError
        When the media type is not ``multipart/related``, its ``type`` parameter is present
        and not ``part_type``, or the boundary is missing.
    """
    media, options = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        raise UnsupportedMediaTypeError(
            f'expected multipart/related; type="{part_type}", got {media.decode("latin-1")!r}'
        )
    declared = options.get(b"type", part_type.encode()).decode("latin-1").strip('"').lower()
    if declared != part_type:
        raise UnsupportedMediaTypeError(
            f"multipart/related of type {declared!r} is not supported, only {part_type!r}"
        )
    boundary = options.get(b"boundary", b"").strip(b'"')
    if not boundary:
        raise UnsupportedMediaTypeError("multipart/related without a boundary parameter")
    return boundary


@dataclass
class SpooledPart:
    """One complete part: its headers (lower-case names) and its spooled content."""

    headers: dict[str, str]
    path: Path
    size: int
    too_large: bool = False

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, lower case ('' when absent)."""
        media, _ = parse_options_header(self.headers.get("content-type", ""))
        return media.decode("latin-1").lower()

    def read_bytes(self) -> bytes:
        """The whole content (one part: at most ``max_part_bytes``)."""
        return self.path.read_bytes()

    def discard(self) -> None:
        """Delete the spooled file."""
        self.path.unlink(missing_ok=True)


@dataclass
class _Current:
    """The part being received (headers, then content)."""

    field_name: bytearray = field(default_factory=bytearray)
    field_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    handle: BinaryIO | None = None
    path: Path | None = None
    size: int = 0
    too_large: bool = False


class PartSpooler:
    """Spool the parts of one ``multipart/related`` body to temporary files as it streams.

    Parameters
    ----------
    boundary
        From :func:`related_boundary`.
    folder
        Where parts are spooled (on the storage file system, so a full disk shows at once).
    max_part_bytes
        Largest part kept; the rest of a larger part is skipped.
    """

    def __init__(
        self, boundary: bytes, folder: Path, max_part_bytes: int, max_parts: int = MAX_PARTS
    ) -> None:
        self._folder = folder
        self._max_part = max_part_bytes
        self._max_parts = max_parts
        self._parts = 0
        self._delimiter = b"--" + boundary
        self._preamble: bytes | None = b""  # None once the first delimiter was seen
        self._current = _Current()
        self._done: list[SpooledPart] = []
        self._ended = False
        self._open: set[Path] = set()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_end": self._body_end,
            },
        )

    # --- the caller's side ----------------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[SpooledPart]:
        """Parse one chunk; returns the parts completed by it (their files are the caller's).

        Raises
        ------
        MalformedMultipartError
            When the framing is broken.
        """
        if self._preamble is not None:
            chunk = self._skip_preamble(chunk)
            if not chunk:
                return []
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MalformedMultipartError(f"the multipart body is malformed: {exc}") from exc
        done, self._done = self._done, []
        for part in done:
            self._open.discard(part.path)
        return done

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """Drop what precedes the first delimiter (a preamble, RFC 2046 section 5.1.1).

        Raises
        ------
        MalformedMultipartError
            No delimiter within :data:`MAX_PREAMBLE_BYTES`.
        """
        data = (self._preamble or b"") + chunk
        at = 0 if data.startswith(self._delimiter) else data.find(b"\r\n" + self._delimiter)
        if at < 0:
            if len(data) > MAX_PREAMBLE_BYTES:
                raise MalformedMultipartError(
                    f"no multipart boundary within the first {MAX_PREAMBLE_BYTES} bytes"
                )
            self._preamble = data
            return b""
        self._preamble = None
        return data[at + 2 :] if at > 0 or not data.startswith(self._delimiter) else data

    def finish(self) -> None:
        """The body ended: it must have ended with the closing boundary.

        Raises
        ------
        MalformedMultipartError
            When the closing boundary never came (a truncated body).
        """
        if not self._ended:
            raise MalformedMultipartError("the multipart body ends before its closing boundary")

    def close(self) -> None:
        """Delete the files of parts not handed out (idempotent)."""
        if self._current.handle is not None:
            self._current.handle.close()
            self._current.handle = None
        for path in self._open:
            path.unlink(missing_ok=True)
        self._open.clear()

    # --- parser callbacks -----------------------------------------------------------------------
    def _begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise MultipartParseError(f"more than {self._max_parts} parts in one request")
        self._current = _Current()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._current.field_name += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._current.field_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._current.header_bytes += size
        if self._current.header_bytes > MAX_HEADER_BYTES:
            raise MultipartParseError(f"part headers exceed {MAX_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        name = self._current.field_name.decode("latin-1").strip().lower()
        self._current.headers[name] = self._current.field_value.decode("latin-1").strip()
        self._current.field_name, self._current.field_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        fd, name = tempfile.mkstemp(dir=self._folder, prefix=SPOOL_PREFIX, suffix=TEMP_SUFFIX)
        self._current.path = Path(name)
        self._open.add(self._current.path)
        self._current.handle = os.fdopen(fd, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        current = self._current
        current.size += end - start
        if current.size > self._max_part:
            current.too_large = True
        if current.handle is not None and not current.too_large:
            current.handle.write(data[start:end])

    def _end(self) -> None:
        current = self._current
        if current.handle is None or current.path is None:
            return
        current.handle.close()
        current.handle = None
        self._done.append(
            SpooledPart(current.headers, current.path, current.size, current.too_large)
        )

    def _body_end(self) -> None:
        self._ended = True
