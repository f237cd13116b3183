"""The storage interface. Two implementations (SQLite now, PostgreSQL to scale) pass one
contract suite (``tests/store/test_contract.py``).

The store is deliberately dumb: it keeps journal rows it is given, enforces that each
append lands exactly at the head it expects (the fencing token), keeps a derived index of
runs for finding runnable work, leases runs to workers, and holds an inbox of signals and
cancellation requests sent from outside. Encoding, hashing and folding events live above it.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ..approvals import ApprovalRecord
from ..audit.checkpoints import Checkpoint
from ..journal import EncodedEvent, IndexUpdate, RunStatus
from ..journal import events as ev
from ..memory.entries import MemoryEntry, NewMemory
from ..sensitive.keys import WrappedKey


@dataclass(frozen=True, slots=True)
class NewRun:
    run_id: str
    workflow: str
    workflow_ref: str
    created_at: float
    principal: str | None = None
    tenant: str | None = None
    data_key: WrappedKey | None = None
    """The run's data key, wrapped: stored with the run, atomically."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A run's data key as the store holds it: ``key`` is ``None`` once erased."""

    key: WrappedKey | None
    created_at: float
    erased_at: float | None


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    workflow: str
    workflow_ref: str
    status: RunStatus
    created_at: float
    updated_at: float
    head_seq: int
    """The journal's last ``seq`` (0 if empty), read from the journal itself."""
    head_hash: str
    anchor_seq: int
    """The head as recorded in the index at the run's last status change or lease release:
    the journal must still reach it with ``anchor_hash`` (``baton audit verify``)."""
    anchor_hash: str
    principal: str | None
    tenant: str | None
    wake_at: float | None
    waiting_for: str | None
    outcome: str | None
    owner: str | None
    lease_expires_at: float | None
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Taken:
    """A lease we now hold, and who held it before (``None``: nobody, or we did)."""

    previous_owner: str | None


@dataclass(frozen=True, slots=True)
class Signal:
    signal_id: int
    run_id: str
    name: str
    data: str
    sent_at: float


class Store(Protocol):
    """What the engine needs from a database. All methods are safe to call from many
    threads and processes at once."""

    def create_run(self, run: NewRun, first: Sequence[EncodedEvent], update: IndexUpdate) -> None:
        """Insert the run and its first events atomically. Raises ``AppendConflict`` if the
        run id exists."""
        ...

    def append(
        self,
        run_id: str,
        expected_head: int,
        rows: Sequence[EncodedEvent],
        update: IndexUpdate,
        now: float,
    ) -> None:
        """Append ``rows`` (whose first ``seq`` is ``expected_head + 1``) in one transaction,
        with the index update; if the update changes the status, the anchor moves to the new
        head. Raises ``AppendConflict`` if any of those ``seq`` exist: the head moved."""
        ...

    def read(self, run_id: str, after_seq: int = 0) -> list[EncodedEvent]: ...

    def snapshot(self) -> AbstractContextManager[None]:
        """A context in which this thread's reads all see one consistent moment."""
        ...

    def blob(self, digest: str) -> str:
        """A stored large value's canonical JSON, by its hash. Raises ``KeyError`` if missing."""
        ...

    def blob_bytes(self) -> int:
        """How many bytes the blob table holds."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def find_run(self, prefix: str, tenant: str | None = None) -> list[str]:
        """Run ids starting with ``prefix`` (so people can type short ids); only ``tenant``'s,
        if given."""
        ...

    def list_runs(self, *, status: RunStatus | None = None, tenant: str | None = None,
                  limit: int = 50) -> list[RunRecord]:
        """Runs, newest first; only ``tenant``'s, if given."""
        ...

    def all_run_ids(self) -> list[str]: ...

    # -- leases ---------------------------------------------------------------------

    def claim(self, run_id: str, owner: str, now: float, lease_seconds: float,
              expected_owner: str | None = None) -> Taken | None:
        """Atomically take the lease on ``run_id`` if it is free, expired, already ours, or
        held by ``expected_owner`` (a holder the caller has proven dead). ``None`` if not."""
        ...

    def runnable(self, now: float, limit: int = 10) -> list[RunRecord]:
        """Runs that a worker could claim now, lease permitting (including ones whose owner
        may be dead: the caller checks)."""
        ...

    def claim_runnable(self, owner: str, now: float, lease_seconds: float, limit: int,
                       exclude: Collection[str] = ()) -> list[tuple[str, str | None]]:
        """Atomically take the lease on up to ``limit`` runnable runs that nobody else holds
        (or whose lease ran out), oldest first, except ``exclude`` (the runs in hand), passing
        over those another worker is claiming at the same moment. Returns each run id with
        the owner whose lease expired, if any."""
        ...

    def wait_for_work(self, timeout: float, stop: threading.Event) -> None:
        """Return when a run may have become runnable, when ``stop`` is set, or after
        ``timeout`` seconds, whichever is first (a store without notifications polls)."""
        ...

    def owned_runs(self) -> list[RunRecord]:
        """Non-terminal runs whose lease is held, for spotting dead owners."""
        ...

    def renew(
        self, owner: str, run_ids: Sequence[str], now: float, lease_seconds: float
    ) -> dict[str, bool]:
        """Extend our leases. Returns the runs we still hold, each with whether someone has
        asked to cancel it."""
        ...

    def release(self, run_id: str, owner: str) -> None:
        """Give up our lease, and anchor the run at its current head."""
        ...

    # -- governance -------------------------------------------------------------------

    def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...

    def find_approval(self, prefix: str, tenant: str | None = None) -> list[str]:
        """Approval ids starting with ``prefix`` (only ``tenant``'s, if given)."""
        ...

    def list_approvals(self, *, status: str | None = "pending", tenant: str | None = None,
                       run_id: str | None = None, limit: int = 100) -> list[ApprovalRecord]:
        """Approval requests, oldest first (``status=None``: any status)."""
        ...

    def mark_notified(self, approval_id: str, now: float) -> None:
        """The request's notification got through."""
        ...

    def unnotified(self, created_before: float, limit: int = 20) -> list[tuple[str, ev.ApprovalRequested]]:
        """Pending requests made before ``created_before`` whose notification did not get
        through (run id, request as it stands now), oldest first."""
        ...

    def tool_usage(self, tenant: str | None, principal: str | None, tool: str, since: float) -> tuple[int, float]:
        """(count, total cost) of ``tool``'s completed calls for ``principal`` since ``since``."""
        ...

    # -- audit ----------------------------------------------------------------------

    def run_heads(self) -> dict[str, tuple[int, str]]:
        """Every run's journal head: run id → (seq, hash)."""
        ...

    def event_bounds(self) -> dict[str, tuple[int, int]]:
        """For every run id in the journal table (known to the index or not): its lowest and
        highest ``seq``. The audit uses it to find rows no run's chain would reach."""
        ...

    def checkpointed_heads(self) -> dict[str, tuple[int, int]]:
        """For each run, the head ``seq`` in the latest checkpoint that covered it, and that
        checkpoint's ``seq`` (an index: what changed since, and what verify expects to find)."""
        ...

    def last_checkpoint(self) -> Checkpoint | None: ...

    def checkpoints(self) -> list[Checkpoint]:
        """All checkpoints, oldest first."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint, now: float) -> None:
        """Store a checkpoint and index the heads it covers, atomically. Raises
        ``AppendConflict`` if a checkpoint with its ``seq`` exists."""
        ...

    # -- retention --------------------------------------------------------------------

    def finished_runs(self, before: float, limit: int = 100_000) -> list[RunRecord]:
        """Completed, failed or cancelled runs that last changed before ``before``."""
        ...

    def prune(self, runs: Sequence[RunRecord], archive: str, now: float) -> int:
        """Remove these runs (their events, index rows, signals, approvals and usage) in one
        transaction, recording each one's head and ``archive``; then the blobs no remaining
        event refers to. Raises ``AppendConflict`` if a run's head moved. Returns the number
        of blobs removed."""
        ...

    def pruned_runs(self) -> dict[str, tuple[int, str, str]]:
        """Pruned runs: run id → (head seq, head hash, archive)."""
        ...

    # -- data keys ------------------------------------------------------------------

    def data_key(self, run_id: str) -> StoredKey | None: ...

    def shared_master_key(self, new: str) -> str:
        """The master key kept in the database (base64), storing ``new`` if there is none."""
        ...

    def master_key_ids(self) -> set[str]:
        """The ids of the master keys that wrapped the data keys held."""
        ...

    def add_data_key(self, run_id: str, key: WrappedKey, now: float) -> None:
        """Give a run that has none a data key (a run older than data keys); a no-op if it
        has one, or had one."""
        ...

    def erase_data_key(self, run_id: str, now: float) -> bool:
        """Destroy the run's data key so that no copy of it is left in the database files
        (in SQLite: overwritten, and the write-ahead log emptied). ``False`` if there was
        none left to erase."""
        ...

    # -- long-term memory --------------------------------------------------------------

    def remember(self, entry: NewMemory) -> int:
        """Store an entry and return its id. An entry of a run is keyed by its
        ``(run_id, step_id)``: storing it again stores nothing and returns the first one's id."""
        ...

    def search_memory(self, tenant: str | None, namespace: str, query: str, limit: int = 10) -> list[MemoryEntry]:
        """Full-text search of one tenant's namespace, best first, each with its ``score``.
        ``query`` is a person's words: any text is accepted (``[]`` if it has no words)."""
        ...

    def memories(self, tenant: str | None, namespace: str | None = None, *, run_id: str | None = None,
                 limit: int = 100) -> list[MemoryEntry]:
        """A tenant's entries (in ``namespace``, or written by ``run_id``, if given), newest
        first, with their embeddings."""
        ...

    def forget_memory(self, tenant: str | None, memory_id: int) -> bool:
        """Delete one of the tenant's entries; ``False`` if it had none with that id."""
        ...

    def forget_namespace(self, tenant: str | None, namespace: str) -> int:
        """Delete every entry of a tenant's namespace; returns how many."""
        ...

    def forget_run_memories(self, run_id: str) -> int:
        """Delete every entry a run wrote, leaving no copy of their words in the search
        index (in SQLite, deleted text is overwritten; the write-ahead log keeps the old pages
        until it is checkpointed, as :meth:`erase_data_key` does); returns how many."""
        ...

    # -- inbox ----------------------------------------------------------------------

    def send_signal(self, run_id: str, name: str, data: str, now: float) -> int: ...

    def pending_signals(self, run_id: str) -> list[Signal]: ...

    def request_cancel(self, run_id: str) -> None: ...

    def close(self) -> None: ...
