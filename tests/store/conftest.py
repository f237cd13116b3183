"""Fixtures for the storage contract suite.

Every test in ``test_contract.py`` runs once per backend in :data:`BACKENDS`. A backend is a
factory that, given a scratch directory, returns a :class:`Backend`: a way to open store
objects on one fresh database, its URL (for other processes), and raw SQL access for the
few checks the ``Store`` interface cannot express (the ``schema_migrations`` table).

Adding PostgreSQL is one factory function and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from baton.store import SqliteStore, Store
from baton.store import migrations as migrations_module
from baton.store.migrations import Migration


class MigratingStore(Store, Protocol):
    """The store interface plus the schema management every implementation offers."""

    def schema_version(self) -> int: ...

    def pending_migrations(self) -> list[Migration]: ...

    def migrate(self) -> list[Migration]: ...


@dataclass
class Backend:
    """One fresh, empty database and the means to reach it."""

    name: str
    url: str
    connect: Callable[[], MigratingStore]
    query: Callable[[str], list[tuple[Any, ...]]]
    execute: Callable[[str], None]
    opened: list[MigratingStore] = field(default_factory=list)

    @property
    def migrations(self) -> list[Migration]:
        return migrations_module.load(self.name)

    def open(self) -> MigratingStore:
        """A new, independent store object on the same database (like another worker)."""
        store = self.connect()
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "baton.db"

    def query(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def execute(sql: str) -> None:
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute(sql)
        finally:
            conn.close()

    return Backend(
        name="sqlite",
        url=f"sqlite:///{path.resolve()}",
        connect=lambda: SqliteStore(path),
        query=query,
        execute=execute,
    )


BACKENDS: Sequence[Any] = [
    pytest.param(sqlite_backend, id="sqlite"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: Backend = request.param(tmp_path)
    yield made
    made.close()


@pytest.fixture
def store(backend: Backend) -> MigratingStore:
    return backend.open()
