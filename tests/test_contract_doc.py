"""docs/CONTRACT.md documents every contract table, column, type and quarantine reason."""

from __future__ import annotations

import re

import pytest

from tasks.core.config import REPO_ROOT
from tasks.core.contract import EVENT_TYPES, QUARANTINE_REASONS, TABLES

DOC = (REPO_ROOT / "docs" / "CONTRACT.md").read_text()


def _section(table: str) -> str:
    match = re.search(rf"^### `{table}`\n(.*?)(?=^#{{2,3}} )", DOC, flags=re.S | re.M)
    assert match, f"docs/CONTRACT.md has no section ### `{table}`"
    return match.group(1)


@pytest.mark.parametrize("table", list(TABLES))
def test_every_column_is_documented_with_type_and_nullability(table: str) -> None:
    rows = {
        m[0]: m[1:] for m in re.findall(r"^\| `(\w+)` \| (\w+) \| (yes|no) \|", _section(table), flags=re.M)
    }
    expected = {c.name: (c.sql_type, "yes" if c.nullable else "no") for c in TABLES[table].columns}
    assert rows == expected


def test_every_quarantine_reason_is_documented() -> None:
    documented = re.findall(
        r"^\| `(\w+)` \|", DOC.split("## Validation and quarantine")[1].split("## ")[0], flags=re.M
    )
    assert documented == list(QUARANTINE_REASONS)  # in priority order


def test_every_event_type_is_documented() -> None:
    assert all(f"`{e}`" in DOC for e in EVENT_TYPES)
