"""The store for many workers on many machines: PostgreSQL, through psycopg 3 and a pool.

The queries are :class:`~baton.store.sql.SqlStore`'s; this module opens connections, runs
transactions (``READ COMMITTED``: every write the engine makes is either a single
conditional statement or guarded by a primary key, and the one read-then-write, a lease
claim, locks its row), and adds what only PostgreSQL has: claims that skip rows another
worker is claiming (``FOR UPDATE SKIP LOCKED``), and ``LISTEN/NOTIFY`` so that an idle
worker wakes as soon as a run becomes runnable rather than at its next poll.

A connection that breaks (the server restarted, a network blip) is dropped by the pool and
replaced; the operation under way fails as a retryable :class:`~baton.errors.StoreError`,
and a worker simply tries again.
"""

from __future__ import annotations

import functools
import re
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import StoreError
from .sql import SqlStore

CHANNEL = "baton_runs"
_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                "keepalives_count": 3}
"""A connection whose server vanished without closing it (a network partition) is noticed
within about a minute, rather than waited on for ever."""
"""Notified with a run id whenever a run may have become runnable."""


@functools.lru_cache(maxsize=1024)
def _translate(sql: str) -> str:
    """The shared SQL's ``?`` and ``:name`` placeholders as psycopg's ``%s`` and ``%(name)s``."""
    if "%" in sql:  # psycopg would read it as a placeholder; the shared SQL never needs one
        raise ValueError(f"a literal % in SQL meant for PostgreSQL: {sql}")
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql).replace("?", "%s")


class _Adapter:
    """A psycopg connection that takes the shared SQL."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(_translate(sql), params or None)

    def executemany(self, sql: str, params: Any) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(_translate(sql), list(params))


def _check_if_disturbed(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before lending a connection, without a round trip when nothing has
    happened: an idle connection's socket has nothing to read unless the server closed it
    (a restart, a timeout) or sent something; only then is it checked properly."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()  # not select.select: it fails on descriptors past 1023
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def redacted_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(SqlStore):
    """A :class:`~baton.store.base.Store` on PostgreSQL."""

    backend = "postgres"
    integrity_errors = (psycopg.errors.IntegrityError,)
    db_errors = (psycopg.Error,)
    blob_size_sql = "SELECT COALESCE(SUM(octet_length(data)), 0) FROM blobs"
    migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
    )
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, max_connections: int = 20, connect_timeout: float = 10.0,
                 migrate: bool = True) -> None:
        self.url = url
        self.location = redacted_url(url)
        self._local = threading.local()
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        try:  # once, plainly: a wrong URL or a server that is down is said at once, in its words
            psycopg.connect(url, connect_timeout=max(1, int(connect_timeout))).close()
        except psycopg.Error as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
            raise StoreError(f"cannot connect to PostgreSQL at {self.location}: {reason}", retryable=True) from None
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, open=False, name="baton",
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout)), **_KEEPALIVES},
            check=_check_if_disturbed, timeout=connect_timeout,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self.location} within {connect_timeout:g}s; "
                             "is it running, and does the database exist?", retryable=True) from None
        if migrate:
            self.migrate()

    # -- connections ----------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        pinned: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if pinned is not None:  # inside snapshot(): every read sees its moment
            yield pinned
            return
        try:
            with self._pool.connection() as raw:
                yield raw
        except PoolTimeout as exc:
            raise StoreError(f"no connection to PostgreSQL at {self.location}: {exc}", retryable=True) from None

    @contextmanager
    def _tx(self) -> Iterator[_Adapter]:
        try:
            with self._connection() as raw, raw.transaction():
                yield _Adapter(raw)
        except self.integrity_errors:
            raise
        except psycopg.Error as exc:
            raise StoreError(f"database {self.location}: {exc}", retryable=True) from exc

    @contextmanager
    def _autocommit(self) -> Iterator[_Adapter]:
        try:
            with self._connection() as raw:
                yield _Adapter(raw)
        except self.integrity_errors:
            raise
        except psycopg.Error as exc:
            raise StoreError(f"database {self.location}: {exc}", retryable=True) from exc

    def _query(self, sql: str, params: Any = ()) -> list[Any]:
        with self._autocommit() as conn:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        try:
            with self._pool.connection() as raw, raw.transaction():
                raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                self._local.conn = raw
                try:
                    yield
                finally:
                    self._local.conn = None
        except psycopg.Error as exc:
            raise StoreError(f"database {self.location}: {exc}", retryable=True) from exc

    def close(self) -> None:
        with self._listen_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._pool.close()

    # -- migrations -----------------------------------------------------------------

    def _migrations_applied(self) -> bool:
        return bool(self._query("SELECT 1 FROM information_schema.tables "
                                "WHERE table_schema = current_schema() AND table_name = 'schema_migrations'"))

    def _lock_migrations(self, conn: _Adapter) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('baton schema migrations'))")

    # -- waking workers -------------------------------------------------------------

    def _lock_blobs(self, conn: _Adapter) -> None:
        conn.execute("LOCK TABLE blobs IN SHARE ROW EXCLUSIVE MODE")

    def _notify(self, conn: _Adapter, run_id: str) -> None:
        conn.execute(f"SELECT pg_notify('{CHANNEL}', ?)", (run_id,))

    def wait_for_work(self, timeout: float, stop: threading.Event) -> None:
        """Return when a run may have become runnable (a notification), when ``stop`` is set
        (looked at every 50 ms), or after ``timeout`` seconds."""
        try:
            with self._listen_lock:
                if self._listener is None or self._listener.closed:
                    self._listener = psycopg.connect(self.url, autocommit=True, connect_timeout=5, **_KEEPALIVES)
                    self._listener.execute(f"LISTEN {CHANNEL}")
                listener = self._listener
            deadline = time.monotonic() + timeout
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if any(True for _ in listener.notifies(timeout=min(left, 0.05), stop_after=1)):
                    return
        except psycopg.Error:
            with self._listen_lock:
                if self._listener is not None:
                    self._listener.close()
                self._listener = None
            stop.wait(timeout)  # the server is away: poll until it is back

    # -- what PostgreSQL does its own way -------------------------------------------

    def erase_data_key(self, run_id: str, now: float) -> bool:
        with self._tx() as conn:
            row = conn.execute("SELECT created_at FROM data_keys WHERE run_id = ? AND wrapped IS NOT NULL FOR UPDATE",
                               (run_id,)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM data_keys WHERE run_id = ?", (run_id,))
                conn.execute("INSERT INTO data_keys (run_id, created_at, erased_at) VALUES (?, ?, ?)",
                             (run_id, row[0], now))
        # The deleted row version stays in the table's file until it is rewritten, and a
        # rewrite keeps it while an older snapshot could still see it.
        with self._autocommit() as conn:
            older = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL "
                                 "AND pid <> pg_backend_pid() AND datname = current_database()").fetchone()
            conn.execute("SET lock_timeout = '10s'")
            try:
                conn.execute("VACUUM (FULL) data_keys")
            finally:
                conn.execute("RESET lock_timeout")
        if older is not None and older[0]:
            raise StoreError(f"run {run_id}'s data key was erased, but {older[0]} transaction(s) open elsewhere "
                             "may keep its old row in the table's file; run `baton runs forget` again when "
                             "they have finished", run_id=run_id, retryable=True)
        return row is not None

    def send_signal(self, run_id: str, name: str, data: str, now: float) -> int:
        with self._tx() as conn:
            row = conn.execute("INSERT INTO signals (run_id, name, data, sent_at) VALUES (?, ?, ?, ?) "
                               "RETURNING signal_id", (run_id, name, data, now)).fetchone()
            assert row is not None
            self._notify(conn, run_id)
            return int(row[0])
