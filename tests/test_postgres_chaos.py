"""Crash safety on PostgreSQL with real processes: workers SIGKILLed at random points, a
worker paused past its lease while another takes its run over, the server itself restarted
under running workers, and a database unreachable for longer than a connection wait.

Each test works in a database of its own on the local server (``pg_support``), created
and upgraded here and dropped afterwards. The workflows and the fake payment service are
in ``crashapp/pg_chaos_workflows.py``; the service notes which process made each call and
when, and every tool result names the process that returned it, so that a journal can be
checked against who owned the run at each point.

The chaos test's kill points are chosen from a seed that is printed; set
``BATON_CRASH_SEED`` to reuse one (the seed fixes the runs' inputs and the kill delays;
process timing still varies).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from baton import Baton, RunStatus, Settings
from baton.audit import verify
from baton.errors import StoreError
from baton.journal import EncodedEvent, format_time, verify_chain
from baton.journal import events as ev
from baton.store.postgres import PostgresStore
from crash_support import (
    SEED_ENV,
    RunSpec,
    WorkerChaos,
    connect,
    crash_seed,
    kill_launched,
    launch,
    start_worker,
    worker_env,
)
from crashapp import pg_chaos_workflows as pw
from pg_support import admin, create_database, database_url, drop_database

WORKFLOWS = str(pw.WORKFLOWS_FILE)
UNFINISHED = ("pending", "running", "sleeping", "waiting")


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the local server, upgraded; dropped (with every process this test
    started killed first) whatever happens."""
    name = create_database()
    try:
        url = database_url(name)
        PostgresStore(url).close()  # the constructor applies the migrations
        yield url
    finally:
        kill_launched()
        drop_database(name)


def pid_of(owner: str | None) -> int | None:
    """The pid in an owner id (``host:pid:start:nonce``, see ``baton.engine.owner``)."""
    if not owner:
        return None
    parts = owner.split(":")
    return int(parts[1]) if len(parts) == 4 else None


def row_time(row: EncodedEvent) -> float:
    """A journal row's time (``format_time``: UTC ISO 8601 with microseconds) in epoch seconds."""
    return datetime.strptime(row.at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def pg_rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def count(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def unfinished_runs(conn: psycopg.Connection[Any]) -> int:
    return count(conn, "SELECT COUNT(*) FROM runs WHERE status = ANY(%s)", (list(UNFINISHED),))


@dataclass(frozen=True)
class Call:
    tool: str
    key: str
    pid: int
    at: float


@dataclass
class Service:
    """Everything the fake service recorded."""

    calls: list[Call]
    effects: dict[str, tuple[str, int, int, Any, int]]   # key -> run, step, amount, first result, replays
    ledger: list[tuple[int, str, str, str, int, int]]    # entry, tool, key, run, step, amount
    self_kills: dict[str, str]                            # key -> tool
    deaths: dict[int, float]                              # pid -> time it killed itself

    @classmethod
    def read(cls, db: str) -> Service:
        with closing(connect(db)) as conn:
            calls = [Call(*row) for row in conn.execute("SELECT tool, key, pid, at FROM calls ORDER BY id")]
            effects = {
                key: (run, step, amount, json.loads(result), replays)
                for key, run, step, amount, result, replays in conn.execute(
                    "SELECT key, run, step, amount, result, replays FROM effects")
            }
            ledger = list(conn.execute("SELECT entry, tool, key, run, step, amount FROM ledger ORDER BY entry"))
            self_kills = dict(conn.execute("SELECT key, tool FROM self_kills").fetchall())
            deaths = dict(conn.execute("SELECT pid, at FROM deaths").fetchall())
        return cls(calls, effects, ledger, self_kills, deaths)

    def calls_of(self, key: str) -> list[Call]:
        return [c for c in self.calls if c.key == key]

    def ledger_of(self, key: str) -> list[tuple[int, str, str, str, int, int]]:
        return [row for row in self.ledger if row[2] == key]


def result_pid(event: ev.Event) -> int | None:
    """The pid a step result names (see ``pg_chaos_workflows``), for events that carry one."""
    if isinstance(event, ev.StepRan | ev.StepCompleted | ev.StepReconciled):
        pid = event.result.get("pid") if isinstance(event.result, dict) else None
        if isinstance(pid, int):
            return pid
    return None


def without_pid(value: Any) -> Any:
    return {k: v for k, v in value.items() if k != "pid"} if isinstance(value, dict) else value


def check_ownership(run_id: str, rows: list[EncodedEvent], events: list[ev.Event], calls: list[Call],
                    deaths: dict[int, float]) -> list[str]:
    """Nothing was done for a run by a process that no longer owned it.

    The run's history is cut into segments at its ``RunRecovered`` events: the worker that
    takes a run over appends one before it runs any of the workflow, naming the previous
    owner, and the row carries the time. Within a segment one process, the one that wrote the
    ``RunRecovered`` (for the first segment: whoever ran the run first), may journal step
    results (each names the process that returned it) and call the service (each call is
    placed in a segment by its time). A worker that wrote or called after it was replaced
    would show up as a second process in a segment.

    The previous owner a ``RunRecovered`` names is either the process of the segment before,
    or one that claimed the run and was killed before it could append its own ``RunRecovered``
    (it then did nothing for the run). Either way it must have been dead (killed by the test,
    or by its own hand) when it was replaced: a live worker with a fresh lease is never taken
    over.
    """
    problems: list[str] = []
    starts: list[float] = []                    # segment i + 1 begins at starts[i]
    writers: list[int | None] = [None]          # the one process of each segment
    named: list[tuple[int, int | None]] = []    # (seq, previous owner) of each takeover
    for row, event in zip(rows, events, strict=True):
        if not isinstance(event, ev.RunRecovered):
            continue
        previous = pid_of(event.previous_owner)
        died = deaths.get(previous) if previous is not None else None
        if died is None:
            problems.append(f"{run_id}: seq {row.seq}: taken over from pid {previous}, which was never killed")
        elif died > row_time(row):
            problems.append(f"{run_id}: seq {row.seq}: taken over from pid {previous} at {row.at}, "
                            f"before it was killed at {died:.6f}")
        named.append((row.seq, previous))
        starts.append(row_time(row))
        writers.append(pid_of(event.worker))
    acted: set[int] = set()
    segment = 0
    for row, event in zip(rows, events, strict=True):
        if isinstance(event, ev.RunRecovered):
            segment += 1
            continue
        pid = result_pid(event)
        if pid is None:
            continue
        acted.add(pid)
        if writers[segment] is None:
            writers[segment] = pid
        elif pid != writers[segment]:
            problems.append(f"{run_id}: seq {row.seq} ({row.type}) written with a result from pid {pid}, "
                            f"but pid {writers[segment]} owned the run then")
    for call in sorted(calls, key=lambda c: c.at):
        acted.add(call.pid)
        index = bisect_right(starts, call.at)
        if writers[index] is None:
            writers[index] = call.pid
        elif call.pid != writers[index]:
            problems.append(f"{run_id}: {call.tool} {call.key} called by pid {call.pid} at {call.at:.6f}, "
                            f"when pid {writers[index]} owned the run")
    for index, (seq, previous) in enumerate(named):
        if previous != writers[index] and previous in acted:
            problems.append(f"{run_id}: seq {seq}: taken over from pid {previous}, which acted for the run, "
                            f"but not in the segment before (pid {writers[index]})")
    return problems


def journal_problems(run_id: str, rows: list[EncodedEvent]) -> list[str]:
    problems = []
    seqs = [row.seq for row in rows]
    if seqs != list(range(1, len(rows) + 1)):
        problems.append(f"{run_id}: journal seqs are not contiguous from 1: {seqs}")
    if (bad := verify_chain(rows)) is not None:
        problems.append(f"{run_id}: journal chain broken at seq {bad}")
    return problems


def completions(events: list[ev.Event]) -> Counter[int]:
    """Steps that completed: ran (StepRan, StepCompleted) or were reconciled as applied."""
    done = Counter(e.step_id for e in events if isinstance(e, ev.StepCompleted | ev.StepRan))
    done.update(e.step_id for e in events if isinstance(e, ev.StepReconciled) and e.applied)
    return done


def test_the_ownership_check_catches_a_stale_writer() -> None:
    """The check the chaos test relies on, on histories made up here: it passes a clean one
    (with a worker that claimed the run and died before it could write), and fails one in
    which the replaced worker wrote a result, made a call, or was replaced while alive."""
    def owner(pid: int) -> str:
        return f"host:{pid}:123:abcdef"

    def history(*items: tuple[float, ev.Event]) -> tuple[list[EncodedEvent], list[ev.Event]]:
        rows = [EncodedEvent("r", seq, type(e).__name__, format_time(at), "{}", "")
                for seq, (at, e) in enumerate(items, 1)]
        return rows, [e for _, e in items]

    def ran(step: int, pid: int) -> ev.StepRan:
        return ev.StepRan(step_id=step, kind="call", name="charge", args={}, attempt=1,
                          idempotency_key=f"r:{step}", result={"amount": 1, "pid": pid})

    def taken(previous: int, new: int) -> ev.RunRecovered:
        return ev.RunRecovered(worker=owner(new), previous_owner=owner(previous), reason="test")

    started = ev.RunStarted(workflow="w", workflow_ref="w.py:w", input={})
    # 100 runs steps 1-2 and dies at 12; 200 claims the run and dies at 13 before writing;
    # 300 takes over from 200 at 14 and runs step 3.
    clean = history((10.0, started), (11.0, ran(1, 100)), (11.5, ran(2, 100)), (14.0, taken(200, 300)),
                    (14.2, ran(3, 300)))
    calls = [Call("charge", "r:1", 100, 10.9), Call("charge", "r:2", 100, 11.4), Call("charge", "r:3", 300, 14.1)]
    deaths = {100: 12.0, 200: 13.0}
    assert check_ownership("r", *clean, calls, deaths) == []

    stale_result = history((10.0, started), (11.0, ran(1, 100)), (14.0, taken(100, 300)), (14.2, ran(2, 100)))
    assert any("result from pid 100" in p for p in check_ownership("r", *stale_result, calls[:1], deaths))
    stale_call = [*calls, Call("charge", "r:3", 100, 14.5)]
    assert any("called by pid 100" in p for p in check_ownership("r", *clean, stale_call, deaths))
    assert any("before it was killed" in p for p in check_ownership("r", *clean, calls, {100: 12.0, 200: 14.5}))
    assert any("never killed" in p for p in check_ownership("r", *clean, calls, {100: 12.0}))
    # 100 is named as replaced, but 200 acted in between: the takeover skipped an owner.
    skipped = history((10.0, started), (11.0, ran(1, 200)), (14.0, taken(100, 300)))
    assert any("which acted for the run" in p for p in check_ownership(
        "r", *skipped, [Call("charge", "r:1", 100, 10.5)], {100: 12.0, 200: 12.0}))


# -- 1. random SIGKILLs of four workers ----------------------------------------------------

RUNS = 200
STEPS = 6
SLOTS = 4               # worker processes alive at once
MIN_KILLS = 30          # SIGKILLs of workers that held a run at the time
KILL_TARGET = 45        # ... after which the chaos stops and calm workers finish the rest
CHAOS_BUDGET = 60.0     # seconds of chaos at most
MAX_KILL_DELAY = 0.8    # after the worker's first progress, kill within this many seconds
WIRE_SHARE = 0.25       # runs with one step that cannot be reconciled


def start_runs(baton: Baton, rng: random.Random, service_db: str) -> list[RunSpec]:
    specs = []
    for index in range(RUNS):
        plan = ["charge", "record"] + [rng.choice(["charge", "record"]) for _ in range(STEPS - 2)]
        rng.shuffle(plan)
        if index == 2 or (index > 2 and rng.random() < WIRE_SHARE):
            plan[rng.randrange(1, STEPS)] = "wire"
        amounts = [rng.randint(1, 999) for _ in range(STEPS)]
        crash_steps: list[int] = []
        if index < 2:
            # Deterministic in-doubt cases: the first call for these keys applies its effect
            # and then kills its own worker before returning.
            crash_steps = [plan.index("charge") + 1, plan.index("record") + 1]
        elif index == 2:
            crash_steps = [plan.index("wire") + 1]  # in doubt for good: needs attention
        run_id = baton.start(f"{WORKFLOWS}:payments", {
            "db": service_db, "plan": plan, "amounts": amounts, "crash_steps": crash_steps,
        })
        specs.append(RunSpec(run_id, plan, amounts, crash_steps))
    return specs


def check_payment_run(baton: Baton, spec: RunSpec, service: Service, deaths: dict[int, float]) -> list[str]:
    """Everything that must hold for one run after the chaos; returns the problems."""
    rid = spec.run_id
    record = baton.get_run(rid)
    rows = baton.journal(rid)
    events = baton.events(rid)
    problems = journal_problems(rid, rows)
    run_calls = [c for c in service.calls if c.key.startswith(f"{rid}:")]
    problems += check_ownership(rid, rows, events, run_calls, deaths)
    done = completions(events)
    if any(n > 1 for n in done.values()):
        problems.append(f"{rid}: a step completed more than once: {dict(sorted(done.items()))}")

    stuck: int | None = None  # the in-doubt step of a run that needs attention
    if record.status is RunStatus.NEEDS_ATTENTION:
        attention = [e for e in events if isinstance(e, ev.NeedsAttention)]
        if len(attention) != 1:
            return [*problems, f"{rid}: needs attention with {len(attention)} NeedsAttention events"]
        stuck = attention[0].step_id
        if not 1 <= stuck <= STEPS or spec.plan[stuck - 1] != "wire":
            return [*problems, f"{rid}: needs attention at step {stuck} ({attention[0].reason}), "
                               f"which is not a step without a reconcile hook (plan {spec.plan})"]
        starts = [(i, e) for i, e in enumerate(events) if isinstance(e, ev.StepStarted) and e.step_id == stuck]
        if len(starts) != 1 or starts[0][1].idempotent:
            problems.append(f"{rid}: in-doubt step {stuck} was started {len(starts)} times")
        elif not any(isinstance(e, ev.RunRecovered) for e in events[starts[0][0]:]):
            problems.append(f"{rid}: step {stuck} is said to be in doubt, but its worker never lost the run")
        if done[stuck] or any(isinstance(e, ev.StepFailed) and e.step_id == stuck for e in events):
            problems.append(f"{rid}: step {stuck} ended, yet the run needs attention")
        if record.outcome != attention[0].reason or f"{rid}:{stuck}" not in attention[0].reason:
            problems.append(f"{rid}: outcome {record.outcome!r} does not name the in-doubt call")
        later = sorted({e.step_id for e in events if isinstance(e, ev.StepStarted | ev.StepRan)
                        and e.step_id > stuck})
        if later:
            problems.append(f"{rid}: steps {later} ran after in-doubt step {stuck}")
        expected = set(range(1, stuck))
    elif record.status is RunStatus.COMPLETED:
        finished = [e for e in events if isinstance(e, ev.RunCompleted)]
        expected = set(range(1, STEPS + 1))
        if len(finished) != 1:
            return [*problems, f"{rid}: {len(finished)} RunCompleted events"]
        result = finished[0].result
        receipts = result.get("receipts") if isinstance(result, dict) else None
        if (not isinstance(result, dict) or not isinstance(receipts, list) or len(receipts) != STEPS
                or result.get("total") != sum(spec.amounts)):
            return [*problems, f"{rid}: result {result} does not add up to {sum(spec.amounts)}"]
        for step, receipt in enumerate(receipts, 1):
            key, name = f"{rid}:{step}", spec.plan[step - 1]
            if name == "charge":
                effect = service.effects.get(key)
                if effect is None or without_pid(receipt) != effect[3]:
                    problems.append(f"{key}: run got {receipt}, the service's first charge is {effect}")
            else:
                rows_of = service.ledger_of(key)
                if len(rows_of) == 1 and without_pid(receipt) != {"entry": rows_of[0][0], "amount": rows_of[0][5]}:
                    problems.append(f"{key}: run got {receipt}, the ledger holds {rows_of[0]}")
    else:
        return [*problems, f"{rid}: status {record.status.value}: {record.outcome}"]

    if set(done) != expected:
        problems.append(f"{rid}: steps completed {sorted(done)}, expected {sorted(expected)}")
    for step, name in enumerate(spec.plan, 1):
        key = f"{rid}:{step}"
        effects = 1 if step in expected else 0
        if name == "charge":
            applied = int(key in service.effects)
            if applied != effects or (applied and service.effects[key][:3] != (rid, step, spec.amounts[step - 1])):
                problems.append(f"{key}: the service holds {service.effects.get(key)} for a charge that "
                                f"completed {effects} times")
            continue
        entries = service.ledger_of(key)
        calls = service.calls_of(key)
        if step == stuck:
            if len(entries) > 1 or len(calls) > 1:
                problems.append(f"{key}: in-doubt {name} called {len(calls)} times, {len(entries)} ledger rows")
            continue
        if len(entries) != effects or any(row[1:] != (name, key, rid, step, spec.amounts[step - 1])
                                          for row in entries):
            problems.append(f"{key}: {len(entries)} ledger rows ({entries}) for a {name} that completed "
                            f"{effects} times")
        if name == "wire" and len(calls) != effects:
            problems.append(f"{key}: wire (no reconcile hook) called {len(calls)} times")
    return problems


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_random_sigkills_of_postgres_workers_lose_nothing_and_repeat_nothing(tmp_path: Path, pg_url: str) -> None:
    seed = crash_seed("postgres chaos test")
    rng = random.Random(seed)
    service_db = str(tmp_path / "service.db")
    pw.init_service(service_db)
    env = worker_env(pg_url, max_recoveries=50)
    baton = Baton(Settings(database_url=pg_url))
    chaos = WorkerChaos(seed, pg_url, env, tmp_path, MAX_KILL_DELAY)
    t0 = time.monotonic()
    try:
        specs = start_runs(baton, rng, service_db)
        chaos.start(SLOTS)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while (unfinished_runs(conn) and not chaos.errors and chaos.held_kills() < KILL_TARGET
                   and time.monotonic() - t0 < CHAOS_BUDGET):
                time.sleep(0.1)
        chaos.halt(timeout=60)
        chaos_seconds = time.monotonic() - t0

        # Whatever the killed workers held is taken over, and the rest run, here. A forced
        # call that has not killed its worker yet does so now: such a worker is replaced.
        last_exits: list[tuple[int, int]] = []   # (pid, return code)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while unfinished_runs(conn) and len(last_exits) < 10 * SLOTS:
                last = [start_worker(env, tmp_path, f"worker-last-{i}.log") for i in range(SLOTS)]
                last_exits += [(proc.pid, proc.wait(timeout=90)) for proc in last]
        total_seconds = time.monotonic() - t0

        service = Service.read(service_db)
        deaths = dict(service.deaths)
        with chaos.lock:
            kills = list(chaos.kills)
            for pid, sent_at in chaos.kill_times.items():
                deaths.setdefault(pid, sent_at)
        mid_work = sum(1 for pid, held in kills if held and pid not in service.deaths)
        all_events = {s.run_id: baton.events(s.run_id) for s in specs}
        takeovers = sum(isinstance(e, ev.RunRecovered) for evs in all_events.values() for e in evs)
        reconciled = [e for evs in all_events.values() for e in evs if isinstance(e, ev.StepReconciled)]
        statuses = Counter(baton.get_run(s.run_id).status.value for s in specs)
        repeated = sum(n > 1 for n in Counter(c.key for c in service.calls).values())
        replays = sum(eff[4] for eff in service.effects.values())
        logs = "".join(p.read_text() for p in sorted(tmp_path.glob("worker-*.log")))
        print(f"seed {seed}: {len(specs)} runs x {STEPS} steps, ended {dict(statuses)}; "
              f"{chaos.started + len(last_exits)} workers started; {len(kills)} SIGKILLs sent, {mid_work} of them to a "
              f"worker holding a run; {len(service.self_kills)} forced self-kills; unkilled exits "
              f"{dict(chaos.exits)}; chaos {chaos_seconds:.1f}s, total {total_seconds:.1f}s")
        print(f"  {takeovers} takeovers (RunRecovered); {len(reconciled)} in-doubt steps reconciled "
              f"({sum(e.applied for e in reconciled)} applied); {repeated} keys called more than once; "
              f"{replays} repeated idempotency keys answered from the service's record")

        context = f"(seed {seed}, {SEED_ENV}={seed} to rerun)"
        assert not chaos.errors, f"{chaos.errors} {context}"
        bad_exits = [(pid, rc) for pid, rc in last_exits if rc != 0 and pid not in service.deaths]
        assert not bad_exits, f"last workers exited {bad_exits}: {logs[-3000:]} {context}"
        assert mid_work >= MIN_KILLS, f"only {mid_work} mid-work kills before the runs settled {context}"
        assert statuses["completed"] + statuses["needs_attention"] == RUNS, f"{dict(statuses)} {context}"

        # No charge or ledger row the runs did not ask for, and none twice.
        keys = {f"{s.run_id}:{i}": name for s in specs for i, name in enumerate(s.plan, 1)}
        assert {k for k in service.effects if keys.get(k) != "charge"} == set(), context
        ledger_keys = Counter(row[2] for row in service.ledger)
        assert {k for k in ledger_keys if keys.get(k) not in ("record", "wire")} == set(), context
        assert all(n == 1 for n in ledger_keys.values()), {k: n for k, n in ledger_keys.items() if n > 1}

        # Per run: finished (or in doubt exactly where it had to be), every step once, every
        # effect once, nothing from a worker that no longer owned it, the chain whole.
        problems = [p for spec in specs for p in check_payment_run(baton, spec, service, deaths)]
        assert not problems, "\n".join([f"{len(problems)} problems {context}", *problems[:40]])
        report = verify(baton.store)
        assert report.ok and report.runs == RUNS, f"{report.problems[:10]} {context}"

        # The crashes really happened, and really were recovered from.
        # (A forced wire call may not get to kill its worker: a random kill while the step is
        # started leaves it in doubt for good before the call is made.)
        forced = {f"{s.run_id}:{step}" for s in specs for step in s.crash_steps}
        forced_reconcilable = {key for key in forced if keys[key] != "wire"}
        assert forced_reconcilable <= set(service.self_kills) <= forced, (service.self_kills, forced)
        assert baton.get_run(specs[2].run_id).status is RunStatus.NEEDS_ATTENTION, context
        assert takeovers >= MIN_KILLS // 2, context
        assert any(e.applied for e in reconciled), f"no in-doubt step was reconciled {context}"
        assert replays, f"no idempotency key was ever repeated {context}"
        assert "execution error" not in logs and "Traceback" not in logs, logs[-3000:]
    finally:
        chaos.halt(timeout=30)
        baton.close()


# -- 2. a paused worker is fenced off --------------------------------------------------------

SHORT_LEASE = 3.0
HEARTBEAT = 1.0  # the lease must last at least three heartbeats
PATIENT_WORKER = ("from baton import Baton, Settings; "
                  f"Baton(Settings.from_env(heartbeat_seconds={HEARTBEAT})).worker().run(until_idle=True)")


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode} while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_a_paused_worker_is_fenced_off_after_a_takeover(tmp_path: Path, pg_url: str) -> None:
    service_db = str(tmp_path / "service.db")
    pw.init_service(service_db)
    env = {**worker_env(pg_url, max_recoveries=3), "BATON_LEASE_SECONDS": str(SHORT_LEASE)}
    with Baton(Settings(database_url=pg_url)) as baton:
        run_id = baton.start(f"{WORKFLOWS}:slow_payment", {"db": service_db, "seconds": 2.0})
        slow_key = f"{run_id}:2"
        first = launch(PATIENT_WORKER, env=env, cwd=tmp_path, log=tmp_path / "first.log")
        stopped = False
        try:
            wait_for("the slow call", lambda: bool(Service.read(service_db).calls_of(slow_key)), 30, first)
            first.send_signal(signal.SIGSTOP)
            stopped = True
            paused_at = time.time()
            head_at_pause = baton.get_run(run_id).head_seq
            lease = baton.get_run(run_id).lease_expires_at
            assert lease is not None and pid_of(baton.get_run(run_id).owner) == first.pid
            # Past its lease (it cannot renew it while stopped), then a second worker.
            wait_for("the lease to run out", lambda: time.time() > lease + 0.5, 3 * SHORT_LEASE)
            second = launch(PATIENT_WORKER, env=env, cwd=tmp_path, log=tmp_path / "second.log")
            second_rc = second.wait(timeout=45)
            assert second_rc == 0, (tmp_path / "second.log").read_text()[-3000:]
            record = baton.get_run(run_id)
            assert record.status is RunStatus.COMPLETED, (record.status, record.outcome)
            before = baton.journal(run_id)
            assert first.poll() is None, "the paused worker died"

            first.send_signal(signal.SIGCONT)
            stopped = False
            resumed_at = time.time()
            first_rc = first.wait(timeout=30)
        finally:
            if stopped:
                first.send_signal(signal.SIGCONT)
        after = baton.journal(run_id)
        events = baton.events(run_id)
        service = Service.read(service_db)
        first_log = (tmp_path / "first.log").read_text()
        recovered = [e for e in events if isinstance(e, ev.RunRecovered)]
        slow_calls = service.calls_of(slow_key)
        print(f"\npaused worker: pid {first.pid} stopped at seq {head_at_pause}, resumed "
              f"{resumed_at - paused_at:.1f}s later; pid {second.pid} took over and finished "
              f"({len(after)} events); slow call made by pids {[c.pid for c in slow_calls]}, "
              f"{service.effects[slow_key][4]} replayed; paused worker exited {first_rc}")

        assert first_rc == 0, first_log[-3000:]
        assert after == before, "the paused worker wrote to the journal after it was taken over"
        assert "another worker took over; stopping without writing" in first_log, first_log[-3000:]
        assert "Traceback" not in first_log, first_log[-3000:]
        assert len(recovered) == 1
        assert pid_of(recovered[0].previous_owner) == first.pid and pid_of(recovered[0].worker) == second.pid
        assert "lease expired" in recovered[0].reason, recovered[0].reason
        # Each step journaled by its owner at the time: step 1 by the first worker, the rest
        # by the second (the first's results for step 2 were never written).
        assert [(type(e).__name__, e.step_id, result_pid(e)) for e in events
                if isinstance(e, ev.StepRan)] == [
            ("StepRan", 1, first.pid), ("StepRan", 2, second.pid), ("StepRan", 3, second.pid)]
        assert not journal_problems(run_id, after)
        assert verify(baton.store).ok
        # Both workers called the slow charge; it took effect once, and the paused worker's
        # late call (after it resumed) was answered from the service's record.
        assert [c.pid for c in slow_calls] == [first.pid, second.pid], slow_calls
        assert service.effects[slow_key][4] == 1, service.effects[slow_key]
        assert set(service.effects) == {f"{run_id}:{i}" for i in (1, 2, 3)}
        assert [c.pid for c in service.calls_of(f"{run_id}:3")] == [second.pid]
        result = baton.get_run(run_id)
        assert result.status is RunStatus.COMPLETED and result.owner is None


# -- 3. the server restarts under running workers -------------------------------------------

RESTART_RUNS = 12
ROUNDS = 3
SLOW_CALL = 0.4
NAP = 2.5               # longer than short_sleep: the run sleeps in the index and is picked up again
RESTART_WORKERS = 3
CLUSTER_VERSION_DIR = Path("/etc/postgresql")
CLI_WORKER = "import sys; from baton.cli import main; sys.argv[0] = 'baton'; main()"


def server_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0


def pg_ctlcluster(action: str) -> subprocess.CompletedProcess[str]:
    version = sorted(p.name for p in CLUSTER_VERSION_DIR.iterdir())[-1]
    return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                          capture_output=True, text=True, timeout=60, check=False)


def ensure_server_running() -> None:
    if not server_ready():
        pg_ctlcluster("start")
    deadline = time.monotonic() + 60
    while not server_ready() and time.monotonic() < deadline:
        time.sleep(0.2)


def retrying(call: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``call()``, again while the server is away."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (StoreError, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_workers_carry_on_across_a_postgres_restart(tmp_path: Path, pg_url: str) -> None:
    assert os.geteuid() == 0, "restarting the server needs root"
    service_db = str(tmp_path / "service.db")
    pw.init_service(service_db)
    env = worker_env(pg_url, max_recoveries=10)
    rng = random.Random(RESTART_RUNS)
    baton = Baton(Settings(database_url=pg_url))
    workers: list[subprocess.Popen[str]] = []
    try:
        runs = [baton.start(f"{WORKFLOWS}:long_haul", {
            "db": service_db, "rounds": ROUNDS, "amounts": [rng.randint(1, 999) for _ in range(2 * ROUNDS)],
            "seconds": SLOW_CALL, "nap": NAP}) for _ in range(RESTART_RUNS)]
        t0 = time.monotonic()
        workers = [launch(CLI_WORKER, "worker", "--concurrency", "2", "--quiet", env=env, cwd=tmp_path,
                          log=tmp_path / f"worker-{i}.log") for i in range(RESTART_WORKERS)]

        # Restart once half the runs have made progress and runs are in a worker's hands.
        def in_flight() -> bool:
            steps = pg_rows(pg_url, "SELECT COUNT(DISTINCT run_id) FROM events WHERE type = 'StepRan'")[0][0]
            return bool(steps >= RESTART_RUNS // 2 and pg_rows(
                pg_url, "SELECT 1 FROM runs WHERE owner IS NOT NULL LIMIT 1"))

        wait_for("runs to get going", in_flight, 30)
        journals_before = {rid: baton.journal(rid) for rid in runs}
        heads_before = {rid: len(rows) for rid, rows in journals_before.items()}
        started_at = pg_rows(pg_url, "SELECT pg_postmaster_start_time()")[0][0]
        restart_at = time.time()
        restarted = pg_ctlcluster("restart")
        back_at = time.time()
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert server_ready()
        assert retrying(lambda: pg_rows(pg_url, "SELECT pg_postmaster_start_time()"))[0][0] > started_at
        alive_after_restart = [w.poll() is None for w in workers]

        def settled() -> bool:
            return not retrying(lambda: pg_rows(pg_url, "SELECT 1 FROM runs WHERE status = ANY(%s) LIMIT 1",
                                                (list(UNFINISHED),)))

        deadline = time.monotonic() + 90
        while not settled() and time.monotonic() < deadline and all(w.poll() is None for w in workers):
            time.sleep(0.2)
        alive_at_end = [w.poll() is None for w in workers]
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=30) for w in workers]
        elapsed = time.monotonic() - t0

        service = Service.read(service_db)
        logs = {i: (tmp_path / f"worker-{i}.log").read_text() for i in range(RESTART_WORKERS)}
        statuses = Counter(retrying(partial(baton.get_run, r)).status.value for r in runs)
        pids = {w.pid for w in workers}
        after_restart: Counter[int] = Counter()
        problems: list[str] = []
        takeovers = reconciled = 0
        for rid in runs:
            rows = retrying(partial(baton.journal, rid))
            events = retrying(partial(baton.events, rid))
            problems += journal_problems(rid, rows)
            if rows[:heads_before[rid]] != journals_before[rid]:
                problems.append(f"{rid}: the journal written before the restart changed or lost events")
            takeovers += sum(isinstance(e, ev.RunRecovered) for e in events)
            reconciled += sum(isinstance(e, ev.StepReconciled) for e in events)
            for row, event in zip(rows, events, strict=True):
                pid = result_pid(event)
                if pid is not None and row.seq > heads_before.get(rid, 0):
                    after_restart[pid] += 1
                if pid is not None and pid not in pids:
                    problems.append(f"{rid}: seq {row.seq} has a result from pid {pid}, not a worker")
            for e in events:
                if isinstance(e, ev.RunRecovered) and pid_of(e.previous_owner) not in pids:
                    problems.append(f"{rid}: taken over from an unknown owner {e.previous_owner}")
            done = completions(events)
            expected = {3 * i + k for i in range(ROUNDS) for k in (1, 2)}
            if set(done) != expected or any(n != 1 for n in done.values()):
                problems.append(f"{rid}: steps completed {dict(sorted(done.items()))}, expected {sorted(expected)} "
                                "once each")
            finished = [e for e in events if isinstance(e, ev.RunCompleted)]
            result = finished[0].result if len(finished) == 1 else None
            receipts = result.get("receipts") if isinstance(result, dict) else None
            if not isinstance(receipts, list) or len(receipts) != 2 * ROUNDS:
                problems.append(f"{rid}: {len(finished)} RunCompleted events, result {result}")
                continue
            for step, receipt in zip(sorted(expected), receipts, strict=True):
                key = f"{rid}:{step}"
                if step % 3 == 1:
                    effect = service.effects.get(key)
                    if effect is None or without_pid(receipt) != effect[3]:
                        problems.append(f"{key}: run got {receipt}, the service's charge is {effect}")
                else:
                    entries = service.ledger_of(key)
                    if len(entries) != 1 or without_pid(receipt) != {"entry": entries[0][0],
                                                                     "amount": entries[0][5]}:
                        problems.append(f"{key}: run got {receipt}, the ledger holds {entries}")
        errors = sum(log.count("execution error") for log in logs.values())
        print(f"\npostgres restart: {len(runs)} runs, ended {dict(statuses)} in {elapsed:.1f}s; server down "
              f"{back_at - restart_at:.1f}s; workers alive after the restart {alive_after_restart}, at the end "
              f"{alive_at_end}, exit codes {codes}; steps journaled after the restart by worker "
              f"{[after_restart[w.pid] for w in workers]}; {takeovers} takeovers, {reconciled} reconciled, "
              f"{errors} execution errors logged")

        context = "\n".join(f"--- worker {i} ---\n{log[-2500:]}" for i, log in logs.items())
        # A worker that exits 1 with "error: no connection to PostgreSQL" here is the bug described
        # above test_an_idle_worker_outlives_a_database_outage (a claim in flight at the restart).
        assert all(alive_after_restart) and all(alive_at_end), f"a worker died {codes}\n{context}"
        assert codes == [0] * RESTART_WORKERS, f"{codes}\n{context}"
        assert statuses == {"completed": RESTART_RUNS}, f"{dict(statuses)}\n{context}"
        assert not problems, "\n".join([f"{len(problems)} problems", *problems[:40]])
        ledger_keys = Counter(row[2] for row in service.ledger)
        assert all(n == 1 for n in ledger_keys.values()), {k: n for k, n in ledger_keys.items() if n > 1}
        assert len(ledger_keys) == len(service.effects) == RESTART_RUNS * ROUNDS
        assert sum(after_restart.values()) > 0 and set(after_restart) <= pids
        report = retrying(lambda: verify(baton.store))
        assert report.ok and report.runs == RESTART_RUNS, report.problems[:10]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        ensure_server_running()
        baton.close()
    assert server_ready()


# -- 4. the database is away for longer than a connection wait -----------------------------

OUTAGE = 13.0  # longer than the pool's wait for a connection (PostgresStore's connect_timeout, 10 s)


def allow_connections(database: str, allowed: bool) -> None:
    """Open or close one database to new connections (closing also ends the open ones): an
    outage of this test's database only, which leaves the server, and other tests, alone."""
    with admin() as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


@pytest.mark.timeout(90)
def test_an_idle_worker_outlives_a_database_outage(tmp_path: Path, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    service_db = str(tmp_path / "service.db")
    pw.init_service(service_db)
    env = worker_env(pg_url, max_recoveries=3)
    worker = launch(CLI_WORKER, "worker", "--quiet", env=env, cwd=tmp_path, log=tmp_path / "worker.log")

    def payment(amount: int) -> RunStatus:
        with Baton(Settings(database_url=pg_url)) as baton:
            run_id = baton.start(f"{WORKFLOWS}:payments", {"db": service_db, "plan": ["charge", "record"],
                                                           "amounts": [amount, amount]})
            wait_for("the run to complete", lambda: baton.get_run(run_id).status.terminal, 30, worker)
            return baton.get_run(run_id).status

    assert payment(1) is RunStatus.COMPLETED
    allow_connections(database, False)
    try:
        time.sleep(OUTAGE)
    finally:
        allow_connections(database, True)
    alive = worker.poll() is None
    log = (tmp_path / "worker.log").read_text()
    print(f"\ndatabase outage of {OUTAGE:.0f}s: idle worker {'alive' if alive else f'exited {worker.returncode}'}")
    assert alive, f"the worker exited {worker.returncode} during the outage:\n{log[-2000:]}"
    assert payment(2) is RunStatus.COMPLETED
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
