"""Pydantic records kept as JSON files: atomic writes, read-modify-write under one lock.

Used by the file-backed job store (embedded mode) and the order store. One process owns the
files (the gateway); the lock serialises its threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from model.errors import LlmctvError
from model.files import write_atomically

M = TypeVar("M", bound=BaseModel)


class JsonRecordFiles(Generic[M]):
    """Records of type ``model`` at ``path_for(key)``; ``missing(key)`` is raised for none."""

    def __init__(
        self,
        model: type[M],
        path_for: Callable[[str], Path],
        missing: Callable[[str], LlmctvError],
    ) -> None:
        self.model = model
        self.path_for = path_for
        self.missing = missing
        self.lock = threading.RLock()

    def write(self, key: str, record: M) -> None:
        """Store ``record`` (whole file replaced atomically)."""
        with self.lock:
            write_atomically(self.path_for(key), record.model_dump_json().encode())

    def read(self, key: str) -> M:
        """The record, or the ``missing`` error."""
        try:
            text = self.path_for(key).read_text()
        except FileNotFoundError:
            raise self.missing(key) from None
        return self.model.model_validate_json(text)

    def update(self, key: str, **changes: Any) -> M:
        """Change fields atomically (validated) and return the new record."""
        with self.lock:
            record = self.model.model_validate({**self.read(key).model_dump(), **changes})
            self.write(key, record)
            return record

    def replace_if(self, key: str, change: Callable[[M], M | None]) -> M | None:
        """Atomically store ``change(record)`` unless it returns ``None``; returns that value."""
        with self.lock:
            record = change(self.read(key))
            if record is not None:
                self.write(key, record)
            return record

    def delete(self, key: str) -> None:
        """Remove a record (no error when it is already gone)."""
        with self.lock:
            self.path_for(key).unlink(missing_ok=True)
