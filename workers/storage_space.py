"""Free space of the storage folder against its watermark (disk backpressure).

The storage folder is *full* when its file system has less than ``storage_min_free_bytes``
free, or more than ``storage_max_used_fraction`` of it is used. While it is full the faces
refuse new work (the DICOM listener new associations, STOW-RS and ``POST /contour`` new
requests) and running jobs finish; see ``docs/dicom-conformance.md``, "Disk backpressure".

The space is read with a *probe*, :func:`disk_usage_probe` (``statvfs``) unless the composition
root gives the watermark another (tests simulate a full disk this way). A probe that cannot read
the folder counts as full: refusing is safer than accepting data that may not be kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from model.errors import ConfigurationError
from workers.settings import StorageSettings


class DiskUsage(NamedTuple):
    """Bytes of one file system, as :func:`shutil.disk_usage` gives them."""

    total: int
    used: int
    free: int


#: Reads the usage of the file system holding a folder.
SpaceProbe = Callable[[Path], DiskUsage]


def disk_usage_probe(folder: Path) -> DiskUsage:
    """The real probe: ``statvfs`` of the nearest existing folder at or above ``folder``."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    total, used, free = shutil.disk_usage(existing)
    return DiskUsage(total, used, free)


@dataclass(frozen=True)
class StorageState:
    """The storage folder's space at one moment.

    Attributes
    ----------
    full
        Below the watermark: new work is refused.
    free_bytes, total_bytes
        As the probe read them (0 when it could not read).
    used_fraction
        ``1 - free / total`` (what an unprivileged writer can still use), 1.0 when unknown.
    detail
        Why it is full, or the space left; names no file.
    """

    full: bool
    free_bytes: int
    total_bytes: int
    used_fraction: float
    detail: str


@dataclass(frozen=True)
class StorageWatermark:
    """When the storage folder counts as full.

    Parameters
    ----------
    folder
        The storage folder.
    min_free_bytes
        Fewest free bytes (``storage_min_free_bytes``).
    max_used_fraction
        Largest used fraction, 0 < f <= 1 (``storage_max_used_fraction``; 1 turns it off).
    probe
        Reads the file system's usage (:func:`disk_usage_probe`).

    Raises
    ------
    ConfigurationError
        When a limit is out of range.
    """

    folder: Path
    min_free_bytes: int
    max_used_fraction: float
    probe: SpaceProbe = field(default=disk_usage_probe, compare=False)

    def __post_init__(self) -> None:
        if self.min_free_bytes < 0:
            raise ConfigurationError(
                f"storage_min_free_bytes must be >= 0, got {self.min_free_bytes}"
            )
        if not 0.0 < self.max_used_fraction <= 1.0:
            raise ConfigurationError(
                f"storage_max_used_fraction must be in (0, 1], got {self.max_used_fraction}"
            )

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, probe: SpaceProbe = disk_usage_probe
    ) -> StorageWatermark:
        """The watermark of ``storage_dir``."""
        return cls(
            settings.storage_dir,
            settings.storage_min_free_bytes,
            settings.storage_max_used_fraction,
            probe,
        )

    def state(self) -> StorageState:
        """Read the space now (a ``statvfs``: cheap enough for every request)."""
        try:
            usage = self.probe(self.folder)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return StorageState(True, 0, 0, 1.0, f"free space cannot be read: {reason}")
        used = 1.0 - usage.free / usage.total if usage.total > 0 else 1.0
        if usage.free < self.min_free_bytes:
            detail = f"{usage.free} bytes free, below storage_min_free_bytes {self.min_free_bytes}"
            return StorageState(True, usage.free, usage.total, used, detail)
        if used > self.max_used_fraction:
            detail = f"{used:.1%} used, above storage_max_used_fraction {self.max_used_fraction}"
            return StorageState(True, usage.free, usage.total, used, detail)
        detail = f"{usage.free} bytes free ({used:.1%} used)"
        return StorageState(False, usage.free, usage.total, used, detail)
