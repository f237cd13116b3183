"""Edge cases at the seams of the engine, one story per test: takeovers of suspended runs,
results and inputs that are not JSON, hand-resolved steps, runs whose code is gone or
changed, event loops, atomic claims, settings, crash loops in compensation, the CLI."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from baton import (
    Baton,
    Context,
    RunRecord,
    RunStatus,
    Settings,
    SqliteStore,
    StepError,
    StoreError,
    ToolValidationError,
    UsageError,
    tool,
    workflow,
)
from baton.journal import events as ev
from baton.store.base import Taken
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

T = TypeVar("T")

PROMPTLY = 15.0  # seconds: generous for a slow machine, short next to a hang


def finishes_within(seconds: float, fn: Callable[[], T], on_timeout: Callable[[], None] | None = None) -> T:
    """Call ``fn`` in a thread and return what it returns; fail the test if it is still
    running after ``seconds`` (a loop that never ends would otherwise hang the suite)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if on_timeout is not None:
            on_timeout()
        pytest.fail(f"still running after {seconds}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@contextmanager
def runtime(settings: Settings) -> Iterator[Baton]:
    """A runtime that is closed when the block succeeds, and left alone when it fails:
    closing it under an execution that never returned could hang the rest of the suite."""
    b = Baton(settings)
    yield b
    b.close()


def dead_owner_id() -> str:
    """The owner id of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from baton.engine.owner import new_owner_id; print(new_owner_id())"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return proc.stdout.strip()


def set_owner(path: Path, run_id: str, owner: str, lease_expires_at: float) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET owner = ?, lease_expires_at = ? WHERE run_id = ?",
                     (owner, lease_expires_at, run_id))
    conn.close()


# -- module-level tools and workflows: a fresh runtime finds them by their ref ------------

OPENED: list[str] = []


@tool
def open_account(holder: str, *, idempotency_key: str) -> dict[str, str]:
    """Not idempotent, no reconcile hook: an interrupted call needs a person."""
    OPENED.append(idempotency_key)
    return {"account": f"acc-{holder}"}


@workflow
def edges_open_account(ctx: Context, holder: str) -> dict[str, str]:
    return dict(ctx.call(open_account, holder))


# -- 1. a suspended run whose owner died ---------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suspension", ["sleep", "wait_for"])
def test_a_suspended_run_of_a_dead_owner_is_taken_over_once_and_left_suspended(
        tmp_path: Path, suspension: str) -> None:
    @workflow
    def patient(ctx: Context) -> str:
        if suspension == "sleep":
            ctx.sleep(3600)
        else:
            ctx.wait_for("go")
        return "done"

    with runtime(make_settings(tmp_path)) as baton:
        expected = RunStatus.SLEEPING if suspension == "sleep" else RunStatus.WAITING
        run_id = baton.start(patient)
        assert baton.drive(run_id).status is expected
        dead = dead_owner_id()
        set_owner(db_path(tmp_path), run_id, dead, time.time() + 10_000)
        assert baton.get_run(run_id).owner == dead

        worker = baton.worker()
        finishes_within(PROMPTLY, lambda: worker.run(until_idle=True), on_timeout=worker.stop)

        record = baton.get_run(run_id)
        assert record.status is expected
        assert record.owner is None
        (recovered,) = of_type(baton, run_id, ev.RunRecovered)
        assert recovered.previous_owner == dead and "gone" in recovered.reason

        record = finishes_within(PROMPTLY, lambda: baton.drive(run_id))
        assert record.status is expected
        assert len(of_type(baton, run_id, ev.RunRecovered)) == 1
        assert event_types(baton, run_id)[-1] == "RunRecovered"  # nothing else happened


# -- 2. a result that cannot be stored ------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


NOT_JSON_RESULTS: dict[str, Callable[[], Any]] = {
    "nan-float": lambda: float("nan"),
    "inf-float": lambda: float("inf"),
    "object-any": Opaque,
    "nan-any": lambda: float("nan"),
    "nan-in-dict-any": lambda: {"score": float("nan")},
}


@pytest.mark.parametrize("case", list(NOT_JSON_RESULTS))
def test_a_non_idempotent_call_with_a_non_json_result_is_made_once_and_fails(
        baton: Baton, case: str) -> None:
    calls: list[str] = []
    make = NOT_JSON_RESULTS[case]

    if case.endswith("-float"):
        @tool(retries=3, backoff=0.01)
        def mint(*, idempotency_key: str) -> float:
            calls.append(idempotency_key)
            return float(make())
    else:
        @tool(retries=3, backoff=0.01)
        def mint(*, idempotency_key: str) -> Any:
            calls.append(idempotency_key)
            return make()

    caught: list[StepError] = []

    @workflow
    def wf(ctx: Context) -> str:
        try:
            value = ctx.call(mint)
        except StepError as err:
            caught.append(err)
            return str(err)
        return f"got {value!r}"

    record = baton.run(wf)
    assert calls == [f"{record.run_id}:1"]  # invoked exactly once: it took effect
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert len(caught) == 1, f"no StepError: the workflow returned {record.outcome}"
    err = caught[0]
    assert "cannot be stored as JSON" in str(err)
    assert err.retryable is False
    assert json.loads(record.outcome or "null") == str(err)
    assert len(of_type(baton, record.run_id, ev.StepStarted)) == 1
    (failed,) = of_type(baton, record.run_id, ev.StepFailed)
    assert failed.final and failed.retry_in is None and failed.error.code == "result_not_json"
    assert not of_type(baton, record.run_id, ev.StepCompleted)


# -- 3. a hand-resolved result must fit the tool's return type ---------------------------


@pytest.mark.parametrize("wrong", [["acc-1"], "acc-1", {"account": 5}, None],
                         ids=["list", "string", "int-value", "null"])
def test_a_resolved_result_of_the_wrong_shape_is_refused(tmp_path: Path, wrong: Any) -> None:
    OPENED.clear()
    settings = make_settings(tmp_path)
    crashed, _ = crashing_baton(settings, crash_at=1, when="after")  # dies right after the intent
    run_id = crashed.start(edges_open_account, {"holder": "ada"})
    with pytest.raises(SimulatedCrash):
        crashed.drive(run_id)
    crashed.close()
    expire_lease(db_path(tmp_path), run_id)
    assert OPENED == []

    with Baton(settings) as b:
        record = b.drive(run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION, record.outcome
        with pytest.raises(UsageError) as refused:
            b.resolve_step(run_id, 1, applied=True, result=wrong)
        message = refused.value.message
        assert "\n" not in message and "open_account" in message
        assert b.get_run(run_id).status is RunStatus.NEEDS_ATTENTION
        assert not of_type(b, run_id, ev.StepResolved)
        assert b.get_run(run_id).owner is None  # the refused resolve let go of the run

        b.resolve_step(run_id, 1, applied=True, result={"account": "acc-by-hand"})
        record = b.drive(run_id)
        assert record.status is RunStatus.COMPLETED, record.outcome
        assert json.loads(record.outcome or "null") == {"account": "acc-by-hand"}
        assert OPENED == []  # never run again on a guess


# -- 4. cancelling a run whose code is gone --------------------------------------------------


@pytest.mark.timeout(60)
def test_cancelling_a_run_whose_workflow_file_is_gone_ends_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    marker = tmp_path / "undone"
    source = tmp_path / "vanishing_flow.py"
    source.write_text(textwrap.dedent(f"""
        from pathlib import Path

        from baton import Context, tool, workflow


        def undo(result: str) -> None:
            Path({str(marker)!r}).write_text(result)


        @tool(idempotent=True, compensate=undo)
        def reserve() -> str:
            return "seat-1"


        @workflow
        def napper(ctx: Context) -> str:
            ctx.call(reserve)
            ctx.sleep(3600)
            return "rested"
    """))
    with Baton(settings) as first:
        run_id = first.start(f"{source}:napper")
        assert first.drive(run_id).status is RunStatus.SLEEPING
    source.unlink()

    with runtime(settings) as b:
        b.cancel(run_id)
        record = finishes_within(PROMPTLY, lambda: b.drive(run_id))
        assert record.status is RunStatus.CANCELLED
        (cancelled,) = of_type(b, run_id, ev.RunCancelled)
        assert "compensations not run" in cancelled.reason
        assert "vanishing_flow.py" in cancelled.reason
        assert not marker.exists()


# -- 5. a waiting run whose workflow now wants other input ---------------------------------


@workflow
def approve(ctx: Context, order_id: str) -> str:
    ctx.wait_for("go")
    return order_id


@workflow
def approve_v2(ctx: Context, order_id: str, amount: int) -> str:
    ctx.wait_for("go")
    return f"{order_id}:{amount}"


def signature_changed(settings: Settings) -> tuple[str, str]:
    """A run of ``approve`` left waiting; (its run id, the ref a newer ``approve_v2`` takes)."""
    with Baton(settings) as first:
        run_id = first.start(approve, {"order_id": "o-1"})
        assert first.drive(run_id).status is RunStatus.WAITING
        return run_id, first.get_run(run_id).workflow_ref


@pytest.mark.timeout(60)
def test_a_run_whose_workflow_signature_changed_needs_attention(settings: Settings) -> None:
    run_id, ref = signature_changed(settings)
    with runtime(settings) as b:
        b.register(approve_v2, ref=ref)
        b.signal(run_id, "go", True)
        worker = b.worker()
        finishes_within(PROMPTLY, lambda: worker.run(until_idle=True), on_timeout=worker.stop)
        record = b.get_run(run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION
        assert record.outcome is not None
        assert "input" in record.outcome and "amount" in record.outcome
        # again, by hand and by a worker: no pile of identical notices, no loop
        assert finishes_within(PROMPTLY, lambda: b.drive(run_id)).status is RunStatus.NEEDS_ATTENTION
        finishes_within(PROMPTLY, lambda: b.worker().run(until_idle=True))
        assert len(of_type(b, run_id, ev.NeedsAttention)) == 1


@pytest.mark.timeout(60)
def test_a_run_that_needs_attention_taken_over_from_a_dead_owner_asks_only_once(
        settings: Settings, tmp_path: Path) -> None:
    """A worker killed after asking leaves the run with its lease; the worker that takes it
    over replays to the same question and must not journal it again."""
    run_id, ref = signature_changed(settings)
    with runtime(settings) as b:
        b.register(approve_v2, ref=ref)
        b.signal(run_id, "go", True)
        assert finishes_within(PROMPTLY, lambda: b.drive(run_id)).status is RunStatus.NEEDS_ATTENTION
        dead = dead_owner_id()
        set_owner(db_path(tmp_path), run_id, dead, time.time() + 10_000)
        finishes_within(PROMPTLY, lambda: b.worker().run(until_idle=True))
        record = b.get_run(run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION and record.owner is None
        assert len(of_type(b, run_id, ev.RunRecovered)) == 1
        assert len(of_type(b, run_id, ev.NeedsAttention)) == 1


# -- 6. called from inside a running event loop ----------------------------------------------


def test_an_async_workflow_runs_when_called_from_a_running_event_loop(baton: Baton) -> None:
    @tool(idempotent=True)
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    @tool(idempotent=True)
    def inc(n: int) -> int:
        return n + 1

    @workflow
    async def wf(ctx: Context, n: int) -> int:
        doubled = await ctx.call(double, n)
        await ctx.sleep(0.01)
        return int(await ctx.call(inc, doubled))

    async def main() -> RunRecord:
        return baton.run(wf, {"n": 20})  # synchronous, inside the loop

    record = asyncio.run(main())
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert record.outcome == "41"


def test_a_sync_workflow_calls_an_async_tool_from_a_running_event_loop(baton: Baton) -> None:
    @tool(idempotent=True)
    async def fetch(key: str) -> str:
        await asyncio.sleep(0)
        return key.upper()

    @workflow
    def wf(ctx: Context, key: str) -> str:
        return str(ctx.call(fetch, key))

    async def main() -> RunRecord:
        return baton.run(wf, {"key": "abc"})

    record = asyncio.run(main())
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert record.outcome == '"ABC"'


# -- 7. NaN and infinities are not JSON ----------------------------------------------------


def test_a_workflow_returning_tuples_completes_with_the_lists_json_has(baton: Baton) -> None:
    @workflow
    def wf(ctx: Context) -> Any:
        return {"pair": (1, 2)}, ("a",)

    record = baton.run(wf)
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert baton.result(record.run_id) == [{"pair": [1, 2]}, ["a"]]


@pytest.mark.parametrize("data", [float("nan"), {"v": float("inf")}, [1.0, float("-inf")]],
                         ids=["nan", "nested-inf", "list-neg-inf"])
def test_a_signal_that_is_not_json_is_refused_and_a_good_one_still_works(baton: Baton, data: Any) -> None:
    @workflow
    def wf(ctx: Context) -> Any:
        return ctx.wait_for("go")

    run_id = baton.start(wf)
    assert baton.drive(run_id).status is RunStatus.WAITING
    with pytest.raises(UsageError, match="JSON"):
        baton.signal(run_id, "go", data)
    assert baton.store.pending_signals(run_id) == []
    baton.signal(run_id, "go", {"ok": 1})
    record = baton.drive(run_id)
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert json.loads(record.outcome or "null") == {"ok": 1}


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_tool_called_with_a_non_json_float_is_never_invoked(baton: Baton, value: float) -> None:
    calls: list[float] = []

    @tool(idempotent=True, retries=2)
    def scale(x: float) -> float:
        calls.append(x)
        return x * 2

    @workflow
    def wf(ctx: Context) -> str:
        try:
            ctx.call(scale, value)
        except ToolValidationError as err:
            return f"refused: {err.message}"
        return "called"

    record = baton.run(wf)
    assert calls == []
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert (record.outcome or "").startswith('"refused: ')
    (failed,) = of_type(baton, record.run_id, ev.StepFailed)
    assert failed.final and failed.error.code == ToolValidationError.code
    assert len(of_type(baton, record.run_id, ev.StepStarted)) == 1


def test_a_tool_called_with_a_non_json_float_fails_the_run_if_not_caught(baton: Baton) -> None:
    calls: list[float] = []

    @tool(idempotent=True)
    def scale(x: float) -> float:
        calls.append(x)
        return x * 2

    @workflow
    def wf(ctx: Context) -> float:
        return float(ctx.call(scale, float("nan")))

    record = baton.run(wf)
    assert calls == []
    assert record.status is RunStatus.FAILED
    (failed,) = of_type(baton, record.run_id, ev.RunFailed)
    assert failed.error.code == ToolValidationError.code


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_starting_a_run_with_a_non_json_float_is_refused(baton: Baton, value: float) -> None:
    @workflow
    def wf(ctx: Context, x: float) -> float:
        return x

    with pytest.raises(UsageError) as refused:
        baton.start(wf, {"x": value})
    assert "\n" not in refused.value.message and "x" in refused.value.message
    with pytest.raises(UsageError):
        baton.run(wf, x=value)
    with pytest.raises(UsageError):
        baton.start(wf, {"x": 1.0, "extra": value})
    assert baton.store.list_runs() == []


# -- 8. a caught step error reads the same live and on replay ---------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("failure", ["raises", "retries-exhausted", "bad-args", "not-json"])
def test_a_caught_step_error_is_the_same_live_and_on_replay(tmp_path: Path, failure: str, is_async: bool) -> None:
    settings = make_settings(tmp_path)
    victim: list[CrashingStore] = []
    seen: list[tuple[str, str, bool, int | None]] = []
    crash = {"armed": True}

    @tool(idempotent=True, retries=1 if failure == "retries-exhausted" else 0, backoff=0.01)
    def flaky(n: int) -> float:
        if failure == "not-json":
            return float("inf")
        raise ValueError(f"boom {n}")

    @tool(idempotent=True)
    def later() -> str:
        if crash["armed"]:  # the worker dies after the failure is recorded and caught
            crash["armed"] = False
            victim[0].die()
            raise SimulatedCrash("killed")
        return "later"

    arg: Any = "not a number" if failure == "bad-args" else 7

    def note(err: StepError) -> str:
        seen.append((type(err).__name__, str(err), err.retryable, err.step_id))
        return str(err)

    if is_async:
        @workflow
        async def wf(ctx: Context) -> str:
            try:
                await ctx.call(flaky, arg)
                message = "no error"
            except StepError as err:
                message = note(err)
            await ctx.call(later)
            return message
    else:
        @workflow
        def wf(ctx: Context) -> str:
            try:
                ctx.call(flaky, arg)
                message = "no error"
            except StepError as err:
                message = note(err)
            ctx.call(later)
            return message

    first, store = crashing_baton(settings)
    victim.append(store)
    run_id = first.start(wf)
    with pytest.raises(SimulatedCrash):
        first.drive(run_id)
    first.close()
    expire_lease(db_path(tmp_path), run_id)
    assert len(seen) == 1

    with Baton(settings) as b:
        b.register(wf, ref=b.get_run(run_id).workflow_ref)
        record = b.drive(run_id)
        assert record.status is RunStatus.COMPLETED, record.outcome
        live, replayed = seen
        assert live == replayed
        assert json.loads(record.outcome or "null") == live[1]
        assert live[3] == 1
        if failure == "bad-args":
            assert live[0] == "ToolValidationError"
        else:
            assert live[1].startswith("flaky failed: ")


# -- 9. claims report who held the run, read in the claim itself -------------------------------


def test_store_claim_reports_the_previous_owner(baton: Baton) -> None:
    @workflow
    def wf(ctx: Context) -> None:
        return None

    run_id = baton.start(wf)
    store = baton.store
    assert isinstance(store, SqliteStore)
    now = 1_000.0
    assert store.claim(run_id, "A", now, 10) == Taken(None)
    assert store.claim(run_id, "B", now + 1, 10) is None  # A's lease is live
    assert store.claim(run_id, "A", now + 2, 10) == Taken(None)  # the holder again: renews
    assert store.claim(run_id, "B", now + 100, 10) == Taken(previous_owner="A")  # expired
    assert store.claim(run_id, "C", now + 101, 10, expected_owner="X") is None  # not the holder
    assert store.claim(run_id, "C", now + 101, 10, expected_owner="B") == Taken(previous_owner="B")
    store.release(run_id, "C")
    assert store.claim(run_id, "D", now + 102, 10) == Taken(None)  # released: nobody held it
    assert store.claim(run_id + "x", "D", now, 10) is None  # no such run


def test_a_run_released_normally_is_not_taken_over(settings: Settings) -> None:
    @workflow
    def wf(ctx: Context) -> str:
        ctx.wait_for("go")
        return "ok"

    with Baton(settings) as a, Baton(settings) as b:
        run_id = a.start(wf)
        b.register(wf, ref=a.get_run(run_id).workflow_ref)
        claim = a.acquire(run_id)
        assert claim is not None and claim.previous_owner is None
        a.let_go(run_id)
        claim = b.acquire(run_id)
        assert claim is not None and claim.previous_owner is None and claim.reason == ""
        b.let_go(run_id)
        assert b.drive(run_id).status is RunStatus.WAITING
        assert not of_type(b, run_id, ev.RunRecovered)


class ReleasingFirst:
    """A store that, just before B's claim, lets A release the run: B read the run while A
    held it (with an expired lease), but A let go normally before B's claim happened."""

    def __init__(self, inner: SqliteStore, before_claim: Callable[[], None]) -> None:
        self.inner = inner
        self.before_claim = before_claim

    def claim(self, *args: Any, **kwargs: Any) -> Taken | None:
        self.before_claim()
        return self.inner.claim(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_release_between_reading_and_claiming_is_not_a_takeover(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    @workflow
    def wf(ctx: Context) -> str:
        ctx.wait_for("go")
        return "ok"

    with Baton(settings) as a:
        run_id = a.start(wf)
        assert a.acquire(run_id) is not None
        expire_lease(db_path(tmp_path), run_id)  # A is slow to renew, but alive and finishing
        assert a.get_run(run_id).owner == a.owner

        released: list[bool] = []

        def a_lets_go() -> None:
            if not released:
                released.append(True)
                a.store.release(run_id, a.owner)

        inner = SqliteStore(db_path(tmp_path), durability="normal")
        with Baton(settings, store=ReleasingFirst(inner, a_lets_go)) as b:
            b.register(wf, ref=a.get_run(run_id).workflow_ref)
            claim = b.acquire(run_id)
            assert released == [True]
            assert claim is not None
            assert claim.previous_owner is None, claim.reason
            b.let_go(run_id)
            assert b.drive(run_id).status is RunStatus.WAITING
            assert not of_type(b, run_id, ev.RunRecovered)


# -- 10. settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"lease_seconds": 1, "heartbeat_seconds": 2},
        {"lease_seconds": 5, "heartbeat_seconds": 2},
        {"heartbeat_seconds": 0},
        {"heartbeat_seconds": -1, "lease_seconds": 10},
        {"max_recoveries": -1},
    ],
    ids=["lease-below-heartbeat", "lease-below-three-heartbeats", "zero-heartbeat",
         "negative-heartbeat", "negative-recoveries"],
)
def test_settings_that_would_break_leases_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Settings(**values)


def test_settings_at_the_limit_are_accepted() -> None:
    assert Settings(lease_seconds=6, heartbeat_seconds=2).lease_seconds == 6


@pytest.mark.parametrize(
    "values", [{"lease_seconds": math.nan}, {"heartbeat_seconds": math.nan}], ids=["lease", "heartbeat"],
)
def test_lease_settings_that_are_nan_are_refused(values: dict[str, Any]) -> None:
    # NaN slips past every comparison. A NaN lease is stored as NULL, and a run whose lease
    # expires at NULL can never be taken over by expiry; a NaN heartbeat makes the lease
    # keeper's wait return at once, so it renews in a busy loop.
    with pytest.raises(UsageError):
        Settings(**values)


def test_a_nan_lease_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_LEASE_SECONDS", "nan")
    with pytest.raises(UsageError):
        Settings.from_env()


@pytest.mark.parametrize(
    ("key", "raw"),
    [("BATON_LEASE_SECONDS", "abc"), ("BATON_LEASE_SECONDS", "1"), ("BATON_MAX_RECOVERIES", "1.5"),
     ("BATON_MAX_RECOVERIES", "many"), ("BATON_DURABILITY", "sometimes")],
)
def test_bad_settings_in_the_environment_are_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, key: str, raw: str) -> None:
    monkeypatch.setenv(key, raw)
    with pytest.raises(UsageError) as refused:
        Settings.from_env()
    assert "\n" not in refused.value.message


def test_good_settings_in_the_environment_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_LEASE_SECONDS", "30")
    monkeypatch.setenv("BATON_MAX_RECOVERIES", "5")
    settings = Settings.from_env()
    assert settings.lease_seconds == 30.0 and settings.max_recoveries == 5


# -- 11. a crash loop in the compensations ---------------------------------------------------


def test_a_compensation_that_keeps_killing_the_worker_ends_the_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_recoveries=1)
    victim: list[CrashingStore] = []
    undone: list[str] = []

    def undo(result: str) -> None:
        undone.append(result)
        victim[-1].die()
        raise SimulatedCrash("the undo kills the process")

    @tool(idempotent=True, compensate=undo)
    def book() -> str:
        return "room-1"

    @tool(idempotent=True)
    def pay() -> str:
        raise ValueError("card declined")

    @workflow
    def wf(ctx: Context) -> str:
        ctx.call(book)
        return str(ctx.call(pay))

    run_id = ""
    resumes = 0
    record: RunRecord | None = None
    for attempt in range(settings.max_recoveries + 6):
        b, store = crashing_baton(settings)
        victim.append(store)
        try:
            if attempt == 0:
                run_id = b.start(wf)
            else:
                resumes += 1
                b.register(wf, ref=b.get_run(run_id).workflow_ref)
            record = b.drive(run_id)
        except SimulatedCrash:
            record = None
        finally:
            b.close()
        if record is not None and record.status.terminal:
            break
        expire_lease(db_path(tmp_path), run_id)

    assert record is not None, f"still not over after {resumes} resumes"
    assert record.status is RunStatus.FAILED
    assert resumes <= settings.max_recoveries + 3
    with Baton(settings) as b:
        (failed,) = of_type(b, run_id, ev.RunFailed)
        assert "crash loop" in failed.error.message
        assert "compensations skipped" in failed.error.message
        assert not of_type(b, run_id, ev.Compensated)
    assert len(undone) == resumes  # every worker but the last died in the undo


# -- 12. the command line -----------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db", "COLUMNS": "1000"}
    return subprocess.run([sys.executable, "-m", "baton", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_read_only_command_without_a_database_says_so_and_creates_nothing(tmp_path: Path) -> None:
    proc = cli(tmp_path, "runs", "list")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: no Baton database at ")
    assert str(tmp_path / "baton.db") in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "baton.db").exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_db_status_of_an_existing_database_is_up_to_date(tmp_path: Path) -> None:
    assert cli(tmp_path, "db", "upgrade").returncode == 0
    proc = cli(tmp_path, "db", "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


@workflow
def edges_waits_for_go(ctx: Context) -> Any:
    return ctx.wait_for("go")


def test_cli_signal_with_nan_data_is_one_line_and_sends_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/baton.db")
    with Baton(settings) as b:
        run_id = b.start(edges_waits_for_go)
    proc = cli(tmp_path, "signal", run_id, "go", "--data", "NaN")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "NaN" in lines[0]
    with Baton(settings) as b:
        assert b.store.pending_signals(run_id) == []


def test_cli_signal_with_a_lone_surrogate_is_one_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/baton.db")
    with Baton(settings) as b:
        run_id = b.start(edges_waits_for_go)
    proc = cli(tmp_path, "signal", run_id, "go", "--data", '"\\ud800"')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


# -- 13. a tool's own timeouts, exits and cancellations are its failures ----------------------


class BackendTimeout(TimeoutError):
    """What a client library raises when its server is slow: the tool's failure, not Baton's."""


@pytest.mark.parametrize("timeout", [5.0, None], ids=["with-timeout", "no-timeout"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync-tool", "async-tool"])
def test_a_timeout_raised_by_the_tool_itself_is_an_ordinary_failure(
    baton: Baton, is_async: bool, timeout: float | None
) -> None:
    calls: list[int] = []

    if is_async:
        @tool(timeout=timeout)
        async def transfer(amount: int) -> str:
            calls.append(amount)
            raise BackendTimeout("bank did not answer")
    else:
        @tool(timeout=timeout)
        def transfer(amount: int) -> str:
            calls.append(amount)
            raise BackendTimeout("bank did not answer")

    @workflow
    def wf(ctx: Context) -> str:
        try:
            return str(ctx.call(transfer, 5))
        except StepError as err:
            return str(err)

    record = baton.run(wf)
    assert record.status is RunStatus.COMPLETED, record.outcome
    assert record.outcome == '"transfer failed: BackendTimeout: bank did not answer"'
    assert calls == [5]
    assert not of_type(baton, record.run_id, ev.NeedsAttention)


def test_a_tool_that_exits_the_process_fails_its_step_once(baton: Baton) -> None:
    calls: list[int] = []

    @tool(idempotent=True)
    def bad(i: int) -> int:
        calls.append(i)
        sys.exit(3)

    @workflow
    def wf(ctx: Context) -> str:
        try:
            return str(ctx.call(bad, 1))
        except StepError as err:
            return str(err)

    record = baton.run(wf)
    assert record.status is RunStatus.COMPLETED
    assert record.outcome is not None and "SystemExit" in record.outcome
    assert calls == [1]


def test_a_run_this_process_is_executing_is_not_executed_again(baton: Baton) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @tool(idempotent=True)
    def slow(i: int) -> int:
        calls.append(i)
        started.set()
        release.wait(5)
        return i

    @workflow
    def wf(ctx: Context) -> int:
        return int(ctx.call(slow, 1))

    run_id = baton.start(wf)
    worker = threading.Thread(target=baton.drive, args=(run_id,))
    worker.start()
    try:
        assert started.wait(5)
        assert baton.acquire(run_id) is None  # the same owner id, but already in hand here
        # returns at once, runs nothing
        assert baton.drive(run_id).status in (RunStatus.PENDING, RunStatus.RUNNING)
    finally:
        release.set()
        worker.join(5)
    assert baton.get_run(run_id).status is RunStatus.COMPLETED
    assert calls == [1]


def test_cancelling_a_run_whose_input_no_longer_fits_ends_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    @workflow
    def before(ctx: Context, n: int) -> int:
        ctx.wait_for("go")
        return n

    @workflow
    def after(ctx: Context, m: str) -> str:
        ctx.wait_for("go")
        return m

    with Baton(settings) as b:
        run_id = b.start(before, {"n": 1})
        ref = b.get_run(run_id).workflow_ref
        assert b.drive(run_id).status is RunStatus.WAITING
    with Baton(settings) as b:
        b.register(after, ref=ref)
        b.signal(run_id, "go")
        assert b.drive(run_id).status is RunStatus.NEEDS_ATTENTION
        b.cancel(run_id)
        done: list[RunRecord] = []
        driver = threading.Thread(target=lambda: done.append(b.drive(run_id)), daemon=True)
        driver.start()
        driver.join(10)
        assert done, "drive() did not return: cancelling kept looping"
        record = done[0]
    assert record.status is RunStatus.CANCELLED
    assert record.outcome is not None and "compensations not run" in record.outcome


def test_events_compare_by_data_however_they_were_built() -> None:
    trusted = ev.StepCompleted.trusted(step_id=1, result={"a": 1})
    validated = ev.StepCompleted(step_id=1, result={"a": 1})
    assert trusted == validated and hash(trusted) == hash(validated)
    trusted.encoded()
    assert trusted == validated
    copy = trusted.model_copy(update={"result": {"a": 2}})
    assert copy.encoded() == '{"result":{"a":2},"step_id":1}'


# -- 14. a retry's backoff is durable ---------------------------------------------------------


def test_a_long_backoff_sleeps_durably_and_is_kept_after_a_restart(tmp_path: Path) -> None:
    """A backoff longer than ``retry_wait`` frees the worker: the run sleeps until the next
    attempt is due, and a runtime that resumes it early waits for what is left, no less."""
    settings = make_settings(tmp_path, retry_wait=10.0)
    clock = FakeClock()
    calls: list[float] = []

    @tool(idempotent=True, retries=2, backoff=40.0, max_backoff=40.0)
    def carrier(parcel: str) -> str:
        calls.append(clock.time())
        if len(calls) == 1:
            raise ConnectionError("carrier API unavailable")
        return f"label-{parcel}"

    @workflow
    def ship(ctx: Context) -> str:
        return str(ctx.call(carrier, "P1"))

    with Baton(settings, clock=clock) as b:
        record = b.run(ship)
        (failed,) = of_type(b, record.run_id, ev.StepFailed)
    assert record.status is RunStatus.SLEEPING and len(calls) == 1
    assert failed.retry_in is not None and 20.0 <= failed.retry_in < 40.0
    assert failed.retry_at == pytest.approx(calls[0] + failed.retry_in)
    assert record.wake_at == failed.retry_at

    clock.advance(failed.retry_in - 15.0)  # too early, and more than retry_wait to go
    with Baton(settings, clock=clock) as b:
        b.register(ship, ref=record.workflow_ref)
        assert b.drive(record.run_id).status is RunStatus.SLEEPING
    assert len(calls) == 1

    clock.advance(10.0)  # 5 s to go: a runtime resuming it now waits them out, then retries
    with Baton(settings, clock=clock) as b:
        b.register(ship, ref=record.workflow_ref)
        done = b.drive(record.run_id)
    assert done.status is RunStatus.COMPLETED and done.outcome == '"label-P1"'
    assert len(calls) == 2 and calls[1] == pytest.approx(failed.retry_at)


def test_a_retry_in_progress_shows_the_run_running(clocked_baton: Baton) -> None:
    seen: list[RunStatus] = []

    @tool(idempotent=True, retries=1, backoff=1.0)
    def flaky(i: int) -> int:
        run = clocked_baton.store.list_runs(limit=1)[0]
        seen.append(run.status)
        if len(seen) == 1:
            raise ConnectionError("try again")
        return i

    @workflow
    def wf(ctx: Context) -> int:
        return int(ctx.call(flaky, 7))

    record = clocked_baton.run(wf)
    assert record.status is RunStatus.COMPLETED and record.outcome == "7"
    assert seen[1] is RunStatus.RUNNING  # not still "sleeping" from the backoff
    types = [type(e).__name__ for e in clocked_baton.events(record.run_id)]
    assert types == ["RunStarted", "StepStarted", "StepFailed", "StepRan", "RunCompleted"]


def test_an_event_this_version_cannot_read_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/baton.db")
    with Baton(settings) as b:
        run_id = b.start(edges_waits_for_go)
        assert b.drive(run_id).status is RunStatus.WAITING
    db = sqlite3.connect(tmp_path / "baton.db")
    with db:  # as if a newer Baton had written an event type this one does not know
        db.execute("UPDATE events SET type = 'StepTeleported' WHERE run_id = ? AND seq = 2", (run_id,))
    with Baton(settings) as b, pytest.raises(StoreError, match=r"event 2 \(StepTeleported\) cannot be read"):
        b.signal(run_id, "go")
        b.drive(run_id)
    proc = cli(tmp_path, "runs", "show", run_id)
    assert proc.returncode == 1 and proc.stderr.startswith("error: run ")
    assert len(proc.stderr.strip().splitlines()) == 1
