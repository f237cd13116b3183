"""Numbered, named schema migrations, one folder per backend (``sqlite/0001_initial.sql``).

Each migration is applied in the same transaction as the row that records it, so a crash
mid-upgrade leaves the schema at a known version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The migration's statements; each ends with ``;`` at the end of a line."""
        out: list[str] = []
        current: list[str] = []
        for line in self.sql.splitlines():
            if line.strip().startswith("--") and not current:
                continue
            current.append(line)
            if line.rstrip().endswith(";"):
                out.append("\n".join(current).strip())
                current = []
        if "".join(current).strip():
            out.append("\n".join(current).strip())
        return out


def load(backend: str) -> list[Migration]:
    folder = resources.files(__package__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"{backend} migrations skip from {expected - 1} to {migration.version}")
    return found
