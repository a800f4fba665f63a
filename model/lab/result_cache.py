"""Evaluation results kept on disk, so a report can be assembled as its models appear.

An entry is one model's results on one cohort (Table rows or perturbation rows), keyed by the
checkpoint's weights and config, the cohort's index file, what was measured, the text-encoder
override and the llmctv version. Delete the folder after changing evaluation code within one
version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model import __version__
from model.files import file_digest
from model.network.checkpoint import WEIGHTS

log = logging.getLogger(__name__)

_COHORT_INDEX = ("cohort.json", "clinical.csv")


def _cohort_digest(cohort: Path) -> str:
    for name in _COHORT_INDEX:
        path = cohort / name
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(str(cohort.resolve()).encode()).hexdigest()


class ResultCache:
    """JSON results in ``folder`` (no caching when ``folder`` is ``None``)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def key(self, checkpoint: Path, cohort: Path, what: str, text_encoder: str | None) -> str:
        """Key of one model's ``what`` results on ``cohort``."""
        h = hashlib.sha256()
        for part in (
            __version__,
            file_digest(checkpoint / WEIGHTS),
            hashlib.sha256((checkpoint / "config.json").read_bytes()).hexdigest(),
            _cohort_digest(cohort),
            what,
            text_encoder or "",
        ):
            h.update(part.encode())
            h.update(b"\x00")
        return h.hexdigest()

    def get(self, key: str) -> Any | None:
        """The stored value, or ``None``."""
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cached result %s: %s", path.name, exc)
            return None

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON; written to a temporary file, then renamed)."""
        if self.folder is None:
            return
        tmp = self.folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value))
        tmp.replace(self.folder / f"{key}.json")

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        """The stored value, or ``compute()`` stored under ``key`` and returned."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value
