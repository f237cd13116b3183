"""Storage: the :class:`Store` protocol and its implementations, chosen by URL."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .base import NewRun, RunRecord, Signal, Store, StoredKey, Taken
from .sqlite import Durability, SqliteStore

__all__ = ["NewRun", "RunRecord", "Signal", "SqliteStore", "Store", "StoredKey", "Taken", "open_store", "sqlite_path"]


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` → ``rel/path.db``; ``sqlite:////abs/path.db`` → ``/abs/path.db``."""
    rest = url.removeprefix("sqlite://")
    if not rest.startswith("/") or rest == "/":
        raise UsageError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
    return Path(rest[1:])


def open_store(url: str, *, durability: Durability = "full") -> Store:
    if url.startswith("sqlite:"):
        return SqliteStore(sqlite_path(url), durability=durability)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore  # psycopg is loaded only when it is used

        return PostgresStore(url)
    raise UsageError(f"unsupported database URL {url!r}: expected sqlite:///PATH or postgresql://…")
