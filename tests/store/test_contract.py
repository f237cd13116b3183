"""The storage contract: what every :class:`~baton.store.base.Store` implementation must do.

Each test runs against every backend listed in ``conftest.BACKENDS``. Nothing here may
depend on how a backend stores things: tests go through the ``Store`` interface, except
for the migration tests, which read the portable ``schema_migrations`` table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.errors import AppendConflict, MigrationError, StoreError
from baton.journal import (
    GENESIS_HASH,
    EncodedEvent,
    IndexUpdate,
    RunStatus,
    encode_batch,
    index_update,
    verify_chain,
)
from baton.journal import events as ev
from baton.memory import MemoryEntry, NewMemory
from baton.store import NewRun, RunRecord, Signal, Store

if TYPE_CHECKING:
    from conftest import Backend, MigratingStore

T0 = 1_800_000_000.0
LEASE = 30.0


# -- helpers ----------------------------------------------------------------------------



def rows_replace(row: EncodedEvent, **changes: object) -> EncodedEvent:
    return row._replace(**changes)  # type: ignore[arg-type]

def started(workflow: str = "w") -> ev.RunStarted:
    return ev.RunStarted(workflow=workflow, workflow_ref=f"m:{workflow}", input={"n": 1})


def step(step_id: int, tag: str = "") -> list[ev.Event]:
    return [
        ev.StepStarted(
            step_id=step_id, kind="call", name=f"tool{tag}", args={"i": step_id, "tag": tag},
            idempotency_key=f"k{step_id}", idempotent=True,
        ),
        ev.StepCompleted(step_id=step_id, result={"i": step_id, "tag": tag}),
    ]


def create(
    store: Store,
    run_id: str,
    *,
    created_at: float = T0,
    workflow: str = "w",
    principal: str | None = None,
    tenant: str | None = None,
    extra: Sequence[ev.Event] = (),
) -> list[EncodedEvent]:
    events: list[ev.Event] = [started(workflow), *extra]
    rows = encode_batch(run_id, 0, GENESIS_HASH, events, at=created_at)
    store.create_run(
        NewRun(run_id, workflow, f"m:{workflow}", created_at, principal, tenant),
        rows,
        index_update(events),
    )
    return rows


def advance(store: Store, run_id: str, events: Sequence[ev.Event], now: float,
            update: IndexUpdate | None = None) -> list[EncodedEvent]:
    """Append ``events`` at the run's current head, with their index update (or ``update``)."""
    record = store.get_run(run_id)
    assert record is not None
    rows = encode_batch(run_id, record.head_seq, record.head_hash, events, at=now)
    store.append(run_id, record.head_seq, rows, index_update(list(events)) if update is None else update, now)
    return rows


def record_of(store: Store, run_id: str) -> RunRecord:
    record = store.get_run(run_id)
    assert record is not None, run_id
    return record


def index_fields(record: RunRecord) -> tuple[RunStatus, float | None, str | None, str | None]:
    return record.status, record.wake_at, record.waiting_for, record.outcome


def runnable_ids(store: Store, now: float) -> set[str]:
    return {r.run_id for r in store.runnable(now, limit=1000)}


# -- creating and reading runs -----------------------------------------------------------


def test_create_run_then_read_returns_the_rows_exactly(store: Store) -> None:
    rows = create(store, "r1", extra=step(1))
    assert len(rows) == 3
    assert store.read("r1") == rows
    assert [type(r) for r in store.read("r1")] == [EncodedEvent] * 3


def test_create_run_records_every_field(store: Store) -> None:
    rows = create(store, "r1", created_at=T0 + 0.25, workflow="refund", principal="ana", tenant="acme")
    assert store.get_run("r1") == RunRecord(
        run_id="r1", workflow="refund", workflow_ref="m:refund", status=RunStatus.PENDING,
        created_at=T0 + 0.25, updated_at=T0 + 0.25, head_seq=1, head_hash=rows[-1].hash,
        anchor_seq=1, anchor_hash=rows[-1].hash, principal="ana", tenant="acme", wake_at=None,
        waiting_for=None, outcome=None, owner=None, lease_expires_at=None, cancel_requested=False,
    )


def test_unknown_run_reads_as_nothing(store: Store) -> None:
    assert store.get_run("nope") is None
    assert store.read("nope") == []
    assert store.all_run_ids() == []


def test_duplicate_run_id_raises_append_conflict_and_changes_nothing(store: Store) -> None:
    rows = create(store, "r1", workflow="first")
    before = store.get_run("r1")
    with pytest.raises(AppendConflict):
        create(store, "r1", workflow="second", created_at=T0 + 5, extra=step(1))
    assert store.get_run("r1") == before
    assert store.read("r1") == rows
    assert store.all_run_ids() == ["r1"]


def test_all_run_ids(store: Store) -> None:
    for i in range(3):
        create(store, f"r{i}", created_at=T0 + i)
    assert sorted(store.all_run_ids()) == ["r0", "r1", "r2"]


# -- appending ---------------------------------------------------------------------------


def test_append_at_the_head(store: Store) -> None:
    first = create(store, "r1")
    more = advance(store, "r1", step(1), now=T0 + 1)
    assert [r.seq for r in more] == [2, 3]
    assert store.read("r1") == first + more
    record = record_of(store, "r1")
    assert (record.head_seq, record.head_hash, record.updated_at) == (3, more[-1].hash, T0 + 1)
    assert record.created_at == T0
    assert verify_chain(store.read("r1")) is None


def test_append_at_a_stale_head_raises_and_writes_nothing(store: Store) -> None:
    create(store, "r1")
    head = record_of(store, "r1")
    advance(store, "r1", step(1), now=T0 + 1)
    signal_id = store.send_signal("r1", "go", "1", now=T0 + 1)
    before_rows, before_record = store.read("r1"), store.get_run("r1")

    stale = encode_batch("r1", head.head_seq, head.head_hash, [ev.RunCompleted(result=1)], at=T0 + 2)
    update = index_update([ev.RunCompleted(result=1)])
    update.consumed_signals.append(signal_id)
    with pytest.raises(AppendConflict):
        store.append("r1", head.head_seq, stale, update, T0 + 2)

    assert store.read("r1") == before_rows
    assert store.get_run("r1") == before_record
    assert [s.signal_id for s in store.pending_signals("r1")] == [signal_id]


@pytest.mark.parametrize("offset", [-1, 0, 2, 5])
def test_append_must_start_right_after_the_expected_head(store: Store, offset: int) -> None:
    rows = create(store, "r1", extra=step(1))  # head is 3
    misplaced = encode_batch("r1", 3 + offset - 1, rows[-1].hash, step(2), at=T0 + 1)
    assert misplaced[0].seq == 3 + offset != 4
    with pytest.raises(AppendConflict):
        store.append("r1", 3, misplaced, index_update(step(2)), T0 + 1)
    assert store.read("r1") == rows
    assert record_of(store, "r1").head_seq == 3


def test_append_to_an_unknown_run_raises_append_conflict(store: Store) -> None:
    rows = encode_batch("ghost", 1, "a" * 64, step(1), at=T0)
    with pytest.raises(AppendConflict):
        store.append("ghost", 1, rows, IndexUpdate(), T0)
    assert store.read("ghost") == []
    assert store.get_run("ghost") is None


def _batch_that_fails_midway(store: Store) -> tuple[list[EncodedEvent], IndexUpdate, int]:
    """A run waiting for a signal, and a batch whose last row repeats a ``seq`` of the batch,
    so that the store can only find out it is bad after writing the first rows."""
    create(store, "r1")
    advance(store, "r1", [ev.SignalAwaited(step_id=1, name="go")], now=T0 + 1)
    signal_id = store.send_signal("r1", "go", '"x"', now=T0 + 2)
    record = record_of(store, "r1")
    events: list[ev.Event] = [
        ev.SignalReceived(step_id=1, name="go", data="x", signal_id=signal_id),
        *step(2),
        ev.RunCompleted(result="done"),
    ]
    rows = encode_batch("r1", record.head_seq, record.head_hash, events, at=T0 + 3)
    rows[-1] = rows_replace(rows[-1], seq=rows[-2].seq)
    return rows, index_update(events), signal_id


def test_a_batch_append_is_atomic(store: Store) -> None:
    rows, update, signal_id = _batch_that_fails_midway(store)
    before_rows, before_record = store.read("r1"), record_of(store, "r1")
    with pytest.raises(Exception):  # noqa: B017 - which error is pinned by the next test
        store.append("r1", before_record.head_seq, rows, update, T0 + 3)
    assert store.read("r1") == before_rows
    assert store.get_run("r1") == before_record
    assert record_of(store, "r1").status is RunStatus.WAITING
    assert [s.signal_id for s in store.pending_signals("r1")] == [signal_id]


def test_a_batch_the_store_cannot_write_raises_store_error(store: Store) -> None:
    """Every error Baton raises is a BatonError (``baton.errors``); a backend's own
    exception must not escape the store, or callers would need one ``except`` per backend."""
    rows, update, _ = _batch_that_fails_midway(store)
    with pytest.raises(StoreError):
        store.append("r1", rows[0].seq - 1, rows, update, T0 + 3)


def test_read_after_seq_returns_only_later_rows_in_order(store: Store) -> None:
    rows = create(store, "r1")
    for i in range(1, 4):
        rows += advance(store, "r1", step(i), now=T0 + i)
    assert len(rows) == 7
    for after in range(0, 9):
        assert store.read("r1", after_seq=after) == rows[after:]


def test_read_keeps_runs_apart(store: Store) -> None:
    a, b = create(store, "a"), create(store, "b", created_at=T0 + 1)
    for i in range(1, 4):
        a += advance(store, "a", step(i, "a"), now=T0 + i)
        b += advance(store, "b", step(i, "b"), now=T0 + i)
    assert store.read("a") == a
    assert store.read("b") == b
    assert [r.seq for r in store.read("b", after_seq=2)] == [3, 4, 5, 6, 7]


# -- the run index -----------------------------------------------------------------------

FAILED = ev.RunFailed(error=ev.ErrorInfo(type="ValueError", message="bad amount"))

TRANSITIONS: list[tuple[list[ev.Event], tuple[RunStatus, float | None, str | None, str | None]]] = [
    # a takeover leaves the status as it was (a sleeping run taken over is still asleep)
    ([ev.RunRecovered(worker="w1", previous_owner=None, reason="start")],
     (RunStatus.PENDING, None, None, None)),
    (step(1), (RunStatus.RUNNING, None, None, None)),
    ([ev.TimerSet(step_id=2, fire_at=T0 + 100)], (RunStatus.SLEEPING, T0 + 100, None, None)),
    ([ev.TimerFired(step_id=2)], (RunStatus.RUNNING, None, None, None)),
    ([ev.SignalAwaited(step_id=3, name="approve", timeout_at=T0 + 500)],
     (RunStatus.WAITING, T0 + 500, "approve", None)),
    ([ev.SignalReceived(step_id=3, name="approve", data=True)], (RunStatus.RUNNING, None, None, None)),
    ([ev.SignalAwaited(step_id=4, name="again")], (RunStatus.WAITING, None, "again", None)),
    ([ev.SignalReceived(step_id=4, name="again", data=None), *step(5)],
     (RunStatus.RUNNING, None, None, None)),
    ([ev.NeedsAttention(step_id=6, reason="refund 6 is in doubt")],
     (RunStatus.NEEDS_ATTENTION, None, None, "refund 6 is in doubt")),
    ([ev.StepResolved(step_id=6, applied=True, result=1, by="ana")],
     (RunStatus.RUNNING, None, None, None)),
]

ENDINGS: list[tuple[ev.Event, RunStatus, str]] = [
    (ev.RunCompleted(result={"ok": True, "amount": 12.5}), RunStatus.COMPLETED,
     '{"amount":12.5,"ok":true}'),
    (FAILED, RunStatus.FAILED, "bad amount"),
    (ev.RunCancelled(reason="asked to"), RunStatus.CANCELLED, "asked to"),
]


@pytest.mark.parametrize(("ending", "status", "outcome"), ENDINGS, ids=[s.value for _, s, _ in ENDINGS])
def test_get_run_follows_the_head_and_the_index_update(
    store: Store, ending: ev.Event, status: RunStatus, outcome: str
) -> None:
    create(store, "r1")
    assert index_fields(record_of(store, "r1")) == (RunStatus.PENDING, None, None, None)
    script = [*TRANSITIONS, ([ending], (status, None, None, outcome))]
    for i, (events, expected) in enumerate(script, start=1):
        rows = advance(store, "r1", events, now=T0 + i)
        record = record_of(store, "r1")
        assert index_fields(record) == expected, events
        assert (record.head_seq, record.head_hash) == (rows[-1].seq, rows[-1].hash)
        update = index_update(events)
        if update.status is not None:  # the index row is written only when the status changes
            assert record.updated_at == T0 + i
            assert (update.status, update.wake_at, update.waiting_for, update.outcome) == expected
    assert verify_chain(store.read("r1")) is None


def test_an_update_without_a_status_leaves_the_index_alone(store: Store) -> None:
    """``None`` fields of an ``IndexUpdate`` are left as they are."""
    create(store, "r1")
    advance(store, "r1", [ev.SignalAwaited(step_id=1, name="go", timeout_at=T0 + 9)], now=T0 + 1)
    record = record_of(store, "r1")
    rows = encode_batch("r1", record.head_seq, record.head_hash, step(2), at=T0 + 2)
    store.append("r1", record.head_seq, rows, IndexUpdate(), T0 + 2)
    record = record_of(store, "r1")
    assert index_fields(record) == (RunStatus.WAITING, T0 + 9, "go", None)
    assert (record.head_seq, record.head_hash) == (4, rows[-1].hash)
    # The index row itself (and its anchor) moves only when the status does.
    assert (record.anchor_seq, record.updated_at) == (2, T0 + 1)


def test_a_status_change_anchors_the_run_at_its_new_head(store: Store) -> None:
    create(store, "r1")
    advance(store, "r1", step(1), now=T0 + 1, update=IndexUpdate())
    assert record_of(store, "r1").anchor_seq == 1
    advance(store, "r1", [ev.TimerSet(step_id=2, fire_at=T0 + 60)], now=T0 + 2)
    record = record_of(store, "r1")
    assert record.head_seq == 4
    assert (record.anchor_seq, record.anchor_hash) == (record.head_seq, record.head_hash)


def test_releasing_a_lease_anchors_the_run_at_its_head(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "w1", T0, 30.0)
    advance(store, "r1", step(1), now=T0 + 1, update=IndexUpdate())
    assert record_of(store, "r1").anchor_seq == 1
    store.release("r1", "someone-else")  # not the owner: changes nothing
    assert record_of(store, "r1").anchor_seq == 1
    store.release("r1", "w1")
    record = record_of(store, "r1")
    assert (record.anchor_seq, record.anchor_hash) == (3, record.head_hash)
    assert record.owner is None


# -- listing and finding runs -------------------------------------------------------------


def _five_runs(store: Store) -> None:
    # created in a shuffled order so that insertion order cannot pass for recency
    for i in (2, 0, 4, 1, 3):
        create(store, f"r{i}", created_at=T0 + i)
    advance(store, "r1", [ev.RunCompleted(result=None)], now=T0 + 10)
    advance(store, "r3", [ev.RunCompleted(result=None)], now=T0 + 10)
    advance(store, "r2", [ev.TimerSet(step_id=1, fire_at=T0 + 50)], now=T0 + 10)


def test_list_runs_newest_first(store: Store) -> None:
    _five_runs(store)
    assert [r.run_id for r in store.list_runs()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["r4", "r3"]
    assert store.list_runs()[2] == store.get_run("r2")


def test_list_runs_by_status(store: Store) -> None:
    _five_runs(store)
    assert [r.run_id for r in store.list_runs(status=RunStatus.COMPLETED)] == ["r3", "r1"]
    assert [r.run_id for r in store.list_runs(status=RunStatus.COMPLETED, limit=1)] == ["r3"]
    assert [r.run_id for r in store.list_runs(status=RunStatus.PENDING)] == ["r4", "r0"]
    assert [r.run_id for r in store.list_runs(status=RunStatus.SLEEPING)] == ["r2"]
    assert store.list_runs(status=RunStatus.FAILED) == []


def test_runs_are_listed_and_found_per_tenant(store: Store) -> None:
    """A tenant's view never includes another tenant's runs, by listing or by prefix."""
    for i, (run_id, tenant) in enumerate([("a1", "acme"), ("a2", "other"), ("a3", "acme"), ("a4", None)]):
        create(store, run_id, created_at=T0 + i, principal="p", tenant=tenant)
    advance(store, "a3", [ev.RunCompleted(result=None)], now=T0 + 10)
    assert [r.run_id for r in store.list_runs(tenant="acme")] == ["a3", "a1"]
    assert [r.run_id for r in store.list_runs(tenant="other")] == ["a2"]
    assert [r.run_id for r in store.list_runs(tenant="acme", status=RunStatus.PENDING)] == ["a1"]
    assert store.list_runs(tenant="nobody") == []
    assert sorted(store.find_run("a", tenant="acme")) == ["a1", "a3"]
    assert store.find_run("a2", tenant="acme") == []
    assert sorted(store.find_run("a")) == ["a1", "a2", "a3", "a4"]


def test_find_run_by_prefix(store: Store) -> None:
    for i, run_id in enumerate(["abc1", "abc2", "abd1", "xyz", "zabc"]):
        create(store, run_id, created_at=T0 + i)
    assert sorted(store.find_run("ab")) == ["abc1", "abc2", "abd1"]
    assert sorted(store.find_run("abc")) == ["abc1", "abc2"]
    assert store.find_run("abc2") == ["abc2"]
    assert store.find_run("abc22") == []
    assert store.find_run("q") == []


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("a_", ["a_1"]), ("a%", ["a%1"]), ("%", []), ("_", []), ("a\\", ["a\\1"]), ("a%1", ["a%1"])],
)
def test_find_run_takes_wildcards_literally(store: Store, prefix: str, expected: list[str]) -> None:
    for i, run_id in enumerate(["a_1", "a%1", "ab1", "aX1", "a\\1", "a11"]):
        create(store, run_id, created_at=T0 + i)
    assert sorted(store.find_run(prefix)) == expected


def test_find_run_is_case_sensitive(store: Store) -> None:
    """Run ids are compared exactly, as everywhere else (``get_run``, ``read``): a prefix
    must not match ids that differ from it in case."""
    create(store, "Order-1")
    create(store, "order-2", created_at=T0 + 1)
    assert store.find_run("order") == ["order-2"]
    assert store.find_run("Order") == ["Order-1"]


# -- leases ------------------------------------------------------------------------------


def test_claiming_a_free_run(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    record = record_of(store, "r1")
    assert (record.owner, record.lease_expires_at) == ("A", T0 + LEASE)


def test_claiming_an_unknown_run_is_refused(store: Store) -> None:
    assert not store.claim("ghost", "A", T0, LEASE)
    assert store.get_run("ghost") is None


def test_a_live_lease_held_by_another_is_respected(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    assert not store.claim("r1", "B", T0 + LEASE - 1, LEASE)
    record = record_of(store, "r1")
    assert (record.owner, record.lease_expires_at) == ("A", T0 + LEASE)


def test_an_expired_lease_can_be_taken(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    assert store.claim("r1", "B", T0 + LEASE + 1, LEASE)
    record = record_of(store, "r1")
    assert (record.owner, record.lease_expires_at) == ("B", T0 + 2 * LEASE + 1)
    assert not store.claim("r1", "A", T0 + LEASE + 2, LEASE)


def test_the_owner_can_claim_again_to_extend(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    assert store.claim("r1", "A", T0 + 10, LEASE)
    assert record_of(store, "r1").lease_expires_at == T0 + 10 + LEASE


def test_expected_owner_allows_taking_over_a_live_lease(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    assert not store.claim("r1", "B", T0 + 1, LEASE, expected_owner="Z")
    assert store.claim("r1", "B", T0 + 1, LEASE, expected_owner="A")
    assert record_of(store, "r1").owner == "B"
    # "A" no longer holds it, so naming A again proves nothing
    assert not store.claim("r1", "C", T0 + 2, LEASE, expected_owner="A")
    assert record_of(store, "r1").owner == "B"


def test_renew_extends_our_leases_and_reports_cancellation(store: Store) -> None:
    for i in range(1, 4):
        create(store, f"r{i}", created_at=T0 + i)
    assert store.claim("r1", "A", T0, LEASE)
    assert store.claim("r2", "A", T0, LEASE)
    assert store.claim("r3", "B", T0, LEASE)
    store.request_cancel("r2")

    held = store.renew("A", ["r1", "r2", "r3", "ghost"], T0 + 20, LEASE)

    assert held == {"r1": False, "r2": True}
    assert record_of(store, "r1").lease_expires_at == T0 + 20 + LEASE
    assert record_of(store, "r2").lease_expires_at == T0 + 20 + LEASE
    r3 = record_of(store, "r3")
    assert (r3.owner, r3.lease_expires_at) == ("B", T0 + LEASE)


def test_renew_drops_runs_we_lost(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    assert store.claim("r1", "B", T0 + LEASE + 1, LEASE)
    assert store.renew("A", ["r1"], T0 + LEASE + 2, LEASE) == {}
    record = record_of(store, "r1")
    assert (record.owner, record.lease_expires_at) == ("B", T0 + 2 * LEASE + 1)
    assert store.renew("A", [], T0, LEASE) == {}


def test_release(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    store.release("r1", "B")  # not B's to release
    assert record_of(store, "r1").owner == "A"
    store.release("r1", "A")
    record = record_of(store, "r1")
    assert (record.owner, record.lease_expires_at) == (None, None)
    assert store.renew("A", ["r1"], T0 + 1, LEASE) == {}
    assert store.claim("r1", "B", T0 + 1, LEASE)


# -- finding runnable work ------------------------------------------------------------------


def test_pending_and_running_runs_are_runnable(store: Store) -> None:
    create(store, "pending")
    create(store, "running", created_at=T0 + 1)
    advance(store, "running", step(1), T0 + 1)
    assert record_of(store, "running").status is RunStatus.RUNNING
    assert runnable_ids(store, T0 + 2) == {"pending", "running"}
    found = {r.run_id: r for r in store.runnable(T0 + 2)}
    assert found["running"] == store.get_run("running")


def test_a_sleeping_run_is_runnable_once_its_timer_is_due(store: Store) -> None:
    create(store, "r1")
    advance(store, "r1", [ev.TimerSet(step_id=1, fire_at=T0 + 100)], T0 + 1)
    assert runnable_ids(store, T0 + 99.5) == set()
    assert runnable_ids(store, T0 + 100) == {"r1"}
    assert runnable_ids(store, T0 + 1000) == {"r1"}


def test_a_waiting_run_is_runnable_when_its_signal_arrives(store: Store) -> None:
    create(store, "r1")
    create(store, "other", created_at=T0 + 1)
    advance(store, "r1", [ev.SignalAwaited(step_id=1, name="approve")], T0 + 1)
    advance(store, "other", [ev.SignalAwaited(step_id=1, name="approve")], T0 + 1)
    far = T0 + 10**6
    assert runnable_ids(store, far) == set()

    store.send_signal("r1", "reject", "{}", T0 + 2)  # another name
    store.send_signal("other", "approve", "{}", T0 + 2)  # another run
    assert runnable_ids(store, far) == {"other"}

    first = store.send_signal("r1", "approve", "1", T0 + 3)
    assert runnable_ids(store, far) == {"r1", "other"}

    # consuming it makes the run running; waiting again, the consumed signal no longer counts
    advance(store, "r1", [ev.SignalReceived(step_id=1, name="approve", data=1, signal_id=first)], T0 + 4)
    advance(store, "r1", [ev.SignalAwaited(step_id=2, name="approve")], T0 + 5)
    assert runnable_ids(store, far) == {"other"}
    store.send_signal("r1", "approve", "2", T0 + 6)
    assert runnable_ids(store, far) == {"r1", "other"}


def test_a_waiting_run_is_runnable_when_its_timeout_passes(store: Store) -> None:
    create(store, "r1")
    advance(store, "r1", [ev.SignalAwaited(step_id=1, name="approve", timeout_at=T0 + 60)], T0 + 1)
    assert runnable_ids(store, T0 + 59) == set()
    assert runnable_ids(store, T0 + 60) == {"r1"}


@pytest.mark.parametrize(
    "ending", [ev.NeedsAttention(step_id=1, reason="in doubt"), ev.RunCompleted(result=1), FAILED,
               ev.RunCancelled(reason="x")],
    ids=["needs_attention", "completed", "failed", "cancelled"],
)
def test_runs_that_need_a_person_or_are_over_are_not_runnable(store: Store, ending: ev.Event) -> None:
    create(store, "r1")
    advance(store, "r1", [ending], T0 + 1)
    assert runnable_ids(store, T0 + 10**6) == set()


@pytest.mark.parametrize(
    ("events", "runnable_after_cancel"),
    [
        ([ev.NeedsAttention(step_id=1, reason="in doubt")], True),
        ([ev.TimerSet(step_id=1, fire_at=T0 + 10**5)], True),
        ([ev.SignalAwaited(step_id=1, name="never")], True),
        ([ev.RunCompleted(result=1)], False),
        ([FAILED], False),
        ([ev.RunCancelled(reason="x")], False),
    ],
    ids=["needs_attention", "sleeping", "waiting", "completed", "failed", "cancelled"],
)
def test_a_cancel_request_makes_an_unfinished_run_runnable(
    store: Store, events: list[ev.Event], runnable_after_cancel: bool
) -> None:
    create(store, "r1")
    advance(store, "r1", events, T0 + 1)
    assert not record_of(store, "r1").cancel_requested
    assert runnable_ids(store, T0 + 2) == set()
    store.request_cancel("r1")
    assert record_of(store, "r1").cancel_requested
    assert runnable_ids(store, T0 + 2) == ({"r1"} if runnable_after_cancel else set())


def test_runs_under_a_live_lease_are_not_runnable(store: Store) -> None:
    create(store, "r1")
    create(store, "r2", created_at=T0 + 1)
    assert store.claim("r1", "A", T0, LEASE)
    assert runnable_ids(store, T0 + 1) == {"r2"}
    assert runnable_ids(store, T0 + LEASE + 1) == {"r1", "r2"}
    store.release("r1", "A")
    assert runnable_ids(store, T0 + 1) == {"r1", "r2"}


def test_claim_runnable_takes_the_oldest_runnable_runs_in_one_step(store: Store) -> None:
    for i in range(5):
        create(store, f"r{i}", created_at=T0 + i)
    advance(store, "r0", [ev.RunCompleted(result=1)], T0 + 1)  # over: not runnable
    assert store.claim("r1", "B", T0, LEASE)  # held by B
    taken = store.claim_runnable("A", T0 + 1, LEASE, limit=2, exclude=["r2"])
    assert taken == [("r3", None), ("r4", None)]
    for run_id in ("r3", "r4"):
        record = record_of(store, run_id)
        assert record.owner == "A" and record.lease_expires_at == T0 + 1 + LEASE
    assert store.claim_runnable("C", T0 + 2, LEASE, limit=5) == [("r2", None)]
    assert store.claim_runnable("C", T0 + 3, LEASE, limit=5, exclude=["r2"]) == []  # the rest are held


def test_claim_runnable_takes_over_expired_leases_and_says_from_whom(store: Store) -> None:
    create(store, "r1")
    assert store.claim("r1", "A", T0, LEASE)
    assert store.claim_runnable("B", T0 + LEASE - 1, LEASE, limit=5) == []
    assert store.claim_runnable("B", T0 + LEASE + 1, LEASE, limit=5) == [("r1", "A")]
    assert record_of(store, "r1").owner == "B"
    # A run we hold but have not in hand (we could not let go of it) is ours to go on with.
    assert store.claim_runnable("B", T0 + LEASE + 2, LEASE, limit=5) == [("r1", None)]
    assert store.claim_runnable("B", T0 + LEASE + 3, LEASE, limit=5, exclude=["r1"]) == []


def test_two_workers_claiming_one_run_at_once_never_both_get_it(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    for i in range(30):
        create(first, f"c{i}", created_at=T0 + i)
    for i in range(30):
        results: dict[str, object] = {}
        start = threading.Barrier(2)

        def claim(store: Store, who: str, run_id: str = f"c{i}", start: threading.Barrier = start,
                  results: dict[str, object] = results) -> None:
            start.wait()
            results[who] = store.claim(run_id, who, T0 + 100, LEASE)

        threads = [threading.Thread(target=claim, args=(s, w)) for s, w in ((first, "A"), (second, "B"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [w for w, taken in results.items() if taken]
        assert len(winners) == 1, (i, results)
        assert record_of(first, f"c{i}").owner == winners[0]


def test_concurrent_claimers_never_take_the_same_run(backend: Backend) -> None:
    first = backend.open()
    for i in range(40):
        create(first, f"r{i:02d}", created_at=T0 + i)
    stores = [backend.open() for _ in range(4)]
    taken: dict[str, list[str]] = {}
    lock = threading.Lock()

    def claim(worker: int) -> None:
        mine: list[str] = []  # in hand: a worker passes them over, as it does
        for _ in range(20):
            got = stores[worker].claim_runnable(f"W{worker}", T0 + 100, LEASE, limit=3, exclude=mine)
            mine += [run_id for run_id, _ in got]
        with lock:
            taken[f"W{worker}"] = mine

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [run_id for runs in taken.values() for run_id in runs]
    assert sorted(everything) == [f"r{i:02d}" for i in range(40)]  # each exactly once
    for worker, runs in taken.items():
        assert all(record_of(first, run_id).owner == worker for run_id in runs)


def test_runnable_respects_the_limit(store: Store) -> None:
    for i in range(6):
        create(store, f"r{i}", created_at=T0 + i)
    advance(store, "r0", [ev.RunCompleted(result=1)], T0 + 1)
    found = store.runnable(T0 + 10, limit=3)
    assert len(found) == 3
    assert {r.run_id for r in found} <= {"r1", "r2", "r3", "r4", "r5"}
    assert len(store.runnable(T0 + 10, limit=100)) == 5


def test_owned_runs(store: Store) -> None:
    for run_id in ("mine", "theirs", "free", "done", "released"):
        create(store, run_id)
    assert store.claim("mine", "A", T0, LEASE)
    assert store.claim("theirs", "B", T0, LEASE)
    assert store.claim("done", "A", T0, LEASE)
    assert store.claim("released", "A", T0, LEASE)
    advance(store, "done", [ev.RunCompleted(result=1)], T0 + 1)
    store.release("released", "A")
    owned = {r.run_id: r for r in store.owned_runs()}
    assert set(owned) == {"mine", "theirs"}
    assert owned["mine"] == store.get_run("mine")
    assert owned["theirs"].owner == "B"


# -- the inbox ---------------------------------------------------------------------------


def test_signals_are_numbered_upwards_and_kept_until_consumed(store: Store) -> None:
    create(store, "r1")
    create(store, "r2", created_at=T0 + 1)
    ids = [
        store.send_signal("r1", "approve", '{"by":"ana"}', T0 + 1),
        store.send_signal("r2", "approve", "null", T0 + 2),
        store.send_signal("r1", "note", '"hi"', T0 + 3),
    ]
    assert ids == sorted(set(ids))
    assert store.pending_signals("r1") == [
        Signal(ids[0], "r1", "approve", '{"by":"ana"}', T0 + 1),
        Signal(ids[2], "r1", "note", '"hi"', T0 + 3),
    ]
    assert store.pending_signals("r2") == [Signal(ids[1], "r2", "approve", "null", T0 + 2)]
    assert store.pending_signals("ghost") == []
    assert store.send_signal("r1", "approve", "2", T0 + 4) > ids[-1]


def test_an_append_consumes_signals_with_its_events(store: Store) -> None:
    create(store, "r1")
    advance(store, "r1", [ev.SignalAwaited(step_id=1, name="approve")], T0 + 1)
    first = store.send_signal("r1", "approve", "1", T0 + 2)
    second = store.send_signal("r1", "approve", "2", T0 + 3)
    received = ev.SignalReceived(step_id=1, name="approve", data=1, signal_id=first)
    assert index_update([received]).consumed_signals == [first]

    advance(store, "r1", [received], T0 + 4)

    assert [s.signal_id for s in store.pending_signals("r1")] == [second]
    assert record_of(store, "r1").status is RunStatus.RUNNING


def test_request_cancel(store: Store) -> None:
    create(store, "r1")
    create(store, "r2", created_at=T0 + 1)
    store.request_cancel("r1")
    assert record_of(store, "r1").cancel_requested
    assert not record_of(store, "r2").cancel_requested
    store.request_cancel("r1")
    assert record_of(store, "r1").cancel_requested


# -- migrations --------------------------------------------------------------------------


def test_a_fresh_store_is_at_the_latest_version(backend: Backend, store: MigratingStore) -> None:
    known = backend.migrations
    assert known, "a backend without migrations has no schema"
    assert store.schema_version() == len(known) == known[-1].version
    assert store.pending_migrations() == []
    assert backend.query("SELECT version, name FROM schema_migrations ORDER BY version") == [
        (m.version, m.name) for m in known
    ]


def test_reopening_applies_nothing_again(backend: Backend, store: MigratingStore) -> None:
    create(store, "r1")
    before = backend.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    again = backend.open()
    assert again.migrate() == []
    assert again.schema_version() == len(backend.migrations)
    assert backend.query(
        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
    ) == before
    assert again.get_run("r1") == store.get_run("r1")


def test_a_database_newer_than_this_code_is_refused(backend: Backend, store: MigratingStore) -> None:
    future = len(backend.migrations) + 1
    store.close()
    backend.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) "
        f"VALUES ({future}, 'from_the_future', 0)"
    )
    with pytest.raises(MigrationError):
        backend.open()
    assert backend.query("SELECT MAX(version) FROM schema_migrations") == [(future,)]


# -- many writers ------------------------------------------------------------------------


def _race(stores: Sequence[Store], head: RunRecord, batches: list[list[EncodedEvent]]) -> list[str]:
    """Let each store append its batch at ``head`` at the same moment, one thread each."""
    gate = threading.Barrier(len(stores))
    outcomes = ["unfinished"] * len(stores)

    def write(w: int) -> None:
        gate.wait()
        try:
            stores[w].append("r1", head.head_seq, batches[w], IndexUpdate(), head.updated_at + 1)
            outcomes[w] = "won"
        except AppendConflict:
            outcomes[w] = "conflict"

    threads = [threading.Thread(target=write, args=(w,)) for w in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


@pytest.mark.parametrize("shared", [True, False], ids=["one-store-object", "store-per-thread"])
def test_concurrent_appends_at_the_same_head_one_wins(backend: Backend, shared: bool) -> None:
    writers = 4
    stores = [backend.open()] * writers if shared else [backend.open() for _ in range(writers)]
    create(stores[0], "r1")
    for round_ in range(8):
        head = record_of(stores[0], "r1")
        batches = [
            encode_batch("r1", head.head_seq, head.head_hash, step(round_, f"w{w}"), at=T0 + round_)
            for w in range(writers)
        ]
        outcomes = _race(stores, head, batches)
        assert outcomes.count("won") == 1, outcomes
        assert outcomes.count("conflict") == writers - 1, outcomes
        winner = batches[outcomes.index("won")]
        assert stores[0].read("r1", after_seq=head.head_seq) == winner
        assert record_of(stores[0], "r1").head_hash == winner[-1].hash
    assert verify_chain(stores[0].read("r1")) is None


def test_two_store_objects_see_each_others_writes(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    rows = create(one, "r1")
    assert two.read("r1") == rows
    rows += advance(two, "r1", step(1), T0 + 1)
    assert one.read("r1") == rows
    assert one.get_run("r1") == two.get_run("r1")
    assert one.claim("r1", "A", T0, LEASE)
    assert not two.claim("r1", "B", T0 + 1, LEASE)
    signal_id = two.send_signal("r1", "go", "1", T0 + 2)
    assert [s.signal_id for s in one.pending_signals("r1")] == [signal_id]


CHILD = """
import json, sys
from baton.journal import encode_batch, index_update, events as ev
from baton.store import open_store

url, = sys.argv[1:]
store = open_store(url)
seen = [r.seq for r in store.read("r1")]
record = store.get_run("r1")
events = [ev.TimerSet(step_id=9, fire_at=123.0)]
rows = encode_batch("r1", record.head_seq, record.head_hash, events, at=5.0)
store.append("r1", record.head_seq, rows, index_update(events), 5.0)
signal_id = store.send_signal("r1", "go", '"child"', 6.0)
store.close()
print(json.dumps({"seen": seen, "hash": rows[-1].hash, "signal": signal_id}))
"""


def test_another_process_sees_and_makes_writes(backend: Backend, store: Store) -> None:
    rows = create(store, "r1")
    rows += advance(store, "r1", step(1), T0 + 1)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, backend.url], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout)
    assert child["seen"] == [1, 2, 3]
    assert [r.seq for r in store.read("r1")] == [1, 2, 3, 4]
    assert store.read("r1")[:3] == rows
    record = record_of(store, "r1")
    assert (record.head_seq, record.head_hash) == (4, child["hash"])
    assert (record.status, record.wake_at) == (RunStatus.SLEEPING, 123.0)
    assert [s.signal_id for s in store.pending_signals("r1")] == [child["signal"]]
    assert verify_chain(store.read("r1")) is None


# -- long-term memory --------------------------------------------------------------------


def memory(text: str, *, tenant: str | None = "acme", namespace: str = "tenant", run_id: str | None = None,
           step_id: int | None = None, **fields: object) -> NewMemory:
    values: dict[str, Any] = {"data_json": "null", "source": "workflow", "trusted": False, "created_at": T0}
    values.update(fields)
    return NewMemory(tenant=tenant, namespace=namespace, text=text, run_id=run_id, step_id=step_id, **values)


def found(store: Store, query: str, *, tenant: str | None = "acme", namespace: str = "tenant",
          limit: int = 10) -> list[str]:
    return [entry.text for entry in store.search_memory(tenant, namespace, query, limit)]


def test_an_entry_keeps_every_field_it_was_given(store: Store) -> None:
    entry_id = store.remember(memory(
        "Alice prefers refunds by bank transfer", namespace="principal:alice", principal="alice",
        data_json='{"channel":"bank","n":[1,2.5]}', source="tool_output", trusted=True, run_id="r1", step_id=3,
        created_at=T0 + 0.25, embedding=(0.5, -1.0, 0.0)))
    assert store.memories("acme") == [MemoryEntry(
        id=entry_id, text="Alice prefers refunds by bank transfer", data={"channel": "bank", "n": [1, 2.5]},
        namespace="principal:alice", tenant="acme", principal="alice", source="tool_output", trusted=True,
        run_id="r1", step_id=3, created_at=T0 + 0.25, score=None, embedding=(0.5, -1.0, 0.0))]
    anonymous = store.remember(memory("no tenant, no run", tenant=None))
    [entry] = store.memories(None)
    assert (entry.id, entry.tenant, entry.run_id, entry.step_id, entry.embedding) == (anonymous, None, None, None, None)


def test_a_run_s_step_is_remembered_once_and_gives_back_its_first_id(store: Store) -> None:
    first = store.remember(memory("the first attempt", run_id="r1", step_id=4))
    again = store.remember(memory("written again after a crash", run_id="r1", step_id=4))
    other_step = store.remember(memory("the next step", run_id="r1", step_id=5))
    other_run = store.remember(memory("another run", run_id="r2", step_id=4))
    assert again == first
    assert len({first, other_step, other_run}) == 3
    assert sorted(e.text for e in store.memories("acme")) == ["another run", "the first attempt", "the next step"]
    assert found(store, "crash") == []  # what was not stored is not indexed either


def test_entries_written_outside_a_run_are_never_taken_for_each_other(store: Store) -> None:
    ids = {store.remember(memory("seeded fact")) for _ in range(3)}
    assert len(ids) == 3
    assert len(store.memories("acme")) == 3


def test_two_workers_remembering_one_step_at_once_write_one_entry(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    ids: list[int] = []
    barrier = threading.Barrier(len(stores))

    def write(store: Store, n: int) -> None:
        barrier.wait()
        ids.append(store.remember(memory(f"worker {n}", run_id="r1", step_id=1)))

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == len(stores) and len(set(ids)) == 1
    assert len(stores[0].memories("acme")) == 1


def test_search_ranks_the_entries_matching_more_of_the_words_first(store: Store) -> None:
    for text in ("Damaged goods are refunded in full", "Shipping takes three days",
                 "Refunds go back to the card used", "Gift cards cannot be refunded"):
        store.remember(memory(text))
    assert found(store, "refund damaged goods")[0] == "Damaged goods are refunded in full"
    assert sorted(found(store, "refunds")) == ["Damaged goods are refunded in full", "Gift cards cannot be refunded",
                                               "Refunds go back to the card used"]  # stemmed: refund(s|ed)
    assert found(store, "shipping") == ["Shipping takes three days"]
    assert found(store, "REFUNDS", limit=1) == found(store, "refunds", limit=1)
    scores = [e.score for e in store.search_memory("acme", "tenant", "refund damaged goods", 10)]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_search_respects_its_limit(store: Store) -> None:
    for n in range(5):
        store.remember(memory(f"refund note {n}"))
    assert len(found(store, "refund", limit=2)) == 2
    assert len(found(store, "refund", limit=10)) == 5


def test_a_tenant_never_finds_another_tenant_s_entries(store: Store) -> None:
    store.remember(memory("acme refund secret", tenant="acme"))
    store.remember(memory("globex refund secret", tenant="globex"))
    store.remember(memory("tenantless refund secret", tenant=None))
    store.remember(memory("acme principal refund secret", namespace="principal:alice"))
    assert found(store, "refund secret") == ["acme refund secret"]
    assert found(store, "refund secret", tenant="globex") == ["globex refund secret"]
    assert found(store, "refund secret", tenant=None) == ["tenantless refund secret"]
    assert found(store, "refund", namespace="principal:alice") == ["acme principal refund secret"]
    assert found(store, "refund", namespace="principal:bob") == []
    assert [e.text for e in store.memories("globex")] == ["globex refund secret"]
    assert not store.forget_memory("globex", store.memories("acme")[0].id)  # not globex's to erase
    assert len(store.memories("acme")) == 2


HOSTILE_QUERIES = ['"', '"unbalanced', "refund*", "*", "-refund", "- -", "OR", "refund OR", "AND NOT",
                   "NEAR(refund card)", "(", "refund)", "((", "", "   ", "'", "a'b", "\\", "col:refund",
                   "text:refund", "^refund", "refund + card", "!!", "&|", "<->", "refund:*", "\x00", "\ud800",
                   "😀 refund", "ß", "x" * 5000, "refund " * 500]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_no_query_text_makes_the_database_refuse(store: Store, query: str) -> None:
    store.remember(memory("Refunds go back to the card used"))
    store.search_memory("acme", "tenant", query, 5)  # no error, whatever it finds
    assert "Refunds go back to the card used" in found(store, query + " refund")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=80))
def test_any_query_text_is_searchable(store: Store, query: str) -> None:
    if not store.memories("acme"):
        store.remember(memory("Refunds go back to the card used"))
    for entry in store.search_memory("acme", "tenant", query, 5):
        assert entry.tenant == "acme"


def test_forgetting_an_entry_removes_it_from_search(store: Store) -> None:
    keep = store.remember(memory("refund kept"))
    gone = store.remember(memory("refund forgotten"))
    assert store.forget_memory("acme", gone)
    assert not store.forget_memory("acme", gone)
    assert found(store, "refund") == ["refund kept"]
    assert found(store, "forgotten") == []
    assert [e.id for e in store.memories("acme")] == [keep]


def test_forgetting_a_namespace_or_a_run_removes_only_their_entries(store: Store) -> None:
    store.remember(memory("refund from run one", run_id="r1", step_id=1))
    store.remember(memory("refund also from run one", run_id="r1", step_id=2, namespace="principal:alice"))
    store.remember(memory("refund from run two", run_id="r2", step_id=1))
    store.remember(memory("refund in the faq", namespace="tenant/faq"))
    store.remember(memory("globex's faq refund", tenant="globex", namespace="tenant/faq"))
    assert store.forget_run_memories("r1") == 2
    assert store.forget_run_memories("r1") == 0
    assert sorted(e.text for e in store.memories("acme")) == ["refund from run two", "refund in the faq"]
    assert found(store, "one") == [] and found(store, "refund", namespace="principal:alice") == []
    assert store.forget_namespace("acme", "tenant/faq") == 1
    assert found(store, "refund", namespace="tenant/faq") == []
    assert found(store, "refund", tenant="globex", namespace="tenant/faq") == ["globex's faq refund"]


def test_listing_filters_by_namespace_and_run_newest_first(store: Store) -> None:
    a = store.remember(memory("one", run_id="r1", step_id=1))
    b = store.remember(memory("two", run_id="r1", step_id=2, namespace="principal:alice"))
    c = store.remember(memory("three", run_id="r2", step_id=1))
    assert [e.id for e in store.memories("acme")] == [c, b, a]
    assert [e.id for e in store.memories("acme", "tenant")] == [c, a]
    assert [e.id for e in store.memories("acme", run_id="r1")] == [b, a]
    assert [e.id for e in store.memories("acme", "tenant", run_id="r1")] == [a]
    assert [e.id for e in store.memories("acme", limit=1)] == [c]
    assert store.memories("globex") == []
