"""Tamper detection: the hash chain, and the run index head that anchors its end.

``verify_chain(rows)`` returns the ``seq`` of the first row (in the order given) whose
position or hash is wrong. That makes "the first affected row" precise for any mutation
of a list of rows: it is the first position where the tampered list differs from the
original, and the report is the ``seq`` of the row found there.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton import audit
from baton.journal import GENESIS_HASH, EncodedEvent, encode_batch, index_update, verify_chain
from baton.journal import events as ev
from baton.store import NewRun, SqliteStore

T0 = 1_800_000_000.0
FAST = settings(max_examples=200, deadline=None)



def rows_replace(row: EncodedEvent, **changes: object) -> EncodedEvent:
    return row._replace(**changes)  # type: ignore[arg-type]

def events_for(n: int) -> list[ev.Event]:
    """``n`` distinct events: a start, then steps (no two rows carry the same data)."""
    out: list[ev.Event] = [ev.RunStarted(workflow="w", workflow_ref="m:w", input={"n": n})]
    for i in range(1, n):
        if i % 2:
            out.append(ev.StepStarted(step_id=i, kind="call", name="pay", args={"i": i},
                                      idempotency_key=f"r1:{i}", idempotent=False))
        else:
            out.append(ev.StepCompleted(step_id=i - 1, result={"paid": i, "note": "ok ✓"}))
    return out


def build_chain(events: list[ev.Event], cuts: list[int], run_id: str = "r1") -> list[EncodedEvent]:
    """Encode ``events`` as several appends (split at ``cuts``), each at its own time."""
    rows: list[EncodedEvent] = []
    bounds = [0, *sorted(set(cuts)), len(events)]
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if lo == hi:
            continue
        head_seq, head_hash = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS_HASH)
        rows += encode_batch(run_id, head_seq, head_hash, events[lo:hi], at=T0 + n * 1.5)
    return rows


@st.composite
def chains(draw: st.DrawFn, min_size: int = 3, max_size: int = 30) -> list[EncodedEvent]:
    n = draw(st.integers(min_value=min_size, max_value=max_size))
    cuts = draw(st.lists(st.integers(min_value=1, max_value=n - 1), max_size=5))
    return build_chain(events_for(n), cuts)


def different_char(draw: st.DrawFn, old: str) -> str:
    return draw(st.characters(codec="utf-8").filter(lambda c: c != old))


def edit_one_char(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(min_value=0, max_value=len(text) - 1))
    return text[:i] + different_char(draw, text[i]) + text[i + 1 :]


# Each mutation takes a chain (a list of rows, as ``store.read`` returns them) and returns
# a tampered copy that differs from it in at least one row and is not merely a prefix.

Mutation = Callable[[st.DrawFn, list[EncodedEvent]], list[EncodedEvent]]


def _edit_field(field: str) -> Mutation:
    def mutate(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
        k = draw(st.integers(min_value=0, max_value=len(rows) - 1))
        out = list(rows)
        out[k] = rows_replace(rows[k], **{field: edit_one_char(draw, getattr(rows[k], field))})
        return out

    return mutate


def edit_seq(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    k = draw(st.integers(min_value=0, max_value=len(rows) - 1))
    seq = draw(st.integers(min_value=-1, max_value=len(rows) + 2).filter(lambda s: s != rows[k].seq))
    out = list(rows)
    out[k] = rows_replace(rows[k], seq=seq)
    return out


def delete_one(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    k = draw(st.integers(min_value=0, max_value=len(rows) - 2))  # the last one: see truncation
    return rows[:k] + rows[k + 1 :]


def delete_a_middle_range(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    lo = draw(st.integers(min_value=1, max_value=len(rows) - 2))
    hi = draw(st.integers(min_value=lo + 1, max_value=len(rows) - 1))
    return rows[:lo] + rows[hi:]


def truncate_head(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    return rows[draw(st.integers(min_value=1, max_value=len(rows) - 1)) :]


def swap_positions(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    i, j = sorted(draw(st.lists(st.integers(0, len(rows) - 1), min_size=2, max_size=2, unique=True)))
    out = list(rows)
    out[i], out[j] = rows[j], rows[i]
    return out


def swap_contents(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    """What swapping two events in the database looks like: each ``seq`` keeps its place
    and takes the other's type, time, data and hash."""
    i, j = sorted(draw(st.lists(st.integers(0, len(rows) - 1), min_size=2, max_size=2, unique=True)))
    out = list(rows)
    out[i] = rows_replace(rows[j], seq=rows[i].seq)
    out[j] = rows_replace(rows[i], seq=rows[j].seq)
    return out


def insert_forged(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    """A made-up event slipped in before an existing one; its hash is either chained
    correctly onto its predecessor (the attacker knows the scheme) or made up."""
    k = draw(st.integers(min_value=0, max_value=len(rows) - 1))
    seq = draw(st.sampled_from([k + 1, k + 2, k, draw(st.integers(-1, len(rows) + 2))]))
    forged = rows_replace(
        rows[k], seq=seq, data='{"result":{"paid":1000000},"step_id":1}', type="StepCompleted"
    )
    prev = rows[k - 1].hash if k else GENESIS_HASH
    forged_hash = draw(st.sampled_from([forged.expected_hash(prev), "f" * 64, rows[k].hash]))
    return [*rows[:k], rows_replace(forged, hash=forged_hash), *rows[k:]]


def duplicate_one(draw: st.DrawFn, rows: list[EncodedEvent]) -> list[EncodedEvent]:
    k = draw(st.integers(min_value=0, max_value=len(rows) - 1))
    return [*rows[: k + 1], rows[k], *rows[k + 1 :]]


MUTATIONS: dict[str, Mutation] = {
    "edit data": _edit_field("data"),
    "edit at": _edit_field("at"),
    "edit type": _edit_field("type"),
    "edit run_id": _edit_field("run_id"),
    "edit hash": _edit_field("hash"),
    "edit seq": edit_seq,
    "delete one": delete_one,
    "delete a middle range": delete_a_middle_range,
    "truncate head": truncate_head,
    "swap positions": swap_positions,
    "swap contents": swap_contents,
    "insert forged": insert_forged,
    "duplicate one": duplicate_one,
}


def first_affected(original: list[EncodedEvent], tampered: list[EncodedEvent]) -> int | None:
    """The ``seq`` of the row at the first position where ``tampered`` departs from
    ``original``; ``None`` if it does not (it is the original or a prefix of it)."""
    for p, row in enumerate(tampered):
        if p >= len(original) or row != original[p]:
            return row.seq
    return None


@FAST
@given(rows=chains())
def test_an_untampered_chain_verifies(rows: list[EncodedEvent]) -> None:
    assert verify_chain(rows) is None
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))


@FAST
@given(rows=chains(), name=st.sampled_from(sorted(MUTATIONS)), data=st.data())
def test_every_mutation_is_detected_at_the_first_affected_row(
    rows: list[EncodedEvent], name: str, data: st.DataObject
) -> None:
    tampered = MUTATIONS[name](data.draw, rows)
    expected = first_affected(rows, tampered)
    assert expected is not None, f"{name} left the chain as it was"
    assert verify_chain(tampered) == expected, name


@FAST
@given(rows=chains(), data=st.data())
def test_a_suffix_verifies_from_its_predecessor_hash(rows: list[EncodedEvent], data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=1, max_value=len(rows) - 1))
    assert verify_chain(rows[k:], prev_hash=rows[k - 1].hash) is None
    if k + 1 < len(rows):
        assert verify_chain(rows[k + 1 :], prev_hash=rows[k - 1].hash) == rows[k].seq + 1
    assert verify_chain(rows[k:], prev_hash="e" * 64) == rows[k].seq


@FAST
@given(rows=chains(), data=st.data())
def test_tail_truncation_is_invisible_to_the_chain_alone(rows: list[EncodedEvent], data: st.DataObject) -> None:
    """A prefix of a valid chain is itself a valid chain, so cutting events off the end
    cannot be seen by recomputing hashes. It is caught by comparing the journal's end with
    the head the run index recorded (``runs.head_seq`` / ``runs.head_hash``, which every
    append moves in the same transaction): see the tests below and ``baton.audit``."""
    keep = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    assert verify_chain(rows[:keep]) is None
    head = rows[-1]
    reached = rows[:keep][-1] if keep else None
    assert reached is None or (reached.seq, reached.hash) != (head.seq, head.hash)


# -- against a real database ------------------------------------------------------------


def make_run(path: Path, n: int) -> tuple[SqliteStore, list[EncodedEvent]]:
    store = SqliteStore(path)
    events = events_for(n)
    rows = encode_batch("r1", 0, GENESIS_HASH, events[:1], at=T0)
    store.create_run(NewRun("r1", "w", "m:w", T0), rows, index_update(events[:1]))
    for i in range(1, n, 3):
        batch = events[i : i + 3]
        more = encode_batch("r1", rows[-1].seq, rows[-1].hash, batch, at=T0 + i)
        store.append("r1", rows[-1].seq, more, index_update(batch), T0 + i)
        rows += more
    # The worker lets go of the run: that anchors the index at the journal's head.
    assert store.claim("r1", "worker", T0 + n, 30.0)
    store.release("r1", "worker")
    assert store.read("r1") == rows
    return store, rows


def raw(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def reaches_head(store: SqliteStore, run_id: str) -> bool:
    """Does the journal still reach the head the run index anchored?"""
    rows, record = store.read(run_id), store.get_run(run_id)
    assert record is not None
    return any((r.seq, r.hash) == (record.anchor_seq, record.anchor_hash) for r in rows)


def test_an_untampered_run_reaches_its_head(tmp_path: Path) -> None:
    store, _ = make_run(tmp_path / "baton.db", 10)
    assert verify_chain(store.read("r1")) is None
    assert reaches_head(store, "r1")
    assert audit.verify_run(store, "r1") == (10, None)
    assert audit.verify(store).ok


@pytest.mark.parametrize("removed", [1, 2, 9, 10])
def test_tail_truncation_is_caught_by_the_index_head(tmp_path: Path, removed: int) -> None:
    path = tmp_path / "baton.db"
    store, rows = make_run(path, 10)
    raw(path, "DELETE FROM events WHERE run_id = ? AND seq > ?", "r1", 10 - removed)

    left = store.read("r1")
    assert left == rows[: 10 - removed]
    assert verify_chain(left) is None  # the chain alone sees nothing wrong
    assert not reaches_head(store, "r1")  # but it no longer reaches the recorded head
    _, problem = audit.verify_run(store, "r1")
    assert problem is not None and problem.seq == 10 - removed + 1
    assert not audit.verify(store).ok


def rewrite_from(path: Path, rows: list[EncodedEvent], k: int, data: str) -> list[EncodedEvent]:
    """Edit event ``k`` and recompute every hash from there on, as an attacker with write
    access to the events table (but not the run index) would."""
    forged = list(rows)
    forged[k - 1] = rows_replace(rows[k - 1], data=data)
    prev = rows[k - 2].hash if k > 1 else GENESIS_HASH
    for i in range(k - 1, len(rows)):
        forged[i] = rows_replace(forged[i], hash=forged[i].expected_hash(prev))
        prev = forged[i].hash
        raw(path, "UPDATE events SET data = ?, hash = ? WHERE run_id = ? AND seq = ?",
            forged[i].data, forged[i].hash, "r1", forged[i].seq)
    return forged


@pytest.mark.parametrize("k", [1, 2, 5, 9, 10])
def test_a_chain_recomputed_after_an_edit_is_caught_by_the_index_head(tmp_path: Path, k: int) -> None:
    path = tmp_path / "baton.db"
    store, rows = make_run(path, 10)
    forged = rewrite_from(path, rows, k, '{"result":{"paid":1000000},"step_id":1}')

    assert store.read("r1") == forged
    assert forged[k - 1] != rows[k - 1]
    assert verify_chain(forged) is None  # a consistent chain, just not the one recorded
    record = store.get_run("r1")
    assert record is not None
    assert (record.anchor_seq, record.anchor_hash) == (rows[-1].seq, rows[-1].hash)
    assert forged[-1].hash != record.anchor_hash
    assert not reaches_head(store, "r1")
    _, problem = audit.verify_run(store, "r1")
    assert problem is not None and problem.seq == 10


def test_events_chained_onto_the_end_are_not_caught_by_the_index_alone(tmp_path: Path) -> None:
    """A correctly chained event added after the anchor looks like the work of a worker that
    crashed before letting go of the run: the index cannot tell them apart. Signed
    checkpoints of every run's head are what catch this; here we pin the limit down."""
    path = tmp_path / "baton.db"
    store, rows = make_run(path, 6)
    (extra,) = encode_batch("r1", rows[-1].seq, rows[-1].hash, [ev.RunCompleted(result="forged")], at=T0 + 99)
    raw(path, "INSERT INTO events (run_id, seq, type, at, data, hash) VALUES (?, ?, ?, ?, ?, ?)",
        extra.run_id, extra.seq, extra.type, extra.at, extra.data, extra.hash)

    assert verify_chain(store.read("r1")) is None
    assert reaches_head(store, "r1")
    assert audit.verify_run(store, "r1") == (7, None)


def test_auditing_a_run_that_is_being_appended_to_reports_nothing(tmp_path: Path) -> None:
    """``baton audit verify`` may run while workers append. An append landing between the
    audit's reading of the journal and its reading of the run's head is not tampering."""
    path = tmp_path / "baton.db"
    _, rows = make_run(path, 4)
    worker = SqliteStore(path)
    appended = threading.Event()

    class AuditorStore(SqliteStore):
        def read(self, run_id: str, after_seq: int = 0) -> list[EncodedEvent]:
            seen = super().read(run_id, after_seq)
            if not appended.is_set():  # a worker appends right after the audit has read
                appended.set()
                head = worker.get_run(run_id)
                assert head is not None
                batch = [ev.StepStarted(step_id=50, kind="call", name="t", args={},
                                        idempotency_key="k50", idempotent=True)]
                more = encode_batch(run_id, head.head_seq, head.head_hash, batch, at=T0 + 50)
                worker.append(run_id, head.head_seq, more, index_update(batch), T0 + 50)
            return seen

    auditor = AuditorStore(path)
    count, problem = audit.verify_run(auditor, "r1")
    assert appended.is_set()
    assert problem is None, str(problem)
    assert count == len(rows)
    assert audit.verify_run(auditor, "r1") == (len(rows) + 1, None)
