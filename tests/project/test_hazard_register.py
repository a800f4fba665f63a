"""The hazard register names only tests that exist, and every controlled hazard names one."""

from __future__ import annotations

import re

from conftest import REPO

REGISTER = REPO / "docs" / "safety" / "hazards.md"
#: `tests/file.py::name` or `tests/file.py`, and following `::name` items of the same file.
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def _controlled_rows() -> list[str]:
    text = REGISTER.read_text()
    section = text.split("## Controlled hazards", 1)[1].split("## Open hazards", 1)[0]
    return [line for line in section.splitlines() if re.match(r"\| H\d+ ", line)]


def test_every_named_test_exists() -> None:
    rows = _controlled_rows()
    assert len(rows) >= 10
    missing = []
    for row in rows:
        verified_by = row.rsplit("|", 2)[-2]
        current = None
        found = 0
        for path, name, continued in REFERENCE.findall(verified_by):
            current = path or current
            test = name or continued
            assert current is not None, row
            source = (REPO / current).read_text() if (REPO / current).is_file() else ""
            if not source or (test and f"def {test}(" not in source):
                missing.append(f"{current}::{test}")
            found += 1
        assert found, f"a controlled hazard without a test: {row[:60]}"
    assert missing == []
