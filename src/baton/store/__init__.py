"""Storage: the :class:`Store` protocol and its implementations, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import migrations
from .base import NewRun, RunRecord, Signal, Store, StoredKey, Taken
from .sql import SqlStore
from .sqlite import Durability, SqliteStore

__all__ = ["NewRun", "RunRecord", "Signal", "SqlStore", "SqliteStore", "Store", "StoredKey", "Taken", "open_store",
           "sqlite_path"]


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` → ``rel/path.db``; ``sqlite:////abs/path.db`` → ``/abs/path.db``."""
    rest = url.removeprefix("sqlite://")
    if not rest.startswith("/") or rest == "/":
        raise UsageError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
    return Path(rest[1:])


def open_store(url: str, *, durability: Durability = "full", schema: str = "current") -> SqlStore:
    """The store at ``url``. ``schema``: ``current`` (SQLite upgrades itself; PostgreSQL, shared
    by many workers, is upgraded by ``baton db upgrade`` and refused until then) or ``any``
    (open it as it is: for ``baton db status`` and ``upgrade``)."""
    if url.startswith("sqlite:"):
        return SqliteStore(sqlite_path(url), durability=durability, migrate=schema == "current")
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore  # psycopg is loaded only when it is used

        store = PostgresStore(url, migrate=False)
        if schema == "current" and (version := store.schema_version()) > len(migrations.load("postgres")):
            store.close()
            raise UsageError(f"the PostgreSQL database {store.location} is at schema version {version}, newer "
                             "than this Baton knows: upgrade Baton")
        if schema == "current" and (pending := store.pending_migrations()):
            store.close()
            raise UsageError(f"the PostgreSQL database {store.location} is at schema version "
                             f"{pending[0].version - 1}; this Baton needs {pending[-1].version}: "
                             "run `baton db upgrade`")
        return store
    raise UsageError(f"unsupported database URL {url!r}: expected sqlite:///PATH or postgresql://…")
