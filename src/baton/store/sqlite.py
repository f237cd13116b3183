"""The embedded store: one SQLite file in WAL mode.

Each transaction is ``BEGIN IMMEDIATE``: one writer at a time, in any number of processes.
With ``durability="full"`` (the default) each commit is fsync'd; ``"normal"`` survives a
crashed process but may lose the last commits on power loss. The queries are
:class:`~baton.store.sql.SqlStore`'s.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ..errors import StoreError
from .sql import SqlStore

Durability = Literal["full", "normal"]


class SqliteStore(SqlStore):
    """A :class:`~baton.store.base.Store` backed by one SQLite file."""

    backend = "sqlite"
    integrity_errors = (sqlite3.IntegrityError,)
    db_errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, durability: Durability = "full",
                 busy_timeout: float = 30.0, migrate: bool = True) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.durability = durability
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if migrate:
            self.migrate()

    # -- connections ----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA journal_mode = WAL")
                sync = "FULL" if self.durability == "full" else "NORMAL"
                conn.execute(f"PRAGMA synchronous = {sync}")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _autocommit(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn()
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}", retryable=True) from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also when COMMIT itself failed
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            raise  # the caller knows what a violated constraint means
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}", retryable=True) from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see the database as of one moment (a read transaction in WAL mode),
        even while other processes commit: what an audit needs to be consistent."""
        conn = self._conn()
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _query(self, sql: str, params: Any = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}", retryable=True) from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def _lock_migrations(self, conn: sqlite3.Connection) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already admits one writer."""

    def _migrations_applied(self) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"))

    # -- what SQLite does its own way ---------------------------------------------------

    def erase_data_key(self, run_id: str, now: float) -> bool:
        conn = self._conn()
        # Deleted cells are overwritten with zeros, and the log that still holds the pages
        # as they were is checkpointed into the file and truncated: the key is gone from disk.
        # (Done again when there is nothing left to erase, in case an earlier call could not.)
        conn.execute("PRAGMA secure_delete = ON")
        try:
            with self._tx() as tx:
                row = tx.execute("SELECT created_at FROM data_keys WHERE run_id = ? AND wrapped IS NOT NULL",
                                 (run_id,)).fetchone()
                if row is not None:
                    tx.execute("DELETE FROM data_keys WHERE run_id = ?", (run_id,))
                    tx.execute("INSERT INTO data_keys (run_id, created_at, erased_at) VALUES (?, ?, ?)",
                               (run_id, row[0], now))
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}", retryable=True) from exc
        finally:
            conn.execute("PRAGMA secure_delete = OFF")
        if busy:
            raise StoreError(f"run {run_id}'s data key was erased, but other readers kept the database's log "
                             "from being emptied, so a copy may remain in it; stop the other Baton processes "
                             "and run `baton runs forget` again", run_id=run_id, retryable=True)
        return row is not None

    def send_signal(self, run_id: str, name: str, data: str, now: float) -> int:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO signals (run_id, name, data, sent_at) VALUES (?, ?, ?, ?)",
                (run_id, name, data, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

