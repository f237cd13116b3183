"""A workflow resumed at every possible crash point produces the same result and the same
journal as an uninterrupted run, and no side effect happens twice.

How a crash is simulated: the run's store is wrapped in :class:`CrashingStore`, which
raises :class:`SimulatedCrash` (a ``BaseException``, so no ``except Exception`` in the
engine or the workflow can swallow it) just *before* or just *after* its k-th ``append``.

* "before append k" is a crash after the work that append would have recorded (a tool
  call, a fired timer) but before the record: the side effect happened, the journal does
  not know it.
* "after append k" is a crash after the record, before whatever comes next.

The crashed store then refuses every further call, so the crashed runtime's cleanup
(``finally: release the lease``) cannot run, as it could not in a killed process. A new
:class:`Baton` (a new owner id) on the same database file then drives the run to the end.

Why the lease is expired by hand: the crashed owner is this very process, whose pid and
start time are still alive, so Baton correctly refuses to take the run over until the
lease runs out (``lease_seconds``). Rather than wait, :func:`expire_lease` sets the
lease's expiry in the past, which is all that waiting would do. The owner column still
names the crashed runtime, so the takeover goes through the real recovery path and
journals ``RunRecovered``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, Context, Reconciled, RunStatus, Settings, tool, workflow
from baton.journal import EncodedEvent, decode, verify_chain
from baton.journal import events as ev
from engine_support import SimulatedCrash, crashing_baton, expire_lease, make_settings

RUN_ID = "run-under-test"
"""Every scenario uses the same run id, on its own database, so idempotency keys
(``run_id:step_id``) are the same in every scenario and can be compared directly."""


# -- the outside world ---------------------------------------------------------------


@dataclass
class World:
    """Fake services, reset for every scenario."""

    db: Path | None = None
    # idempotent services: one effect per idempotency key, repeats return the first result
    applied: Counter[str] = field(default_factory=Counter)
    results: dict[str, Any] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    # the non-idempotent ledger: every call posts, whatever its key
    ledger: list[tuple[str, int]] = field(default_factory=list)
    # (now, uuid) as seen by each execution of the workflow function
    seen: list[tuple[float, str]] = field(default_factory=list)

    def once(self, key: str, result: Any) -> Any:
        """An idempotent effect, as a payment service applies a charge."""
        self.calls[key] += 1
        if key not in self.results:
            self.applied[key] += 1
            self.results[key] = result
        return self.results[key]


WORLD = World()


def recorded_failures() -> int:
    """How many failed attempts the run's journal holds (read straight from the file)."""
    assert WORLD.db is not None
    conn = sqlite3.connect(WORLD.db)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM events WHERE run_id = ? AND type = 'StepFailed'", (RUN_ID,)
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


@tool(idempotent=True)
def reserve_stock(order_id: str, qty: int, *, idempotency_key: str) -> dict[str, Any]:
    return dict(WORLD.once(idempotency_key, {"reservation": f"res-{order_id}", "qty": qty}))


@tool(idempotent=True)
async def charge_card(order_id: str, amount: int, *, idempotency_key: str) -> str:
    return str(WORLD.once(idempotency_key, f"ch-{order_id}-{amount}"))


@tool(idempotent=True, retries=3, backoff=0.001)
def shipping_quote(order_id: str, *, idempotency_key: str) -> float:
    """Fails on its first two attempts, then answers.

    A tool cannot see its attempt number, and a real flaky service fails by its own
    clock, not by our bookkeeping: after a crash that loses the record of a failed
    attempt (crash *before* that append), a service that failed "the first two calls"
    would fail once more or once less than in the uninterrupted run, and the journal
    would legitimately show a different number of failures. To compare journals exactly,
    this one fails exactly while the journal holds fewer than two failed attempts, i.e.
    on attempts 1 and 2 as the engine numbers them.
    """
    if recorded_failures() < 2:
        WORLD.calls[idempotency_key] += 1
        raise ConnectionError("carrier API unavailable")
    return float(WORLD.once(idempotency_key, 4.95))


def ledger_lookup(order_id: str, amount: int, idempotency_key: str) -> Reconciled:
    """Ask the ledger whether the post with this key went through (and what it returned)."""
    for key, posted in WORLD.ledger:
        if key == idempotency_key:
            return Reconciled(True, f"post-{order_id}-{posted}")
    return Reconciled(False)


@tool(reconcile=ledger_lookup)
def post_to_ledger(order_id: str, amount: int, *, idempotency_key: str) -> str:
    WORLD.calls[idempotency_key] += 1
    WORLD.ledger.append((idempotency_key, amount))
    return f"post-{order_id}-{amount}"


@tool(idempotent=True)
def send_receipt(order_id: str, lines: list[str], *, idempotency_key: str) -> str:
    return str(WORLD.once(idempotency_key, f"mail-{order_id}-{len(lines)}"))


@workflow
def checkout(ctx: Context, order_id: str, amount: int) -> dict[str, Any]:
    placed_at = ctx.now()
    token = ctx.uuid()
    WORLD.seen.append((placed_at.timestamp(), str(token)))
    reservation = ctx.call(reserve_stock, order_id=order_id, qty=2)
    charge = ctx.call(charge_card, order_id=order_id, amount=amount)
    ctx.sleep(0.01)
    quote = ctx.call(shipping_quote, order_id=order_id)
    post = ctx.call(post_to_ledger, order_id=order_id, amount=amount)
    mail = ctx.call(send_receipt, order_id=order_id, lines=[charge, post])
    return {"reservation": reservation, "charge": charge, "quote": quote, "post": post, "mail": mail}


@workflow
async def checkout_async(ctx: Context, order_id: str, amount: int) -> dict[str, Any]:
    placed_at = ctx.now()
    token = ctx.uuid()
    WORLD.seen.append((placed_at.timestamp(), str(token)))
    reservation = await ctx.call(reserve_stock, order_id=order_id, qty=2)
    charge = await ctx.call(charge_card, order_id=order_id, amount=amount)
    await ctx.sleep(0.01)
    quote = await ctx.call(shipping_quote, order_id=order_id)
    post = await ctx.call(post_to_ledger, order_id=order_id, amount=amount)
    mail = await ctx.call(send_receipt, order_id=order_id, lines=[charge, post])
    return {"reservation": reservation, "charge": charge, "quote": quote, "post": post, "mail": mail}


INPUT = {"order_id": "o-42", "amount": 120}
IDEMPOTENT_KEYS = {f"{RUN_ID}:{step}" for step in (3, 4, 6, 8)}
LEDGER_KEY = f"{RUN_ID}:7"


# -- comparing journals --------------------------------------------------------------


def normalize(events: list[ev.Event]) -> list[tuple[str, dict[str, Any]]]:
    """The journal with what may legitimately differ between executions taken out.

    * ``RunRecovered`` is dropped: it records the takeover itself, which the uninterrupted
      run did not need.
    * ``StepReconciled(applied=True, result=r)`` becomes ``StepCompleted(result=r)``: the
      same outcome, learned from the tool's reconcile hook instead of seen live.
    * ``StepReconciled(applied=False)`` is dropped together with the ``StepStarted`` it
      settles: an intent recorded before a crash that, the hook says, never took effect.
      The engine then makes the call again as the next attempt (attempt n+1, because
      attempt numbers count recorded intents), so later attempt numbers of that step are
      shifted back by one.
    * Values that are different on every execution by nature are compared by shape only:
      ``ctx.now()`` (a float), ``ctx.uuid()`` (a valid UUID), ``TimerSet.fire_at`` (now plus
      the delay) and ``StepFailed.retry_in`` (backoff with random jitter). The values seen
      by the workflow are checked against the journal separately.
    * Timestamps, sequence numbers and hashes are not part of decoded events; the hash
      chain of each final journal is verified on its own.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    shift: Counter[int] = Counter()
    for event in events:
        data = event.model_dump(mode="json")
        name = event.type_name
        if isinstance(event, ev.RunRecovered):
            continue
        if isinstance(event, ev.StepReconciled):
            if event.applied:
                out.append(("StepCompleted", {"step_id": event.step_id, "result": event.result}))
            else:
                intent = max(i for i, (n, d) in enumerate(out)
                             if n == "StepStarted" and d["step_id"] == event.step_id)
                assert intent == len(out) - 1, "a reconciled intent must be the step's last event"
                del out[intent]
                shift[event.step_id] += 1
            continue
        if isinstance(event, ev.StepStarted | ev.StepFailed):
            data["attempt"] -= shift[event.step_id]
        if isinstance(event, ev.ValueRecorded):
            if event.kind == "now":
                assert isinstance(event.value, float)
                data["value"] = "<now>"
            else:
                uuid.UUID(str(event.value))
                data["value"] = "<uuid>"
        if isinstance(event, ev.TimerSet):
            assert event.fire_at > 0
            data["fire_at"] = "<fire_at>"
        if isinstance(event, ev.StepFailed) and event.retry_in is not None:
            assert event.retry_in > 0
            data["retry_in"] = "<retry_in>"
        out.append((name, data))
    return out


# -- running scenarios ---------------------------------------------------------------


@dataclass
class Outcome:
    status: RunStatus
    result: str | None
    events: list[ev.Event]
    appends: int
    recovered: int
    batches: list[list[EncodedEvent]]


def fresh_world(settings: Settings) -> None:
    global WORLD
    WORLD = World(db=db_path_of(settings))


def db_path_of(settings: Settings) -> Path:
    return Path(settings.database_url.removeprefix("sqlite:///"))


def run_scenario(settings: Settings, wf: Any, crash_at: int | None, when: str) -> Outcome:
    """Run ``wf`` with a store that crashes at ``crash_at``; if it did, resume it with a
    new runtime on the same file and drive it to the end."""
    fresh_world(settings)
    first, store = crashing_baton(settings, crash_at, when)
    crashed = False
    try:
        first.start(wf, INPUT, run_id=RUN_ID)
        try:
            first.drive(RUN_ID)
        except SimulatedCrash:
            crashed = True
    finally:
        first.close()
    appends = store.appends
    if crashed:
        expire_lease(db_path_of(settings), RUN_ID)
        with Baton(settings) as second:
            second.register(wf, ref=second.get_run(RUN_ID).workflow_ref)
            second.drive(RUN_ID)
    with Baton(settings) as reader:
        rows = reader.journal(RUN_ID)
        assert verify_chain(rows) is None, "the resumed journal's hash chain is broken"
        record = reader.get_run(RUN_ID)
        events = [decode(r) for r in rows]
    return Outcome(record.status, record.outcome, events, appends,
                   sum(isinstance(e, ev.RunRecovered) for e in events), store.batches)


def check_world(where: str) -> list[str]:
    problems = []
    if dict(WORLD.applied) != dict.fromkeys(IDEMPOTENT_KEYS, 1):
        problems.append(f"{where}: idempotent effects {dict(WORLD.applied)}")
    if WORLD.ledger != [(LEDGER_KEY, INPUT["amount"])]:
        problems.append(f"{where}: ledger {WORLD.ledger}")
    return problems


def check_seen_values(where: str, events: list[ev.Event]) -> list[str]:
    """The ``now``/``uuid`` the last execution of the workflow saw are the recorded ones."""
    recorded = {e.kind: e.value for e in events if isinstance(e, ev.ValueRecorded)}
    last_now, last_uuid = WORLD.seen[-1]
    if recorded.get("uuid") != last_uuid or abs(float(recorded.get("now") or 0) - last_now) > 1e-6:
        return [f"{where}: workflow saw {WORLD.seen[-1]}, journal holds {recorded}"]
    return []


def compare_journals(where: str, actual: list[tuple[str, dict[str, Any]]],
                     expected: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if actual == expected:
        return []
    for i, (got, want) in enumerate(zip(actual, expected, strict=False)):
        if got != want:
            return [f"{where}: journal differs at event {i}: {got} != {want}"]
    return [f"{where}: journal has {len(actual)} events instead of {len(expected)}: "
            f"{[name for name, _ in actual]}"]


@pytest.mark.parametrize("wf", [checkout, checkout_async], ids=["sync", "async"])
def test_resuming_at_every_crash_point_gives_the_same_run(tmp_path: Path, wf: Any) -> None:
    baseline = run_scenario(make_settings(tmp_path / "baseline"), wf, None, "before")
    assert baseline.status is RunStatus.COMPLETED, baseline.result
    assert baseline.recovered == 0
    assert check_world("baseline") == []
    expected = normalize(baseline.events)
    kinds = [name for name, _ in expected]
    # the run exercises what it is meant to: retries, a timer, doubt-capable intents
    assert kinds.count("StepFailed") == 2 and "TimerFired" in kinds and "ValueRecorded" in kinds
    assert baseline.appends >= 10

    problems: list[str] = []
    scenarios = 0
    for k in range(1, baseline.appends + 1):
        for when in ("before", "after"):
            where = f"crash {when} append {k}"
            scenarios += 1
            got = run_scenario(make_settings(tmp_path / f"{when}-{k}"), wf, k, when)
            if got.status is not RunStatus.COMPLETED:
                problems.append(f"{where}: status {got.status.value}: {got.result}")
                continue
            if got.result != baseline.result:
                problems.append(f"{where}: result {got.result} != {baseline.result}")
            problems += check_world(where)
            problems += check_seen_values(where, got.events)
            finished_before_crash = when == "after" and k == baseline.appends
            if got.recovered != (0 if finished_before_crash else 1):
                problems.append(f"{where}: {got.recovered} RunRecovered events")
            problems += compare_journals(where, normalize(got.events), expected)
    assert scenarios == 2 * baseline.appends
    assert not problems, "\n".join(problems)


def test_the_crash_points_cover_doubt_in_both_directions(tmp_path: Path) -> None:
    """The two crash points around the non-idempotent post are the interesting ones: one
    leaves an intent that never took effect, the other a call that did. Both are settled
    by the reconcile hook, without posting twice."""
    baseline = run_scenario(make_settings(tmp_path / "baseline"), checkout, None, "before")
    intent = 1 + next(i for i, batch in enumerate(baseline.batches)
                      if any(isinstance(e := decode(r), ev.StepStarted) and e.name == "post_to_ledger"
                             for r in batch))

    not_applied = run_scenario(make_settings(tmp_path / "intent"), checkout, intent, "after")
    (reconciled,) = [e for e in not_applied.events if isinstance(e, ev.StepReconciled)]
    assert not reconciled.applied and WORLD.ledger == [(LEDGER_KEY, 120)]
    assert [e.attempt for e in not_applied.events
            if isinstance(e, ev.StepStarted) and e.name == "post_to_ledger"] == [1, 2]

    applied = run_scenario(make_settings(tmp_path / "effect"), checkout, intent + 1, "before")
    (reconciled,) = [e for e in applied.events if isinstance(e, ev.StepReconciled)]
    assert reconciled.applied and reconciled.result == "post-o-42-120"
    assert WORLD.ledger == [(LEDGER_KEY, 120)] and WORLD.calls[LEDGER_KEY] == 1


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_during_recovery_is_recovered_from_too(tmp_path: Path, when: str) -> None:
    """The worker that takes over crashes as well, at each of its own appends in turn."""
    baseline = run_scenario(make_settings(tmp_path / "baseline"), checkout, None, "before")
    expected = normalize(baseline.events)
    # The first worker dies before recording the first failed attempt of the retried step;
    # its successor then makes 1 (RunRecovered) + the appends from the 5th on, and dies at
    # each of those in turn.
    first_crash = 5
    problems: list[str] = []
    for j in range(1, 1 + baseline.appends - first_crash + 1 + 1):
        settings = make_settings(tmp_path / f"{when}-{j}")
        fresh_world(settings)
        first, _ = crashing_baton(settings, first_crash, "before")
        first.start(checkout, INPUT, run_id=RUN_ID)
        with pytest.raises(SimulatedCrash):
            first.drive(RUN_ID)
        first.close()
        expire_lease(db_path_of(settings), RUN_ID)
        second, _ = crashing_baton(settings, j, when)
        second.register(checkout, ref=second.get_run(RUN_ID).workflow_ref)
        try:
            with pytest.raises(SimulatedCrash):  # the resumer makes at least j appends
                second.drive(RUN_ID)
        finally:
            second.close()
        expire_lease(db_path_of(settings), RUN_ID)
        with Baton(settings) as third:
            third.register(checkout, ref=third.get_run(RUN_ID).workflow_ref)
            record = third.drive(RUN_ID)
            events = third.events(RUN_ID)
        where = f"second crash {when} append {j}"
        if record.status is not RunStatus.COMPLETED or record.outcome != baseline.result:
            problems.append(f"{where}: {record.status.value} {record.outcome}")
        problems += check_world(where)
        problems += compare_journals(where, normalize(events), expected)
    assert not problems, "\n".join(problems)
