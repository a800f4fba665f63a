"""Receiving a CT series over HTTP: uploaded files and zip archives, stored safely.

Every byte is counted against the setting ``max_upload_bytes`` while it is written (a client
cannot announce a small size and send a large one). Zip archives are refused when a member
name leaves the target folder (absolute, ``..``, drive letters), when a member is a link, when
there are more than ``max_archive_members`` members, when the unpacked size passes
``max_unpacked_bytes``, or when a member expands more than ``max_compression_ratio`` times.
Members are written under generated names (their index), so no archive name reaches the disk.
"""

from __future__ import annotations

import logging
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from model.errors import PayloadTooLargeError
from service.errors import UnsafeArchiveError

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadLimits:
    """Size limits for one request (settings section ``uploads``)."""

    max_upload_bytes: int
    max_archive_members: int
    max_unpacked_bytes: int
    max_compression_ratio: float


@dataclass
class IntakeReport:
    """What was stored, and what was skipped (returned as job warnings)."""

    files: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)


class _Budget:
    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.used = 0
        self.what = what

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise PayloadTooLargeError(f"{self.what} exceed the limit of {self.limit} bytes")


def _copy(source: IO[bytes], target: Path, budget: _Budget) -> int:
    written = 0
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)
            written += len(chunk)
    return written


def store_files(streams: Iterable[IO[bytes]], folder: Path, limits: UploadLimits) -> IntakeReport:
    """Write uploaded files as ``folder/upload-00001.dcm`` …, counting bytes against the limit."""
    folder.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits.max_upload_bytes, "uploaded files")
    report = IntakeReport()
    for number, stream in enumerate(streams, start=1):
        report.bytes += _copy(stream, folder / f"upload-{number:05d}.dcm", budget)
        report.files += 1
    return report


def _member_is_safe(info: zipfile.ZipInfo) -> str | None:
    """Why this member is refused, or ``None``."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        return "a member name leaves the archive folder"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a member is a symbolic link"
    return None


def _check_members(members: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    if len(members) > limits.max_archive_members:
        raise UnsafeArchiveError(
            f"the archive has {len(members)} members; at most {limits.max_archive_members}"
        )
    declared = 0
    for info in members:
        reason = _member_is_safe(info)
        if reason:
            raise UnsafeArchiveError(f"archive refused: {reason}")
        declared += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1 << 20 and ratio > limits.max_compression_ratio:
            raise UnsafeArchiveError(
                f"archive refused: a member expands {ratio:.0f}x "
                f"(limit {limits.max_compression_ratio:.0f}x; decompression bomb?)"
            )
    if declared > limits.max_unpacked_bytes:
        raise PayloadTooLargeError(
            f"the archive unpacks to {declared} bytes; the limit is {limits.max_unpacked_bytes}"
        )


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return (len(head) == 132 and head[128:] == b"DICM") or head[:2] in (b"\x02\x00", b"\x08\x00")


def extract_archive(archive: IO[bytes], folder: Path, limits: UploadLimits) -> IntakeReport:
    """Unpack a zip of DICOM files into ``folder`` safely; non-DICOM members are skipped.

    Raises
    ------
    UnsafeArchiveError
        Not a zip, traversal, links, or a bomb ratio.
    PayloadTooLargeError
        More members or bytes than the limits allow (counted while unpacking too).
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError("the archive is not a readable zip file") from exc
    report = IntakeReport()
    skipped = 0
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        _check_members(members, limits)
        budget = _Budget(limits.max_unpacked_bytes, "unpacked archive members")
        for number, info in enumerate(members, start=1):
            target = folder / f"member-{number:05d}.dcm"
            try:
                with zf.open(info) as source:
                    written = _copy(source, target, budget)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError) as exc:
                raise UnsafeArchiveError(f"archive member #{number} cannot be unpacked") from exc
            if not _is_dicom(target):
                target.unlink()
                skipped += 1
                continue
            report.files += 1
            report.bytes += written
    if skipped:
        report.warnings.append(f"skipped {skipped} non-DICOM file(s) in the archive")
        log.warning("skipped %d non-DICOM archive members", skipped)
    return report
