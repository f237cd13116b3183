"""Behaviour of the engine, one story per test: steps, tools, retries, timeouts, doubt,
compensation, timers, signals, replay-safe values, non-determinism, crash loops, fencing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from baton import (
    Baton,
    Context,
    Reconciled,
    RunStatus,
    Settings,
    SqliteStore,
    StepError,
    StoreError,
    ToolTimeout,
    ToolValidationError,
    Workflow,
    tool,
    workflow,
)
from baton.journal import EncodedEvent, IndexUpdate
from baton.journal import events as ev
from baton.testing import FakeClock
from engine_support import (
    CrashingStore,
    SimulatedCrash,
    crashing_baton,
    db_path,
    event_types,
    expire_lease,
    make_settings,
    of_type,
)

# -- module-level tools and types (so string annotations resolve) -----------------------


class Money(BaseModel):
    amount: Decimal
    currency: str


class Receipt(BaseModel):
    receipt_id: str
    paid: Money
    issued_at: datetime
    lines: list[str]


ISSUED: list[str] = []


@tool(idempotent=True)
def issue_receipt(order_id: str, amount: Decimal, *, idempotency_key: str) -> Receipt:
    ISSUED.append(idempotency_key)
    return Receipt(receipt_id=f"r-{order_id}", paid=Money(amount=amount, currency="EUR"),
                   issued_at=datetime(2026, 11, 26, 11, 44, 14, 123456),
                   lines=["widget", "gadget"])


def recorded_keys(baton: Baton, run_id: str) -> list[str]:
    """The idempotency keys of every recorded attempt (started, or ran in one event)."""
    return [e.idempotency_key for e in baton.events(run_id) if isinstance(e, ev.StepStarted | ev.StepRan)]


# -- sync and async ------------------------------------------------------------------


def test_sync_workflow_calls_sync_and_async_tools(baton: Baton) -> None:
    @tool(idempotent=True)
    def add(a: int, b: int) -> int:
        return a + b

    @tool(idempotent=True)
    async def mul(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a * b

    @workflow
    def calc(ctx: Context, x: int) -> dict[str, int]:
        s = ctx.call(add, x, 2)
        p = ctx.call(mul, a=s, b=10)
        return {"sum": s, "product": p}

    record = baton.run(calc, {"x": 3})
    assert record.status is RunStatus.COMPLETED
    assert record.outcome == '{"product":50,"sum":5}'
    # an idempotent call that returned is one event: its intent needs no record of its own
    assert event_types(baton, record.run_id) == ["RunStarted", "StepRan", "StepRan", "RunCompleted"]
    ran = of_type(baton, record.run_id, ev.StepRan)
    assert [(s.step_id, s.name, s.args, s.result) for s in ran] == [
        (1, "add", {"a": 3, "b": 2}, 5), (2, "mul", {"a": 5, "b": 10}, 50),
    ]


def test_async_workflow_awaits_sync_and_async_tools(baton: Baton) -> None:
    threads: list[str] = []

    @tool(idempotent=True)
    def shout(text: str) -> str:
        threads.append(threading.current_thread().name)
        return text.upper()

    @tool(idempotent=True)
    async def exclaim(text: str) -> str:
        await asyncio.sleep(0.001)
        return text + "!"

    @workflow
    async def greet(ctx: Context, name: str) -> str:
        loud = await ctx.call(shout, text=name)
        return str(await ctx.call(exclaim, text=loud))

    record = baton.run(greet, {"name": "ada"})
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert record.outcome == '"ADA!"'
    # a blocking tool does not block the workflow's event loop: it runs in the tool pool
    assert threads and threads[0].startswith("baton-tool")


# -- Pydantic results ----------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_pydantic_results_are_identical_live_and_on_replay(baton: Baton, is_async: bool) -> None:
    ISSUED.clear()
    seen: list[Receipt] = []

    if is_async:
        @workflow
        async def checkout(ctx: Context, order_id: str) -> dict[str, Any]:
            receipt = await ctx.call(issue_receipt, order_id=order_id, amount=Decimal("12.50"))
            seen.append(receipt)
            await ctx.wait_for("shipped")
            return receipt.model_dump(mode="json")
        wf = checkout
    else:
        @workflow
        def checkout_sync(ctx: Context, order_id: str) -> dict[str, Any]:
            receipt = ctx.call(issue_receipt, order_id=order_id, amount=Decimal("12.50"))
            seen.append(receipt)
            ctx.wait_for("shipped")
            return receipt.model_dump(mode="json")
        wf = checkout_sync

    run_id = baton.start(wf, {"order_id": "o-7"})
    assert baton.drive(run_id).status is RunStatus.WAITING
    baton.signal(run_id, "shipped")
    record = baton.drive(run_id)
    assert record.status is RunStatus.COMPLETED, record.outcome
    live, replayed = seen
    assert isinstance(live, Receipt) and isinstance(replayed, Receipt)
    assert live == replayed
    assert live.paid.amount == Decimal("12.50") and isinstance(replayed.paid.amount, Decimal)
    assert replayed.issued_at == datetime(2026, 11, 26, 11, 44, 14, 123456)
    assert [f"{run_id}:1"] == ISSUED  # replay did not call the tool again


# -- argument validation -------------------------------------------------------------


def test_bad_arguments_never_reach_the_tool_and_the_workflow_can_catch_it(baton: Baton) -> None:
    calls: list[Any] = []

    @tool(idempotent=True)
    def charge(amount: float, currency: str = "EUR") -> str:
        calls.append(amount)
        return "ok"

    @workflow
    def pay(ctx: Context) -> list[str]:
        errors: list[str] = []
        for kwargs in ({"amount": "a lot"}, {"amount": 5, "colour": "red"}):
            try:
                ctx.call(charge, **kwargs)
            except ToolValidationError as exc:
                assert isinstance(exc, StepError)
                errors.append(f"{exc.step_id}:{exc.message}")
        ctx.wait_for("again")
        return errors

    run_id = baton.start(pay)
    assert baton.drive(run_id).status is RunStatus.WAITING
    assert calls == []
    failed = of_type(baton, run_id, ev.StepFailed)
    assert [(f.step_id, f.final, f.error.code) for f in failed] == [
        (1, True, "tool_validation_error"), (2, True, "tool_validation_error"),
    ]
    baton.signal(run_id, "again")
    record = baton.drive(run_id)  # replay raises the recorded validation errors again
    assert record.status is RunStatus.COMPLETED
    assert calls == []
    first, second = json.loads(record.outcome or "")
    assert first.startswith("1:") and "amount" in first and "charge" in first
    assert second.startswith("2:") and "colour" in second


# -- retries -------------------------------------------------------------------------


def test_flaky_tool_is_retried_with_backoff_under_one_idempotency_key(
        clocked_baton: Baton, clock: FakeClock) -> None:
    keys: list[str] = []

    @tool(idempotent=True, retries=3, backoff=1.0)
    def flaky(x: int, *, idempotency_key: str) -> int:
        keys.append(idempotency_key)
        if len(keys) <= 2:
            raise ConnectionError(f"try again ({len(keys)})")
        return x * 2

    @workflow
    def wf(ctx: Context) -> int:
        return int(ctx.call(flaky, 21))

    record = clocked_baton.run(wf)
    run_id = record.run_id
    assert record.status is RunStatus.COMPLETED and record.outcome == "42"
    assert keys == [f"{run_id}:1"] * 3
    failed = of_type(clocked_baton, run_id, ev.StepFailed)
    assert [(f.attempt, f.final, f.error.type) for f in failed] == [
        (1, False, "ConnectionError"), (2, False, "ConnectionError"),
    ]
    assert [s.attempt for s in of_type(clocked_baton, run_id, ev.StepStarted)] == [1, 2]
    assert [s.attempt for s in of_type(clocked_baton, run_id, ev.StepRan)] == [3]
    assert set(recorded_keys(clocked_baton, run_id)) == {f"{run_id}:1"}
    # exponential backoff with jitter in [0.5, 1): ~1s then ~2s, and the journal says so
    delays = [f.retry_in for f in failed]
    assert clock.slept == delays
    assert delays[0] is not None and 0.5 <= delays[0] < 1.0
    assert delays[1] is not None and 1.0 <= delays[1] < 2.0


class Forbidden(Exception):
    pass


class NotRetryable(Exception):
    retryable = False


@pytest.mark.parametrize("error", [Forbidden, NotRetryable], ids=["give_up_on", "retryable_false"])
def test_non_retryable_errors_fail_the_step_at_once(baton: Baton, error: type[Exception]) -> None:
    calls = Counter[str]()

    @tool(idempotent=True, retries=5, backoff=0.001, give_up_on=(Forbidden,))
    def guarded(who: str) -> str:
        calls[who] += 1
        raise error(f"{who} may not")

    @workflow
    def wf(ctx: Context) -> str:
        try:
            ctx.call(guarded, "eve")
        except StepError as exc:
            return f"{exc.error_type}: {exc.message}"
        return "unreachable"

    record = baton.run(wf)
    assert record.status is RunStatus.COMPLETED
    assert calls == {"eve": 1}
    assert record.outcome is not None and record.outcome.startswith(f'"{error.__name__}:')
    (failed,) = of_type(baton, record.run_id, ev.StepFailed)
    assert failed.final and failed.retry_in is None and not failed.error.retryable


def test_exhausted_retries_fail_the_run(baton: Baton) -> None:
    calls: list[int] = []

    @tool(idempotent=True, retries=2, backoff=0.001)
    def down() -> None:
        calls.append(1)
        raise ConnectionError("service down")

    @workflow
    def wf(ctx: Context) -> None:
        ctx.call(down)

    record = baton.run(wf)
    assert record.status is RunStatus.FAILED
    assert len(calls) == 3
    assert record.outcome is not None and "service down" in record.outcome
    failed = of_type(baton, record.run_id, ev.StepFailed)
    assert [(f.attempt, f.final) for f in failed] == [(1, False), (2, False), (3, True)]
    (run_failed,) = of_type(baton, record.run_id, ev.RunFailed)
    assert run_failed.error.type == "ConnectionError"


# -- timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-workflow", "async-workflow"])
def test_a_slow_tool_times_out(baton: Baton, is_async: bool) -> None:
    release = threading.Event()

    @tool(idempotent=True, timeout=0.05)
    def slow() -> str:
        release.wait(5)
        return "late"

    if is_async:
        @workflow
        async def wf(ctx: Context) -> str:
            try:
                await ctx.call(slow)
            except ToolTimeout as exc:
                return exc.message
            return "no timeout"
    else:
        @workflow
        def wf(ctx: Context) -> str:
            try:
                ctx.call(slow)
            except ToolTimeout as exc:
                return exc.message
            return "no timeout"

    try:
        started = time.monotonic()
        record = baton.run(wf)
        assert time.monotonic() - started < 2
    finally:
        release.set()
    assert record.status is RunStatus.COMPLETED
    assert record.outcome == '"slow failed: TimeoutError: did not finish within 0.05s"'
    (failed,) = of_type(baton, record.run_id, ev.StepFailed)
    assert failed.error.code == "tool_timeout" and failed.final


def test_a_timed_out_non_idempotent_call_without_reconcile_needs_attention(baton: Baton) -> None:
    release = threading.Event()
    sent: list[str] = []

    @tool(timeout=0.05)
    def send_wire(amount: int, *, idempotency_key: str) -> str:
        sent.append(idempotency_key)
        release.wait(5)
        return "wire-1"

    @workflow
    def wf(ctx: Context) -> str:
        return str(ctx.call(send_wire, 100))

    try:
        record = baton.run(wf)
    finally:
        release.set()
    run_id = record.run_id
    assert record.status is RunStatus.NEEDS_ATTENTION
    assert record.outcome is not None and f"{run_id}:1" in record.outcome
    assert not of_type(baton, run_id, ev.StepFailed)  # a timeout here is doubt, not failure
    baton.resolve_step(run_id, 1, applied=True, result="wire-1", note="bank says it went out")
    record = baton.drive(run_id)
    assert record.status is RunStatus.COMPLETED and record.outcome == '"wire-1"'
    assert sent == [f"{run_id}:1"]


def test_a_timed_out_call_still_running_is_not_reconciled_or_retried(baton: Baton) -> None:
    """A sync call abandoned by its timeout may still take effect: asking ``reconcile`` now
    could hear "not applied" just before it lands, and a retry would then apply it twice."""
    release = threading.Event()
    asked: list[str] = []
    ledger: list[str] = []

    def check(amount: int, idempotency_key: str) -> Reconciled:
        asked.append(idempotency_key)
        return Reconciled(idempotency_key in ledger, "wire-1")

    @tool(timeout=0.05, retries=2, reconcile=check)
    def send_wire(amount: int, *, idempotency_key: str) -> str:
        release.wait(5)
        ledger.append(idempotency_key)
        return "wire-1"

    @workflow
    def wf(ctx: Context) -> str:
        return str(ctx.call(send_wire, 100))

    record = baton.run(wf)
    release.set()
    assert record.status is RunStatus.NEEDS_ATTENTION
    assert record.outcome is not None and "still running" in record.outcome
    assert asked == []
    time.sleep(0.2)
    assert ledger == [f"{record.run_id}:1"]  # it did land, once


def test_a_call_that_finishes_in_its_grace_period_keeps_its_result(baton: Baton) -> None:
    @tool(timeout=0.1)
    def send_wire(amount: int) -> str:
        time.sleep(0.15)
        return "wire-1"

    @workflow
    def wf(ctx: Context) -> str:
        return str(ctx.call(send_wire, 100))

    record = baton.run(wf)
    assert record.status is RunStatus.COMPLETED and record.outcome == '"wire-1"'


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_cancelled_async_call_is_reconciled(baton: Baton, applied: bool) -> None:
    def check(amount: int, idempotency_key: str) -> Reconciled:
        return Reconciled(applied, f"wire-for-{amount}" if applied else None)

    @tool(timeout=0.05, reconcile=check)
    async def send_wire(amount: int) -> str:
        await asyncio.sleep(5)
        return "late"

    @workflow
    async def wf(ctx: Context) -> str:
        try:
            return str(await ctx.call(send_wire, 100))
        except ToolTimeout:
            return "timed out"

    record = baton.run(wf)
    assert record.status is RunStatus.COMPLETED
    assert record.outcome == ('"wire-for-100"' if applied else '"timed out"')
    (reconciled,) = of_type(baton, record.run_id, ev.StepReconciled)
    assert reconciled.applied is applied


# -- idempotency keys ----------------------------------------------------------------


def test_idempotency_key_is_stable_per_step_across_a_crash(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    keys: list[tuple[str, str]] = []
    crash = {"on": True}
    victim: list[Any] = []

    @tool(idempotent=True)
    def reserve(item: str, *, idempotency_key: str) -> str:
        keys.append((item, idempotency_key))
        if item == "b" and crash["on"]:
            crash["on"] = False
            victim[0].die()
            raise SimulatedCrash("killed mid-call")
        return f"{item}-ok"

    @workflow
    def wf(ctx: Context) -> list[str]:
        return [ctx.call(reserve, "a"), ctx.call(reserve, "b")]

    first, store = crashing_baton(settings)
    victim.append(store)
    run_id = first.start(wf)
    with pytest.raises(SimulatedCrash):
        first.drive(run_id)
    first.close()
    expire_lease(db_path(tmp_path), run_id)
    with Baton(settings) as second:
        second.register(wf, ref=second.get_run(run_id).workflow_ref)
        assert second.drive(run_id).status is RunStatus.COMPLETED
        assert keys == [("a", f"{run_id}:1"), ("b", f"{run_id}:2"), ("b", f"{run_id}:2")]
        assert recorded_keys(second, run_id) == [f"{run_id}:1", f"{run_id}:2"]
        (recovered,) = of_type(second, run_id, ev.RunRecovered)
        assert recovered.previous_owner == first.owner and recovered.worker == second.owner


# -- compensation --------------------------------------------------------------------


def _saga(undone: list[tuple[str, Any, str]], fail_undo: str | None = None) -> list[Any]:
    def undo(name: str, result: Any, idempotency_key: str) -> None:
        if name == fail_undo:
            raise RuntimeError(f"cannot undo {name}")
        undone.append((name, result, idempotency_key))

    @tool(idempotent=True, compensate=undo)
    def book(name: str) -> str:
        return f"booked-{name}"

    @tool(idempotent=True)
    def no_undo(name: str) -> str:
        return name

    @tool(idempotent=True)
    def fail(reason: str) -> None:
        raise ValueError(reason)

    return [book, no_undo, fail]


def test_compensations_run_newest_first_when_a_later_step_fails(baton: Baton) -> None:
    undone: list[tuple[str, Any, str]] = []
    book, no_undo, fail = _saga(undone, fail_undo="car")

    @workflow
    def trip(ctx: Context) -> None:
        ctx.call(book, "flight")
        ctx.call(no_undo, "note")
        ctx.call(book, "car")
        ctx.call(book, "hotel")
        ctx.call(fail, "card declined")

    record = baton.run(trip)
    run_id = record.run_id
    assert record.status is RunStatus.FAILED and "card declined" in (record.outcome or "")
    assert undone == [("hotel", "booked-hotel", f"{run_id}:4:compensate"),
                      ("flight", "booked-flight", f"{run_id}:1:compensate")]
    compensated = of_type(baton, run_id, ev.Compensated)
    assert [(c.step_id, c.name, c.ok) for c in compensated] == [(4, "book", True), (3, "book", False),
                                                              (1, "book", True)]
    assert compensated[1].error is not None and "cannot undo car" in compensated[1].error.message
    assert event_types(baton, run_id)[-1] == "RunFailed"


def test_cancelling_a_waiting_run_compensates_newest_first(baton: Baton) -> None:
    undone: list[tuple[str, Any, str]] = []
    book, _, _ = _saga(undone)
    after_cancel: list[str] = []

    @workflow
    def trip(ctx: Context) -> None:
        ctx.call(book, "flight")
        ctx.call(book, "hotel")
        ctx.wait_for("confirm")
        after_cancel.append("went on")
        ctx.call(book, "museum")

    run_id = baton.start(trip)
    assert baton.drive(run_id).status is RunStatus.WAITING
    baton.cancel(run_id)
    record = baton.drive(run_id)
    assert record.status is RunStatus.CANCELLED
    assert [u[0] for u in undone] == ["hotel", "flight"]
    assert after_cancel == []
    assert [(c.step_id, c.ok) for c in of_type(baton, run_id, ev.Compensated)] == [(2, True), (1, True)]
    assert event_types(baton, run_id)[-3:] == ["Compensated", "Compensated", "RunCancelled"]
    assert not of_type(baton, run_id, ev.RunFailed)


# -- timers --------------------------------------------------------------------------


def test_a_short_sleep_is_waited_in_process(baton: Baton) -> None:
    @workflow
    def nap(ctx: Context) -> str:
        ctx.sleep(0.05)
        return "rested"

    started = time.monotonic()
    record = baton.run(nap)
    assert time.monotonic() - started >= 0.05
    assert record.status is RunStatus.COMPLETED
    assert event_types(baton, record.run_id) == ["RunStarted", "TimerSet", "TimerFired", "RunCompleted"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_long_sleep_suspends_the_run_until_it_is_due(
        clocked_baton: Baton, clock: FakeClock, is_async: bool) -> None:
    baton = clocked_baton
    calls: list[str] = []

    @tool(idempotent=True)
    def remind(who: str) -> str:
        calls.append(who)
        return f"reminded {who}"

    if is_async:
        @workflow
        async def later(ctx: Context, who: str) -> str:
            await ctx.sleep(3600)
            return str(await ctx.call(remind, who))
        wf = later
    else:
        @workflow
        def later_sync(ctx: Context, who: str) -> str:
            ctx.sleep(3600)
            return str(ctx.call(remind, who))
        wf = later_sync

    t0 = clock.time()
    run_id = baton.start(wf, {"who": "bob"})
    record = baton.drive(run_id)
    assert record.status is RunStatus.SLEEPING
    assert record.wake_at == pytest.approx(t0 + 3600)
    assert baton.store.runnable(clock.time()) == []
    clock.advance(1800)
    assert baton.drive(run_id).status is RunStatus.SLEEPING  # not yet due
    assert calls == []
    clock.advance(1800)
    assert [r.run_id for r in baton.store.runnable(clock.time())] == [run_id]
    assert baton.worker().run(until_idle=True) == 1
    record = baton.get_run(run_id)
    assert record.status is RunStatus.COMPLETED and record.outcome == '"reminded bob"'
    assert calls == ["bob"]
    assert event_types(baton, run_id).count("TimerFired") == 1


def test_drive_can_wait_for_timers(clocked_baton: Baton, clock: FakeClock) -> None:
    @workflow
    def twice(ctx: Context) -> int:
        ctx.sleep(60)
        ctx.sleep(120)
        return 2

    t0 = clock.time()
    record = clocked_baton.run(twice)
    assert record.status is RunStatus.SLEEPING
    record = clocked_baton.drive(record.run_id, wait_for_timers=True)
    assert record.status is RunStatus.COMPLETED
    assert clock.time() >= t0 + 180


# -- signals -------------------------------------------------------------------------


def test_a_signal_sent_before_the_wait_is_kept_for_it(baton: Baton) -> None:
    @workflow
    def approve(ctx: Context) -> Any:
        return ctx.wait_for("approval")

    run_id = baton.start(approve)
    baton.signal(run_id, "other", "ignored")
    baton.signal(run_id, "approval", {"by": "alice"})
    record = baton.drive(run_id)
    assert record.status is RunStatus.COMPLETED and record.outcome == '{"by":"alice"}'
    (received,) = of_type(baton, run_id, ev.SignalReceived)
    assert received.data == {"by": "alice"} and received.step_id == 1
    assert [s.name for s in baton.store.pending_signals(run_id)] == ["other"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_signal_sent_during_the_wait_wakes_the_run(baton: Baton, is_async: bool) -> None:
    if is_async:
        @workflow
        async def approve(ctx: Context) -> Any:
            first = await ctx.wait_for("approval")
            second = await ctx.wait_for("approval")
            return [first, second]
    else:
        @workflow
        def approve(ctx: Context) -> Any:
            return [ctx.wait_for("approval"), ctx.wait_for("approval")]

    run_id = baton.start(approve)
    record = baton.drive(run_id)
    assert record.status is RunStatus.WAITING and record.waiting_for == "approval"
    baton.signal(run_id, "approval", 1)
    assert baton.drive(run_id).status is RunStatus.WAITING
    baton.signal(run_id, "approval", 2)
    record = baton.drive(run_id)
    assert record.status is RunStatus.COMPLETED and record.outcome == "[1,2]"
    assert event_types(baton, run_id).count("SignalAwaited") == 2


def test_a_wait_that_times_out_returns_the_default(clocked_baton: Baton, clock: FakeClock) -> None:
    baton = clocked_baton

    @workflow
    def approve(ctx: Context) -> Any:
        return ctx.wait_for("approval", timeout=300, default={"approved": False})

    run_id = baton.start(approve)
    record = baton.drive(run_id)
    assert record.status is RunStatus.WAITING
    assert record.wake_at == pytest.approx(clock.time() + 300)
    clock.advance(301)
    record = baton.drive(run_id)
    assert record.status is RunStatus.COMPLETED and record.outcome == '{"approved":false}'
    assert event_types(baton, run_id)[-2:] == ["TimerFired", "RunCompleted"]
    # a signal that arrives too late is not consumed by the finished wait
    with pytest.raises(Exception, match="completed"):
        baton.signal(run_id, "approval", True)


# -- replay-safe values --------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_now_and_uuid_are_the_same_on_replay(baton: Baton, is_async: bool) -> None:
    seen: list[tuple[datetime, uuid.UUID]] = []

    if is_async:
        @workflow
        async def stamp(ctx: Context) -> str:
            seen.append((ctx.now(), ctx.uuid()))
            await ctx.wait_for("go")
            return "ok"
    else:
        @workflow
        def stamp(ctx: Context) -> str:
            seen.append((ctx.now(), ctx.uuid()))
            ctx.wait_for("go")
            return "ok"

    run_id = baton.start(stamp)
    baton.drive(run_id)
    time.sleep(0.01)
    baton.signal(run_id, "go")
    assert baton.drive(run_id).status is RunStatus.COMPLETED
    assert len(seen) == 2 and seen[0] == seen[1]
    when, ident = seen[0]
    assert when.tzinfo is not None
    recorded = of_type(baton, run_id, ev.ValueRecorded)
    assert [r.kind for r in recorded] == ["now", "uuid"]
    assert recorded[0].value == pytest.approx(when.timestamp(), abs=1e-6)  # datetime keeps µs
    assert recorded[1].value == str(ident)


# -- non-determinism -----------------------------------------------------------------


@tool(idempotent=True)
def look_up(order_id: str) -> str:
    return f"found {order_id}"


@tool(idempotent=True)
def delete_everything(order_id: str) -> str:
    raise AssertionError("a changed workflow must not reach the world")


@workflow
def original(ctx: Context, order_id: str) -> str:
    found = ctx.call(look_up, order_id)
    ctx.wait_for("go")
    return str(found)


@workflow
def changed(ctx: Context, order_id: str) -> str:
    ctx.call(delete_everything, order_id)
    ctx.wait_for("go")
    return "changed"


def test_a_changed_workflow_is_stopped_for_attention(settings: Settings) -> None:
    with Baton(settings) as first:
        run_id = first.start(original, {"order_id": "o-1"})
        assert first.drive(run_id).status is RunStatus.WAITING
        ref = first.get_run(run_id).workflow_ref
    with Baton(settings) as second:
        second.register(changed, ref=ref)
        second.signal(run_id, "go")
        record = second.drive(run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION
        assert record.outcome is not None
        assert "look_up" in record.outcome and "delete_everything" in record.outcome
        (attention,) = of_type(second, run_id, ev.NeedsAttention)
        assert attention.step_id == 1
        # driving again does not pile up identical notices
        assert second.drive(run_id).status is RunStatus.NEEDS_ATTENTION
        assert len(of_type(second, run_id, ev.NeedsAttention)) == 1
    with Baton(settings) as fixed:  # with the original code back, the run goes on
        fixed.register(original, ref=ref)
        record = fixed.drive(run_id)
        assert record.status is RunStatus.COMPLETED and record.outcome == '"found o-1"'


# -- doubt ---------------------------------------------------------------------------


class Bank:
    """A non-idempotent service that remembers which idempotency keys it has seen."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.calls = 0


def _crash_in_doubt(settings: Settings, wf: Any, victim: list[Any]) -> str:
    """Start ``wf`` and let its worker die in a call; leave the run ready to be taken over."""
    crashed, store = crashing_baton(settings)
    victim.append(store)
    run_id = crashed.start(wf)
    with pytest.raises(SimulatedCrash):
        crashed.drive(run_id)
    crashed.close()
    expire_lease(Path(settings.database_url.removeprefix("sqlite:///")), run_id)
    return run_id


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_an_in_doubt_step_without_reconcile_waits_for_a_person(tmp_path: Path, applied: bool) -> None:
    settings = make_settings(tmp_path)
    bank, victim = Bank(), []

    @tool
    def transfer(amount: int, *, idempotency_key: str) -> str:
        bank.calls += 1
        if applied:
            bank.sent[idempotency_key] = amount
        if bank.calls == 1:  # the worker dies before it can record the outcome
            victim[0].die()
            raise SimulatedCrash("killed")
        return f"tx-{amount}"

    @workflow
    def wf(ctx: Context) -> str:
        return str(ctx.call(transfer, 50))

    run_id = _crash_in_doubt(settings, wf, victim)
    with Baton(settings) as b:
        b.register(wf, ref=b.get_run(run_id).workflow_ref)
        record = b.drive(run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION
        assert "transfer" in (record.outcome or "") and f"{run_id}:1" in (record.outcome or "")
        assert bank.calls == 1  # never re-run on a guess
        assert b.drive(run_id).status is RunStatus.NEEDS_ATTENTION
        assert bank.calls == 1
        b.resolve_step(run_id, 1, applied=applied, result="tx-by-hand" if applied else None)
        record = b.drive(run_id)
        assert record.status is RunStatus.COMPLETED
        if applied:
            assert record.outcome == '"tx-by-hand"' and bank.calls == 1
        else:  # a person said it did not happen: the call is made again, as attempt 2
            assert record.outcome == '"tx-50"' and bank.calls == 2
            assert [s.attempt for s in of_type(b, run_id, ev.StepStarted)] == [1, 2]
        (resolved,) = of_type(b, run_id, ev.StepResolved)
        assert resolved.applied is applied and resolved.by == "operator"


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_in_doubt_step_is_reconciled(tmp_path: Path, applied: bool, is_async: bool) -> None:
    settings = make_settings(tmp_path)
    bank, victim = Bank(), []

    async def check(idempotency_key: str) -> Reconciled:
        await asyncio.sleep(0)
        if idempotency_key in bank.sent:
            return Reconciled(True, f"tx-{bank.sent[idempotency_key]}")
        return Reconciled(False)

    @tool(reconcile=check)
    def transfer(amount: int, *, idempotency_key: str) -> str:
        bank.calls += 1
        if applied or bank.calls > 1:
            bank.sent[idempotency_key] = amount
        if bank.calls == 1:
            victim[0].die()
            raise SimulatedCrash("killed")
        return f"tx-{amount}"

    if is_async:
        @workflow
        async def wf(ctx: Context) -> str:
            return str(await ctx.call(transfer, 50))
    else:
        @workflow
        def wf(ctx: Context) -> str:
            return str(ctx.call(transfer, 50))

    run_id = _crash_in_doubt(settings, wf, victim)
    with Baton(settings) as b:
        b.register(wf, ref=b.get_run(run_id).workflow_ref)
        record = b.drive(run_id)
        assert record.status is RunStatus.COMPLETED, record.outcome
        assert record.outcome == '"tx-50"'
        assert bank.sent == {f"{run_id}:1": 50}
        assert bank.calls == (1 if applied else 2)
        (reconciled,) = of_type(b, run_id, ev.StepReconciled)
        assert reconciled.applied is applied


# -- crash loops and fencing ---------------------------------------------------------


def crash_repeatedly(tmp_path: Path, settings: Settings, wf: Workflow, victim: list[Any], times: int) -> str:
    """Start ``wf`` and let a fresh runtime crash on it ``times`` times (each one's store is
    appended to ``victim`` for the workflow's tools to kill). Returns the run id."""
    run_id = ""
    for attempt in range(times):
        b, store = crashing_baton(settings)
        victim.append(store)
        if attempt == 0:
            run_id = b.start(wf)
        else:
            b.register(wf, ref=b.get_run(run_id).workflow_ref)
        with pytest.raises(SimulatedCrash):
            b.drive(run_id)
        b.close()
        expire_lease(db_path(tmp_path), run_id)
    return run_id


def test_a_run_that_keeps_killing_its_worker_fails_as_a_crash_loop(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_recoveries=3)
    victim: list[Any] = []
    calls: list[str] = []

    @tool(idempotent=True)
    def poison(*, idempotency_key: str) -> None:
        calls.append(idempotency_key)
        victim[-1].die()
        raise SimulatedCrash("out of memory")

    @workflow
    def wf(ctx: Context) -> None:
        ctx.call(poison)

    run_id = crash_repeatedly(tmp_path, settings, wf, victim, settings.max_recoveries + 1)
    with Baton(settings) as b:
        b.register(wf, ref=b.get_run(run_id).workflow_ref)
        record = b.drive(run_id)
        assert record.status is RunStatus.FAILED
        assert record.outcome is not None and "crash loop" in record.outcome
        assert len(calls) == settings.max_recoveries + 1  # not called by the last worker
        assert len(of_type(b, run_id, ev.RunRecovered)) == settings.max_recoveries + 1
        assert event_types(b, run_id)[-1] == "RunFailed"


def test_a_crash_loop_counter_resets_when_the_run_makes_progress(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_recoveries=1)
    victim: list[Any] = []
    crashes = Counter[str]()

    @tool(idempotent=True)
    def shaky(step: str) -> str:
        crashes[step] += 1
        if crashes[step] == 1:  # every step kills its worker once, then succeeds
            victim[-1].die()
            raise SimulatedCrash(step)
        return step

    @workflow
    def wf(ctx: Context) -> list[str]:
        return [ctx.call(shaky, s) for s in ("a", "b", "c")]

    run_id = crash_repeatedly(tmp_path, settings, wf, victim, 3)
    with Baton(settings) as b:
        b.register(wf, ref=b.get_run(run_id).workflow_ref)
        record = b.drive(run_id)
        assert record.status is RunStatus.COMPLETED, record.outcome
        assert len(of_type(b, run_id, ev.RunRecovered)) == 3


def test_a_stale_writer_is_fenced_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    a, b = Baton(settings), Baton(settings)
    calls: list[str] = []
    run_id = ""
    outcome_b: list[Any] = []

    @tool(idempotent=True)
    def slow_step(*, idempotency_key: str) -> str:
        calls.append("slow")
        if len(calls) == 1:
            # A stalls here long enough for its lease to run out; B takes the run over
            # and finishes it while A is still inside the call.
            expire_lease(db_path(tmp_path), run_id)
            outcome_b.append(b.execute(run_id))
        return "done"

    @tool(idempotent=True)
    def next_step() -> str:
        calls.append("next")
        return "next"

    @workflow
    def wf(ctx: Context) -> list[str]:
        return [ctx.call(slow_step), ctx.call(next_step)]

    try:
        run_id = a.start(wf)
        b.register(wf, ref=b.get_run(run_id).workflow_ref)
        assert a.execute(run_id) is None  # A's first append after the stall was refused
        assert outcome_b[0] is not None and outcome_b[0].status is RunStatus.COMPLETED
        assert calls == ["slow", "slow", "next"]  # A never got as far as next_step
        record = a.get_run(run_id)
        assert record.status is RunStatus.COMPLETED and record.owner is None
        assert event_types(a, run_id) == ["RunStarted", "RunRecovered", "StepRan", "StepRan", "RunCompleted"]
        (recovered,) = of_type(a, run_id, ev.RunRecovered)
        assert recovered.previous_owner == a.owner and recovered.worker == b.owner
    finally:
        a.close()
        b.close()


# -- journal failures and shortened workflows ------------------------------------------


class FailingStore(CrashingStore):
    """A store whose ``fail_at``-th append fails with a database error (once)."""

    def __init__(self, inner: SqliteStore, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at = fail_at

    def append(self, run_id: str, expected_head: int, rows: Sequence[EncodedEvent],
               update: IndexUpdate, now: float) -> None:
        self.appends += 1
        if self.appends == self.fail_at:
            raise StoreError("database is locked")
        self.inner.append(run_id, expected_head, rows, update, now)


def test_a_failed_journal_write_stops_the_run_and_cannot_be_swallowed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    calls: list[int] = []

    @tool(idempotent=True)
    def step(i: int) -> int:
        calls.append(i)
        return i

    @workflow
    def careless(ctx: Context) -> list[Any]:
        out: list[Any] = []
        for i in range(3):
            try:
                out.append(ctx.call(step, i))
            except Exception as exc:  # noqa: BLE001 - the point: this must not see store errors
                out.append(repr(exc))
        return out

    store = FailingStore(SqliteStore(db_path(tmp_path)), fail_at=2)
    with Baton(settings, store=store) as b:  # type: ignore[arg-type]
        run_id = b.start(careless)
        with pytest.raises(StoreError, match="database is locked"):
            b.drive(run_id)
        assert calls == [0, 1]  # step 2 ran, its record was lost, nothing ran after it
        assert b.get_run(run_id).status is RunStatus.RUNNING and b.get_run(run_id).owner is None
        assert [e.step_id for e in of_type(b, run_id, ev.StepRan)] == [1]
        record = b.drive(run_id)  # the database is back: step 2 is made again (idempotent)
        assert record.status is RunStatus.COMPLETED and record.outcome == "[0,1,2]"
        assert calls == [0, 1, 1, 2]


def test_a_workflow_changed_to_end_early_is_stopped_for_attention(settings: Settings) -> None:
    with Baton(settings) as first:
        run_id = first.start(original, {"order_id": "o-2"})
        assert first.drive(run_id).status is RunStatus.WAITING
        ref = first.get_run(run_id).workflow_ref

    @workflow
    def shortened(ctx: Context, order_id: str) -> str:
        return str(ctx.call(look_up, order_id))  # no longer waits for "go"

    with Baton(settings) as second:
        second.register(shortened, ref=ref)
        record = second.drive(run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION
        assert "step 2" in (record.outcome or "") and "'go'" in (record.outcome or "")
        assert not of_type(second, run_id, ev.RunCompleted)


def test_cancelling_a_sleeping_run_takes_effect_without_waiting(
        clocked_baton: Baton, clock: FakeClock) -> None:
    undone: list[tuple[str, Any, str]] = []
    book, _, _ = _saga(undone)

    @workflow
    def trip(ctx: Context) -> None:
        ctx.call(book, "flight")
        ctx.sleep(86_400)
        ctx.call(book, "hotel")

    run_id = clocked_baton.start(trip)
    assert clocked_baton.drive(run_id).status is RunStatus.SLEEPING
    clocked_baton.cancel(run_id)
    assert [r.run_id for r in clocked_baton.store.runnable(clock.time())] == [run_id]
    record = clocked_baton.drive(run_id)
    assert record.status is RunStatus.CANCELLED
    assert [u[0] for u in undone] == ["flight"]
    assert "TimerFired" not in event_types(clocked_baton, run_id)


def test_a_run_held_by_a_live_worker_is_left_alone(settings: Settings) -> None:
    calls: list[int] = []

    @tool(idempotent=True)
    def work() -> int:
        calls.append(1)
        return 1

    @workflow
    def wf(ctx: Context) -> int:
        return int(ctx.call(work))

    with Baton(settings) as holder, Baton(settings) as other:
        run_id = holder.start(wf)
        assert holder.acquire(run_id) is not None  # holder (alive, lease current) has it
        other.register(wf, ref=other.get_run(run_id).workflow_ref)
        assert other.execute(run_id) is None
        assert other.drive(run_id).status is RunStatus.PENDING
        assert calls == [] and event_types(other, run_id) == ["RunStarted"]
        holder.store.release(run_id, holder.owner)
        assert other.drive(run_id).status is RunStatus.COMPLETED
        assert not of_type(other, run_id, ev.RunRecovered)  # a released run is not a takeover


def test_a_workflow_file_loaded_by_two_threads_at_once_is_found_by_both(
        baton: Baton, tmp_path: Path) -> None:
    source = tmp_path / f"slow_import_{uuid.uuid4().hex[:8]}.py"
    source.write_text(
        "import time\n"
        "from baton import workflow\n"
        "time.sleep(0.3)  # a module that takes a while to import\n"
        "@workflow\n"
        "def hello(ctx):\n"
        "    return 'hi'\n"
    )
    ref = f"{source}:hello"
    found: list[Any] = []

    def load() -> None:
        try:
            found.append(baton.workflow_for(ref).name)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            found.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)  # the second asks while the first is still executing the module
    for t in threads:
        t.join()
    assert found == ["hello", "hello"]
