"""Bounded inflation of Deflated Explicit VR Little Endian data sets (decompression bombs).

A deflated instance of 0.4 MB may inflate to gigabytes; pydicom inflates it whole when it
reads it. Before any reader sees such an instance, :func:`check_inflated_size` (a data set
stream) or :func:`check_part10_inflated_size` (a Part 10 file) inflates it in chunks of at
most :data:`CHUNK` output bytes, keeping nothing, and refuses it once the inflated size passes
the cap (the setting ``dicom_max_instance_bytes`` counts inflated bytes).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from model.errors import InflatedTooLargeError, UnreadableDicomError

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
CHUNK = 1 << 20
_READ = 1 << 16
_META_START = 132  # 128-byte preamble + "DICM"


def check_inflated_size(stream: BinaryIO, limit: int, what: str = "an instance") -> int:
    """Inflate a raw-deflate stream in bounded chunks; return its inflated size in bytes.

    Raises
    ------
    InflatedTooLargeError
        The inflated size exceeds ``limit`` bytes (nothing is kept in memory meanwhile).
    UnreadableDicomError
        The stream is not valid deflate data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while data := stream.read(_READ):
            while data:
                total += len(inflater.decompress(data, CHUNK))
                if total > limit:
                    raise InflatedTooLargeError(
                        f"{what} inflates to more than {limit} bytes (dicom_max_instance_bytes)"
                    )
                data = inflater.unconsumed_tail
        total += len(inflater.flush())
    except zlib.error as exc:
        raise UnreadableDicomError(f"{what}: its deflated data set cannot be inflated") from exc
    if total > limit:
        raise InflatedTooLargeError(f"{what} inflates to more than {limit} bytes")
    return total


def check_part10_inflated_size(path: Path, limit: int, what: str = "an instance") -> None:
    """For a Part 10 file in the deflated transfer syntax, :func:`check_inflated_size` of its
    data set; any other file passes untouched.

    Raises
    ------
    InflatedTooLargeError, UnreadableDicomError
        As :func:`check_inflated_size`; also a deflated file without a readable file meta
        group length.
    """
    with path.open("rb") as stream:
        head = stream.read(_META_START + 12)
        if len(head) < _META_START + 12 or head[128:132] != b"DICM":
            return
        if DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.encode() not in _meta_bytes(stream, head):
            return
        stream.seek(_META_START + 12 + _group_length(head))
        check_inflated_size(stream, limit, what)


def _group_length(head: bytes) -> int:
    tag = struct.unpack("<HH", head[_META_START : _META_START + 4])
    if tag != (0x0002, 0x0000):
        raise UnreadableDicomError("a deflated file lacks FileMetaInformationGroupLength")
    return int(struct.unpack("<I", head[_META_START + 8 : _META_START + 12])[0])


def _meta_bytes(stream: BinaryIO, head: bytes) -> bytes:
    """The file meta elements after the group length (where TransferSyntaxUID lives)."""
    try:
        length = _group_length(head)
    except UnreadableDicomError:
        return b""
    stream.seek(_META_START + 12)
    return stream.read(min(length, 1 << 16))
