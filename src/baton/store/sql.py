"""What the SQL stores share: every query and every transaction, written once.

:class:`SqlStore` holds the logic of the :class:`~baton.store.base.Store` protocol; its two
subclasses (:mod:`.sqlite`, :mod:`.postgres`) only open connections, begin transactions and
say what differs in their dialect. SQL is written with ``?`` and ``:name`` placeholders and
``ON CONFLICT DO NOTHING``, which both databases understand (a connection adapter rewrites the
placeholders for PostgreSQL).

An append is one transaction: the journal rows, whose primary key ``(run_id, seq)`` is the
fencing token (a stale writer's ``seq`` already exists), and, when the run's status changes,
the index update.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..approvals import ApprovalRecord
from ..audit.checkpoints import Checkpoint
from ..errors import AppendConflict, BlobMissing, MigrationError
from ..journal import BLOB_CODEC, EncodedEvent, IndexUpdate, RunStatus
from ..journal import events as ev
from ..journal.blobs import references
from ..sensitive.keys import WrappedKey
from . import migrations
from .approvals_index import APPROVAL_COLUMNS, apply_approval, approval_record
from .base import NewRun, RunRecord, Signal, StoredKey, Taken
from .memories import MemoryRows

_RUN_COLUMNS = (
    "runs.run_id, workflow, workflow_ref, status, created_at, updated_at, "
    "COALESCE(head.seq, 0), COALESCE(head.hash, ''), anchor_seq, anchor_hash, "
    "principal, tenant, wake_at, waiting_for, outcome, owner, lease_expires_at, cancel_requested"
)
# Each run with its journal's last event (one primary-key probe per run).
_RUNS = (
    "runs LEFT JOIN events AS head ON head.run_id = runs.run_id AND head.seq = "
    "(SELECT MAX(seq) FROM events AS e WHERE e.run_id = runs.run_id)"
)
_TERMINAL = "(" + ", ".join(f"'{s.value}'" for s in RunStatus if s.terminal) + ")"
_RUNNABLE = f"""
    (status IN ('pending', 'running')
     OR (status = 'sleeping' AND wake_at <= :now)
     OR (status = 'waiting' AND (wake_at <= :now OR EXISTS (
            SELECT 1 FROM signals s
            WHERE s.run_id = runs.run_id AND s.name = runs.waiting_for AND s.consumed = 0)))
     OR (cancel_requested = 1 AND status NOT IN {_TERMINAL}))
"""


Connection = Any
"""A DB-API connection: ``sqlite3.Connection`` as it is, a PostgreSQL one through an adapter
(``execute`` returning a cursor with ``fetchone``, ``fetchall``, ``rowcount``; ``executemany``)."""


_MAX_ROWS = 16


@functools.lru_cache(maxsize=_MAX_ROWS)
def _insert_sql(count: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * count)
    return f"INSERT INTO events (run_id, seq, type, at, data, hash, codec) VALUES {values}"


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run_id=row[0], workflow=row[1], workflow_ref=row[2], status=RunStatus(row[3]),
        created_at=row[4], updated_at=row[5], head_seq=row[6], head_hash=row[7],
        anchor_seq=row[8], anchor_hash=row[9], principal=row[10], tenant=row[11],
        wake_at=row[12], waiting_for=row[13], outcome=row[14], owner=row[15],
        lease_expires_at=row[16], cancel_requested=bool(row[17]),
    )


class SqlStore(MemoryRows, ABC):
    """A :class:`~baton.store.base.Store` in SQL; subclasses supply connections and dialect.
    The long-term memory's queries come from :class:`~baton.store.memories.MemoryRows`."""

    backend: str
    """The name of the backend's migrations folder: ``sqlite`` or ``postgres``."""
    location: str
    """Where the database is, for messages (a path, or a URL without its password)."""
    integrity_errors: tuple[type[Exception], ...]
    """What the driver raises for a violated constraint (a fencing conflict)."""
    db_errors: tuple[type[Exception], ...]
    """What the driver raises for anything else the database refuses."""
    blob_size_sql = "SELECT COALESCE(SUM(LENGTH(CAST(data AS BLOB))), 0) FROM blobs"
    migrations_table_sql = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for_update = ""
    """Locks a row read in order to write it (SQLite's transactions already admit one writer)."""
    skip_locked = ""
    """Locks rows to claim, passing over those another transaction is claiming."""

    # -- what a backend supplies ----------------------------------------------------------

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Connection]:
        """A write transaction; a violated constraint is raised as the driver's own
        ``integrity_errors``, any other database error as a retryable ``StoreError``."""

    @abstractmethod
    def _autocommit(self) -> AbstractContextManager[Connection]:
        """A connection on which each statement is its own transaction, with the errors of
        :meth:`_tx`."""

    @abstractmethod
    def _query(self, sql: str, params: Any = ()) -> list[Any]:
        """Rows of one read (inside :meth:`snapshot`, as of its moment)."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _migrations_applied(self) -> bool:
        """Does the schema_migrations table exist yet?"""

    @abstractmethod
    def _lock_migrations(self, conn: Connection) -> None:
        """Keep two processes from upgrading at once."""

    @abstractmethod
    def erase_data_key(self, run_id: str, now: float) -> bool: ...

    def _notify(self, conn: Connection, run_id: str) -> None:
        """Wake workers waiting in :meth:`wait_for_work` (where the database can)."""
        return None

    def wait_for_work(self, timeout: float, stop: threading.Event) -> None:
        """Return when a run may have become runnable, when ``stop`` is set, or after
        ``timeout`` seconds. Without notifications: the timeout (a poll)."""
        stop.wait(timeout)

    @abstractmethod
    def send_signal(self, run_id: str, name: str, data: str, now: float) -> int: ...

    # -- migrations -----------------------------------------------------------------

    def schema_version(self) -> int:
        if not self._migrations_applied():
            return 0
        return int(self._query("SELECT MAX(version) FROM schema_migrations")[0][0] or 0)

    def pending_migrations(self) -> list[migrations.Migration]:
        current = self.schema_version()
        return [m for m in migrations.load(self.backend) if m.version > current]

    def migrate(self) -> list[migrations.Migration]:
        known = migrations.load(self.backend)
        if self.schema_version() == len(known):
            return []  # up to date: no write lock needed
        applied = []
        with self._tx() as conn:
            self._lock_migrations(conn)
            conn.execute(self.migrations_table_sql)
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if current > len(known):
                raise MigrationError(
                    f"database {self.location} is at schema version {current}, newer than this "
                    f"Baton knows ({len(known)}); upgrade Baton"
                )
            for migration in known[current:]:
                try:
                    for statement in migration.statements():
                        conn.execute(statement)
                except self.db_errors as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                    ) from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                applied.append(migration)
        return applied

    # -- journal --------------------------------------------------------------------

    def create_run(self, run: NewRun, first: Sequence[EncodedEvent], update: IndexUpdate) -> None:
        head = first[-1]
        status = (update.status or RunStatus.PENDING).value
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO runs (run_id, workflow, workflow_ref, status, created_at, "
                    "updated_at, anchor_seq, anchor_hash, principal, tenant) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run.run_id, run.workflow, run.workflow_ref, status, run.created_at,
                     run.created_at, head.seq, head.hash, run.principal, run.tenant),
                )
                self._insert(conn, first)
                self._insert_blobs(conn, update.blobs)
                if run.data_key is not None:
                    conn.execute("INSERT INTO data_keys (run_id, master_id, wrapped, created_at) VALUES (?, ?, ?, ?)",
                                 (run.run_id, run.data_key.master_id, run.data_key.wrapped, run.created_at))
                self._notify(conn, run.run_id)
        except self.integrity_errors as exc:
            raise AppendConflict(f"run {run.run_id} already exists", run_id=run.run_id) from exc

    def append(self, run_id: str, expected_head: int, rows: Sequence[EncodedEvent],
               update: IndexUpdate, now: float) -> None:
        if rows[0].seq != expected_head + 1:
            raise AppendConflict(
                f"append to run {run_id} must start at seq {expected_head + 1}, not {rows[0].seq}",
                run_id=run_id,
            )
        try:
            if update.status is None and not (update.consumed_signals or update.approvals or update.usage
                                              or update.blobs) and len(rows) <= _MAX_ROWS:
                # The common case, a step of a running run: one statement is one transaction.
                with self._autocommit() as conn:
                    self._insert(conn, rows)
                return
            with self._tx() as conn:
                self._apply(conn, run_id, rows, update, now)
                if update.status in (RunStatus.PENDING, RunStatus.RUNNING):  # runnable now: say so
                    self._notify(conn, run_id)
        except self.integrity_errors as exc:
            if self.get_run(run_id) is None:
                raise AppendConflict(f"run {run_id} does not exist", run_id=run_id) from exc
            raise AppendConflict(
                f"run {run_id} has moved past seq {expected_head}: another worker owns it now",
                run_id=run_id,
            ) from exc

    def _apply(self, conn: Connection, run_id: str, rows: Sequence[EncodedEvent], update: IndexUpdate,
               now: float) -> None:
        """The rows and everything the append changes besides, in the caller's transaction."""
        self._insert(conn, rows)
        self._insert_blobs(conn, update.blobs)
        if update.status is not None:
            head = rows[-1]
            conn.execute(
                "UPDATE runs SET anchor_seq = ?, anchor_hash = ?, updated_at = ?, status = ?, "
                "wake_at = ?, waiting_for = ?, outcome = ? WHERE run_id = ?",
                (head.seq, head.hash, now, update.status.value, update.wake_at,
                 update.waiting_for, update.outcome, run_id),
            )
        for signal_id in update.consumed_signals:
            consumed = conn.execute(
                "UPDATE signals SET consumed = 1 WHERE signal_id = ? AND run_id = ? AND consumed = 0",
                (signal_id, run_id),
            )
            if consumed.rowcount != 1:
                raise AppendConflict(f"signal {signal_id} of run {run_id} is already consumed", run_id=run_id)
        for event in update.approvals:
            apply_approval(conn, run_id, event, now)
        for used in update.usage:
            conn.execute(
                "INSERT INTO tool_usage (run_id, step_id, tenant, principal, tool, cost, at) "
                "SELECT run_id, ?, tenant, principal, ?, ?, ? FROM runs WHERE run_id = ? "
                "ON CONFLICT DO NOTHING",
                (used.step_id, used.tool, used.cost, now, run_id),
            )

    @staticmethod
    def _insert(conn: Connection, rows: Sequence[EncodedEvent]) -> None:
        """Insert journal rows, up to ``_MAX_ROWS`` per statement (a statement is atomic)."""
        for start in range(0, len(rows), _MAX_ROWS):
            chunk = rows[start : start + _MAX_ROWS]
            conn.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])

    @staticmethod
    def _insert_blobs(conn: Connection, blobs: dict[str, str]) -> None:
        if blobs:
            conn.executemany("INSERT INTO blobs (hash, data) VALUES (?, ?) ON CONFLICT DO NOTHING",
                             list(blobs.items()))

    def blob(self, digest: str) -> str:
        rows = self._query("SELECT data FROM blobs WHERE hash = ?", (digest,))
        if not rows:
            raise BlobMissing(f"the large value {digest[:12]}… that an event refers to is missing from {self.location}")
        return str(rows[0][0])

    def blob_bytes(self) -> int:
        return int(self._query(self.blob_size_sql)[0][0])

    def read(self, run_id: str, after_seq: int = 0) -> list[EncodedEvent]:
        rows = self._query(
            "SELECT run_id, seq, type, at, data, hash, codec FROM events "
            "WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after_seq),
        )
        return [EncodedEvent(*row) for row in rows]

    # -- the run index --------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE runs.run_id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def find_run(self, prefix: str, tenant: str | None = None) -> list[str]:
        # A range, not LIKE: exact (case-sensitive, no wildcards) on every backend, and indexed.
        scope = "" if tenant is None else "AND tenant = ? "
        rows = self._query(
            f"SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? {scope}ORDER BY run_id LIMIT 10",
            (prefix, prefix + "\U0010ffff", *(() if tenant is None else (tenant,))),
        )
        return [r[0] for r in rows]

    def list_runs(self, *, status: RunStatus | None = None, tenant: str | None = None,
                  limit: int = 50) -> list[RunRecord]:
        clauses, params = [], []
        for column, value in (("status", status.value if status else None), ("tenant", tenant)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        cur = self._query(f"SELECT {_RUN_COLUMNS} FROM {_RUNS} {where}ORDER BY created_at DESC LIMIT ?",
                          (*params, limit))
        return [_run(row) for row in cur]

    def all_run_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT run_id FROM runs ORDER BY created_at")]

    # -- leases ---------------------------------------------------------------------

    def claim(self, run_id: str, owner: str, now: float, lease_seconds: float,
              expected_owner: str | None = None) -> Taken | None:
        with self._tx() as conn:
            row = conn.execute(f"SELECT owner, lease_expires_at FROM runs WHERE run_id = ?{self.for_update}",
                               (run_id,)).fetchone()
            if row is None:
                return None
            holder, expires = row
            free = holder is None or holder == owner or (expires is not None and expires < now)
            if not (free or (expected_owner is not None and holder == expected_owner)):
                return None
            conn.execute("UPDATE runs SET owner = ?, lease_expires_at = ? WHERE run_id = ?",
                         (owner, now + lease_seconds, run_id))
            return Taken(None if holder == owner else holder)

    def runnable(self, now: float, limit: int = 10) -> list[RunRecord]:
        cur = self._query(
            f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE {_RUNNABLE} AND status NOT IN {_TERMINAL} "
            "AND (owner IS NULL OR lease_expires_at < :now) "
            "ORDER BY created_at LIMIT :limit",
            {"now": now, "limit": limit},
        )
        return [_run(row) for row in cur]

    def claim_runnable(self, owner: str, now: float, lease_seconds: float, limit: int,
                       exclude: Collection[str] = ()) -> list[tuple[str, str | None]]:
        # Our own lease counts as free: a run we could not let go of (the database was away)
        # and do not have in hand (``exclude``) is ours to go on with.
        # "status NOT IN" repeats what _RUNNABLE implies, in the words of the partial index
        # over unfinished runs, so that both databases use it.
        rows_sql = (f"SELECT run_id, owner FROM runs WHERE {_RUNNABLE} AND status NOT IN {_TERMINAL} "
                    "AND (owner IS NULL OR owner = :owner OR lease_expires_at < :now) ")
        params: dict[str, Any] = {"now": now, "limit": limit, "owner": owner}
        if exclude:
            names = [f"x{i}" for i in range(len(exclude))]
            rows_sql += f"AND run_id NOT IN ({', '.join(':' + n for n in names)}) "
            params.update(zip(names, exclude, strict=True))
        with self._tx() as conn:
            found = conn.execute(rows_sql + f"ORDER BY created_at LIMIT :limit{self.skip_locked}", params).fetchall()
            for run_id, _ in found:
                conn.execute("UPDATE runs SET owner = ?, lease_expires_at = ? WHERE run_id = ?",
                             (owner, now + lease_seconds, run_id))
        return [(run_id, None if holder in (None, owner) else holder) for run_id, holder in found]

    def owned_runs(self) -> list[RunRecord]:
        cur = self._query(
            f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE owner IS NOT NULL "
            f"AND status NOT IN {_TERMINAL}"
        )
        return [_run(row) for row in cur]

    def renew(self, owner: str, run_ids: Sequence[str], now: float,
              lease_seconds: float) -> dict[str, bool]:
        if not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        with self._tx() as conn:
            conn.execute(
                f"UPDATE runs SET lease_expires_at = ? WHERE owner = ? AND run_id IN ({marks})",
                (now + lease_seconds, owner, *run_ids),
            )
            cur = conn.execute(
                f"SELECT run_id, cancel_requested FROM runs WHERE owner = ? AND run_id IN ({marks})",
                (owner, *run_ids),
            )
            return {r[0]: bool(r[1]) for r in cur}

    def release(self, run_id: str, owner: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET owner = NULL, lease_expires_at = NULL, "
                "anchor_seq = COALESCE((SELECT seq FROM events WHERE run_id = :run "
                "  ORDER BY seq DESC LIMIT 1), anchor_seq), "
                "anchor_hash = COALESCE((SELECT hash FROM events WHERE run_id = :run "
                "  ORDER BY seq DESC LIMIT 1), anchor_hash) "
                "WHERE run_id = :run AND owner = :owner",
                {"run": run_id, "owner": owner},
            )

    # -- governance -----------------------------------------------------------------

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        rows = self._query(f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = ?", (approval_id,))
        return approval_record(rows[0]) if rows else None

    def find_approval(self, prefix: str, tenant: str | None = None) -> list[str]:
        scope = "" if tenant is None else "AND tenant = ? "
        rows = self._query(
            f"SELECT approval_id FROM approvals WHERE approval_id >= ? AND approval_id < ? {scope}"
            "ORDER BY approval_id LIMIT 10",
            (prefix, prefix + "\U0010ffff", *(() if tenant is None else (tenant,))),
        )
        return [r[0] for r in rows]

    def list_approvals(self, *, status: str | None = "pending", tenant: str | None = None,
                       run_id: str | None = None, limit: int = 100) -> list[ApprovalRecord]:
        clauses, params = [], []
        for column, value in (("status", status), ("tenant", tenant), ("run_id", run_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT {APPROVAL_COLUMNS} FROM approvals {where} ORDER BY created_at LIMIT ?", (*params, limit)
        )
        return [approval_record(row) for row in rows]

    def mark_notified(self, approval_id: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE approvals SET notified_at = ? WHERE approval_id = ?", (now, approval_id))

    def unnotified(self, created_before: float, limit: int = 20) -> list[tuple[str, ev.ApprovalRequested]]:
        rows = self._query(
            "SELECT run_id, request, approvers, expires_at FROM approvals "
            "WHERE notified_at IS NULL AND status = 'pending' AND created_at < ? ORDER BY created_at LIMIT ?",
            (created_before, limit),
        )
        found = []
        for run_id, request, approvers, expires_at in rows:
            event = ev.ApprovalRequested.model_validate_json(request)  # as asked, with any escalation
            found.append((run_id, event.model_copy(update={"approvers": json.loads(approvers),
                                                            "expires_at": expires_at})))
        return found

    def tool_usage(self, tenant: str | None, principal: str | None, tool: str, since: float) -> tuple[int, float]:
        """How many calls of ``tool`` completed for ``principal`` since ``since``, and their cost."""
        if tenant is None or principal is None:
            return 0, 0.0  # calls are counted per principal: a run without one has no history
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM tool_usage "
            "WHERE tenant = ? AND principal = ? AND tool = ? AND at >= ?",
            (tenant, principal, tool, since),
        )[0]
        return int(row[0]), float(row[1])

    # -- audit ----------------------------------------------------------------------

    def run_heads(self) -> dict[str, tuple[int, str]]:
        rows = self._query(
            "SELECT e.run_id, e.seq, e.hash FROM events AS e "
            "WHERE e.seq = (SELECT MAX(seq) FROM events AS m WHERE m.run_id = e.run_id)"
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def event_bounds(self) -> dict[str, tuple[int, int]]:
        rows = self._query("SELECT run_id, MIN(seq), MAX(seq) FROM events GROUP BY run_id")
        return {r[0]: (r[1], r[2]) for r in rows}

    def checkpointed_heads(self) -> dict[str, tuple[int, int]]:
        return {r[0]: (r[1], r[2]) for r in self._query("SELECT run_id, seq, checkpoint FROM checkpoint_heads")}

    def last_checkpoint(self) -> Checkpoint | None:
        rows = self._query("SELECT seq, body, hash, signature FROM checkpoints ORDER BY seq DESC LIMIT 1")
        return Checkpoint(*rows[0]) if rows else None

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(*r) for r in self._query("SELECT seq, body, hash, signature FROM checkpoints ORDER BY seq")]

    def add_checkpoint(self, checkpoint: Checkpoint, now: float) -> None:
        try:
            with self._tx() as conn:
                conn.execute("INSERT INTO checkpoints (seq, created_at, body, hash, signature) VALUES (?, ?, ?, ?, ?)",
                             (checkpoint.seq, now, checkpoint.body, checkpoint.hash, checkpoint.signature))
                conn.executemany(
                    "INSERT INTO checkpoint_heads (run_id, seq, hash, checkpoint) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                    "checkpoint = excluded.checkpoint",
                    [(run_id, seq, head, checkpoint.seq) for run_id, seq, head in checkpoint.heads],
                )
        except self.integrity_errors as exc:
            raise AppendConflict(f"checkpoint {checkpoint.seq} was written by another process") from exc

    # -- retention --------------------------------------------------------------------

    def finished_runs(self, before: float, limit: int = 100_000) -> list[RunRecord]:
        cur = self._query(
            f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE status IN {_TERMINAL} AND updated_at < ? "
            "ORDER BY updated_at LIMIT ?",
            (before, limit),
        )
        return [_run(row) for row in cur]

    def _lock_blobs(self, conn: Connection) -> None:
        """Keep appends from adding or reusing blobs while unused ones are found and deleted
        (SQLite's transactions already admit one writer)."""
        return None

    def prune(self, runs: Sequence[RunRecord], archive: str, now: float) -> int:
        with self._tx() as conn:
            self._lock_blobs(conn)
            for run in runs:
                # Locked, so that no append (whose journal row refers to the run) lands after
                # the head is checked and is then deleted unarchived.
                conn.execute(f"SELECT 1 FROM runs WHERE run_id = ?{self.for_update}", (run.run_id,))
                head = conn.execute("SELECT seq, hash FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
                                    (run.run_id,)).fetchone()
                if head is None or (head[0], head[1]) != (run.head_seq, run.head_hash):
                    raise AppendConflict(f"run {run.run_id} changed while it was being archived", run_id=run.run_id)
                conn.execute("INSERT INTO pruned_runs (run_id, head_seq, head_hash, archive, pruned_at) "
                             "VALUES (?, ?, ?, ?, ?)", (run.run_id, head[0], head[1], archive, now))
                for table in ("events", "signals", "approvals", "tool_usage"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run.run_id,))
                conn.execute("DELETE FROM runs WHERE run_id = ?", (run.run_id,))
            referenced: set[str] = set()
            pending = [ref for (data,) in conn.execute("SELECT data FROM events WHERE codec = ?", (BLOB_CODEC,))
                       for ref in references(json.loads(data))]
            while pending:
                digest = pending.pop()
                if digest not in referenced:
                    referenced.add(digest)
                    row = conn.execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
                    if row is not None:
                        pending.extend(references(json.loads(row[0])))
            unused = [h for (h,) in conn.execute("SELECT hash FROM blobs") if h not in referenced]
            conn.executemany("DELETE FROM blobs WHERE hash = ?", [(h,) for h in unused])
            return len(unused)

    def pruned_runs(self) -> dict[str, tuple[int, str, str]]:
        rows = self._query("SELECT run_id, head_seq, head_hash, archive FROM pruned_runs")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    # -- data keys ------------------------------------------------------------------

    def data_key(self, run_id: str) -> StoredKey | None:
        rows = self._query("SELECT master_id, wrapped, created_at, erased_at FROM data_keys WHERE run_id = ?",
                           (run_id,))
        if not rows:
            return None
        master_id, wrapped, created_at, erased_at = rows[0]
        key = WrappedKey(master_id, bytes(wrapped)) if wrapped is not None else None
        return StoredKey(key, created_at, erased_at)

    def shared_master_key(self, new: str) -> str:
        with self._tx() as conn:
            conn.execute("INSERT INTO master_key (id, secret) VALUES (1, ?) ON CONFLICT DO NOTHING", (new,))
            return str(conn.execute("SELECT secret FROM master_key WHERE id = 1").fetchone()[0])

    def master_key_ids(self) -> set[str]:
        return {row[0] for row in self._query("SELECT DISTINCT master_id FROM data_keys WHERE wrapped IS NOT NULL")}

    def add_data_key(self, run_id: str, key: WrappedKey, now: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO data_keys (run_id, master_id, wrapped, created_at) "
                         "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (run_id, key.master_id, key.wrapped, now))

    # -- inbox ----------------------------------------------------------------------

    def pending_signals(self, run_id: str) -> list[Signal]:
        cur = self._query(
            "SELECT signal_id, run_id, name, data, sent_at FROM signals "
            "WHERE run_id = ? AND consumed = 0 ORDER BY signal_id",
            (run_id,),
        )
        return [Signal(*row) for row in cur]

    def request_cancel(self, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
            self._notify(conn, run_id)
