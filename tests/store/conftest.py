"""Fixtures for the storage contract suite.

Every test in ``test_contract.py`` runs once per backend in :data:`BACKENDS`. A backend is a
factory that, given a scratch directory, returns a :class:`Backend`: a way to open store
objects on one fresh database, its URL (for other processes), and raw SQL access for the
few checks the ``Store`` interface cannot express (the ``schema_migrations`` table).

PostgreSQL runs in a schema of its own per test, in one database per session.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from baton.store import SqliteStore, Store
from baton.store import migrations as migrations_module
from baton.store.migrations import Migration
from baton.store.postgres import PostgresStore
from pg_support import create_database, drop_database, schema_url


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


def postgres_backend(tmp_path: Path, database: str) -> Backend:
    schema = f"t_{secrets.token_hex(6)}"
    url = schema_url(database, schema)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def execute(sql: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)

    return Backend(name="postgres", url=url, connect=lambda: PostgresStore(url), query=query, execute=execute)


BACKENDS: Sequence[Any] = [
    pytest.param(sqlite_backend, id="sqlite"),
    pytest.param(postgres_backend, id="postgres"),
]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    name = create_database()
    yield name
    drop_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    factory = request.param
    made: Backend = (factory(tmp_path, request.getfixturevalue("postgres_database"))
                     if factory is postgres_backend else factory(tmp_path))
    yield made
    made.close()


@pytest.fixture
def store(backend: Backend) -> MigratingStore:
    return backend.open()
