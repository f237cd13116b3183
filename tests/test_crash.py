"""Crash safety with real processes: workers are SIGKILLed at random points while runs call
side-effecting tools, restarted, and finally run to completion.

The kill points are chosen from a seed that is printed; set ``BATON_CRASH_SEED`` to reuse
one (the seed fixes the runs' inputs and the kill delays; process timing still varies).
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, RunStatus, Settings
from baton.journal import events as ev
from baton.journal import verify_chain
from crash_support import (
    SEED_ENV,
    RunSpec,
    WorkerChaos,
    connect,
    crash_seed,
    kill_launched,
    sqlite_url,
    start_worker,
    worker_env,
)
from crashapp import crash_workflows as cw

WORKFLOWS = str(cw.WORKFLOWS_FILE)

MIN_KILLS = 50          # SIGKILLs of workers that held a run at the time
RUNS_PER_WAVE = 12      # a new wave is started while kills are still needed
STEPS = 8
SLOTS = 2               # worker processes alive at once during the chaos phase
CHAOS_BUDGET = 55.0     # seconds to reach MIN_KILLS before giving up (and failing)
MAX_KILL_DELAY = 0.150  # after the worker's first progress, kill within this many seconds
UNFINISHED = ("pending", "running", "sleeping", "waiting")


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_worker_left_behind() -> Iterator[None]:
    yield
    kill_launched()


@dataclass
class Service:
    """Everything the fake service recorded."""

    effects: dict[str, tuple[str, int, int, Any, int]]   # key -> run, step, amount, result, replays
    ledger: list[tuple[int, str, str, int, int]]
    invocations: Counter[str]
    self_kills: dict[str, tuple[str, int]]

    @classmethod
    def read(cls, db: str) -> Service:
        with closing(connect(db)) as conn:
            effects = {
                key: (run, step, amount, json.loads(result), replays)
                for key, run, step, amount, result, replays in conn.execute(
                    "SELECT key, run, step, amount, result, replays FROM effects")
            }
            ledger = list(conn.execute("SELECT entry, key, run, step, amount FROM ledger ORDER BY entry"))
            invocations = Counter(k for (k,) in conn.execute("SELECT key FROM invocations"))
            self_kills = {k: (t, p) for k, t, p in conn.execute("SELECT key, tool, pid FROM self_kills")}
        return cls(effects, ledger, invocations, self_kills)


# -- the chaos phase -------------------------------------------------------------------------


def mid_work_kills(chaos: WorkerChaos, service_db: str) -> int:
    """Kills we sent to a worker that held a run (not counting workers that had just
    killed themselves on purpose)."""
    with closing(connect(service_db)) as conn:
        own = {pid for (pid,) in conn.execute("SELECT pid FROM self_kills")}
    with chaos.lock:
        return sum(1 for pid, held in chaos.kills if held and pid not in own)


def start_wave(baton: Baton, rng: random.Random, service_db: str, *, forced: bool) -> list[RunSpec]:
    specs = []
    for index in range(RUNS_PER_WAVE):
        plan = ["charge", "record"] + [rng.choice(["charge", "record"]) for _ in range(STEPS - 2)]
        rng.shuffle(plan)
        amounts = [rng.randint(1, 999) for _ in range(STEPS)]
        crash_steps: list[int] = []
        if forced and index < 2:
            # Deterministic in-doubt cases: the first call for these keys applies its effect
            # and then kills its own worker before returning.
            crash_steps = [plan.index("charge") + 1, plan.index("record") + 1]
        run_id = baton.start(f"{WORKFLOWS}:payments", {
            "db": service_db, "plan": plan, "amounts": amounts, "crash_steps": crash_steps,
        })
        specs.append(RunSpec(run_id, plan, amounts, crash_steps))
    return specs


def unfinished_runs(baton_db: Path) -> int:
    conn = sqlite3.connect(baton_db, timeout=30.0)
    try:
        marks = ",".join("?" * len(UNFINISHED))
        return int(conn.execute(f"SELECT COUNT(*) FROM runs WHERE status IN ({marks})",
                                UNFINISHED).fetchone()[0])
    finally:
        conn.close()


def check_run(baton: Baton, spec: RunSpec, service: Service) -> list[str]:
    """Everything that must hold for one run after the chaos; returns the problems."""
    problems: list[str] = []
    rid = spec.run_id
    record = baton.get_run(rid)
    if record.status is not RunStatus.COMPLETED:
        return [f"{rid}: status {record.status.value}: {record.outcome}"]
    events = baton.events(rid)
    if (bad := verify_chain(baton.journal(rid))) is not None:
        problems.append(f"{rid}: journal chain broken at seq {bad}")
    completions = Counter(e.step_id for e in events if isinstance(e, ev.StepCompleted | ev.StepRan))
    completions.update(e.step_id for e in events if isinstance(e, ev.StepReconciled) and e.applied)
    if completions != Counter(range(1, STEPS + 1)):
        problems.append(f"{rid}: steps completed (StepCompleted, StepRan or reconciled as applied) "
                        f"{dict(sorted(completions.items()))}, expected each of 1..{STEPS} once")
    finished = [e for e in events if isinstance(e, ev.RunCompleted)]
    if len(finished) != 1:
        problems.append(f"{rid}: {len(finished)} RunCompleted events")
        return problems
    result = finished[0].result
    receipts = result.get("receipts") if isinstance(result, dict) else None
    if (not isinstance(result, dict) or not isinstance(receipts, list) or len(receipts) != STEPS
            or result.get("total") != sum(spec.amounts)):
        problems.append(f"{rid}: result {result} does not add up to {sum(spec.amounts)}")
        return problems
    for step, (name, amount, receipt) in enumerate(zip(spec.plan, spec.amounts, receipts, strict=True), 1):
        key = f"{rid}:{step}"
        if name == "charge":
            effect = service.effects.get(key)
            if effect is None:
                problems.append(f"{key}: charge missing at the service")
                continue
            run, eff_step, eff_amount, first_result, _ = effect
            if (run, eff_step, eff_amount) != (rid, step, amount):
                problems.append(f"{key}: service holds {effect}, expected a charge of {amount}")
            if receipt != first_result:
                problems.append(f"{key}: run got {receipt}, service's first result was {first_result}")
        else:
            rows = [row for row in service.ledger if row[1] == key]
            if len(rows) != 1:
                problems.append(f"{key}: {len(rows)} ledger rows for a non-idempotent call")
                continue
            entry, _, run, row_step, row_amount = rows[0]
            if (run, row_step, row_amount) != (rid, step, amount):
                problems.append(f"{key}: ledger row {rows[0]} does not match amount {amount}")
            if receipt != {"entry": entry, "amount": amount}:
                problems.append(f"{key}: run got {receipt}, ledger entry is {entry}")
    return problems


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_random_sigkills_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    seed = crash_seed("crash test")
    rng = random.Random(seed)
    baton_db = tmp_path / "baton.db"
    service_db = str(tmp_path / "service.db")
    cw.init_service(service_db)
    env = worker_env(sqlite_url(baton_db), max_recoveries=50)
    baton = Baton(Settings(database_url=sqlite_url(baton_db)))
    chaos = WorkerChaos(seed, baton_db, env, tmp_path, MAX_KILL_DELAY)
    t0 = time.monotonic()
    try:
        specs = start_wave(baton, rng, service_db, forced=True)
        forced_keys = {f"{s.run_id}:{step}" for s in specs for step in s.crash_steps}
        chaos.start(SLOTS)
        while mid_work_kills(chaos, service_db) < MIN_KILLS and time.monotonic() - t0 < CHAOS_BUDGET:
            if chaos.errors:
                break
            if unfinished_runs(baton_db) < 2 * SLOTS:
                specs += start_wave(baton, rng, service_db, forced=False)
            time.sleep(0.05)
        chaos.halt(timeout=60)
        chaos_seconds = time.monotonic() - t0

        # The last worker takes over whatever the killed ones held and finishes everything.
        last = start_worker(env, tmp_path, "worker-last.log")
        last_rc = last.wait(timeout=60)
        total_seconds = time.monotonic() - t0

        service = Service.read(service_db)
        kills = mid_work_kills(chaos, service_db)
        all_events = {s.run_id: baton.events(s.run_id) for s in specs}
        recovered = sum(isinstance(e, ev.RunRecovered) for evs in all_events.values() for e in evs)
        reconciled = [(s.run_id, e) for s in specs for e in all_events[s.run_id]
                      if isinstance(e, ev.StepReconciled)]
        random_reconciled = [(rid, e) for rid, e in reconciled if f"{rid}:{e.step_id}" not in forced_keys]
        replays = {key: eff[4] for key, eff in service.effects.items() if eff[4]}
        retried = {key: n for key, n in service.invocations.items() if n > 1}
        logs = "".join(p.read_text() for p in sorted(tmp_path.glob("worker-*.log")))
        statuses = Counter(baton.get_run(s.run_id).status.value for s in specs)
        print(f"seed {seed}: {len(specs)} runs x {STEPS} steps, ended {dict(statuses)}; "
              f"{chaos.started + 1} workers started; "
              f"{len(chaos.kills)} SIGKILLs sent, {kills} of them to a worker holding a run; "
              f"{len(service.self_kills)} forced self-kills; unkilled exits {dict(chaos.exits)}; "
              f"chaos {chaos_seconds:.1f}s, total {total_seconds:.1f}s")
        print(f"  {recovered} takeovers (RunRecovered); {len(reconciled)} in-doubt steps reconciled "
              f"({sum(e.applied for _, e in reconciled)} applied), {len(random_reconciled)} of them by "
              f"random kills; {len(retried)} keys invoked more than once; {sum(replays.values())} "
              f"repeated idempotency keys answered from the service's record")

        context = f"(seed {seed}, {SEED_ENV}={seed} to rerun)"
        assert not chaos.errors, f"{chaos.errors} {context}"
        assert last_rc == 0, f"last worker exited {last_rc}: {logs[-3000:]} {context}"
        assert kills >= MIN_KILLS, f"only {kills} mid-work kills in {CHAOS_BUDGET}s {context}"

        # Nothing twice: no charge applied more than once, no charge or ledger row the runs
        # did not ask for, and each non-idempotent key in the ledger exactly once.
        charge_keys = {f"{s.run_id}:{i}" for s in specs for i, n in enumerate(s.plan, 1) if n == "charge"}
        record_keys = {f"{s.run_id}:{i}" for s in specs for i, n in enumerate(s.plan, 1) if n == "record"}
        assert set(service.effects) <= charge_keys, set(service.effects) - charge_keys
        charges = Counter((eff[0], eff[1]) for eff in service.effects.values())
        assert all(n == 1 for n in charges.values()), {k: n for k, n in charges.items() if n > 1}
        ledger_keys = Counter(row[1] for row in service.ledger)
        assert set(ledger_keys) <= record_keys, set(ledger_keys) - record_keys
        assert all(n == 1 for n in ledger_keys.values()), {k: n for k, n in ledger_keys.items() if n > 1}

        # Nothing lost: every run completed with the service's answers, every step once.
        problems = [p for spec in specs for p in check_run(baton, spec, service)]
        assert not problems, "\n".join([f"{len(problems)} problems {context}", *problems[:40]])
        assert set(service.effects) == charge_keys and set(ledger_keys) == record_keys, context

        # The crashes really happened, and really were recovered from.
        assert recovered >= 1, context
        assert {k for k in service.self_kills} == forced_keys, (service.self_kills, forced_keys)
        assert any(e.applied for _, e in reconciled), f"no in-doubt step was reconciled {context}"
        assert replays, f"no idempotency key was ever repeated {context}"
        assert retried, f"no tool call was ever retried {context}"
        assert "execution error" not in logs, logs[-3000:]
    finally:
        chaos.halt(timeout=30)
        baton.close()


@pytest.mark.timeout(60)
def test_crash_loop_fails_the_run_after_max_recoveries(tmp_path: Path) -> None:
    max_recoveries = 2
    baton_db = tmp_path / "baton.db"
    service_db = str(tmp_path / "service.db")
    cw.init_service(service_db)
    env = worker_env(sqlite_url(baton_db), max_recoveries=max_recoveries)
    with Baton(Settings(database_url=sqlite_url(baton_db))) as baton:
        run_id = baton.start(f"{WORKFLOWS}:crash_loop", {"db": service_db})
        codes: list[int] = []
        # Far more workers than the run may take: if the limit did not hold, this would
        # stop only here, and the assertions below would fail.
        while len(codes) < max_recoveries + 6:
            status = baton.get_run(run_id).status
            if status.terminal or status is RunStatus.NEEDS_ATTENTION:
                break
            worker = start_worker(env, tmp_path)
            codes.append(worker.wait(timeout=30))

        record = baton.get_run(run_id)
        events = baton.events(run_id)
        service = Service.read(service_db)
        recovered = sum(isinstance(e, ev.RunRecovered) for e in events)
        crash_key = f"{run_id}:2"
        print(f"\ncrash loop: worker exit codes {codes}, {recovered} takeovers, outcome {record.outcome!r}")

        assert record.status is RunStatus.FAILED, (record.status, record.outcome, codes)
        assert record.outcome is not None and "crash loop" in record.outcome
        assert f"limit {max_recoveries}" in record.outcome
        failed = [e for e in events if isinstance(e, ev.RunFailed)]
        assert len(failed) == 1 and "crash loop" in failed[0].error.message
        # Bounded: the first worker plus one per takeover, and no more.
        assert max_recoveries + 1 <= len(codes) <= max_recoveries + 2, codes
        assert codes[:-1] == [-signal.SIGKILL] * (len(codes) - 1), codes
        assert codes[-1] == 0, codes
        assert recovered == len(codes) - 1, (recovered, codes)
        assert service.invocations[crash_key] == len(codes) - 1
        # The step before the loop made progress once and was never repeated.
        assert service.invocations[f"{run_id}:1"] == 1
        assert service.effects[f"{run_id}:1"][4] == 0  # never asked again
        assert verify_chain(baton.journal(run_id)) is None


@pytest.mark.timeout(60)
def test_unreconcilable_call_killed_mid_call_needs_attention(tmp_path: Path) -> None:
    baton_db = tmp_path / "baton.db"
    service_db = str(tmp_path / "service.db")
    cw.init_service(service_db)
    env = worker_env(sqlite_url(baton_db), max_recoveries=3)
    with Baton(Settings(database_url=sqlite_url(baton_db))) as baton:
        run_id = baton.start(f"{WORKFLOWS}:unreconcilable", {"db": service_db})
        key = f"{run_id}:2"
        worker = start_worker(env, tmp_path)
        deadline = time.monotonic() + 30
        while not any(row[1] == key for row in Service.read(service_db).ledger):
            assert worker.poll() is None, f"worker exited {worker.returncode} before the transfer"
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.01)
        # The transfer took effect and its worker is still inside the call: kill it there.
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL

        codes: list[int] = []
        for _ in range(2):  # the first takes the run over; the second must leave it alone
            codes.append(start_worker(env, tmp_path).wait(timeout=30))
        assert codes == [0, 0], (tmp_path / "worker.log").read_text()[-3000:]

        record = baton.get_run(run_id)
        events = baton.events(run_id)
        service = Service.read(service_db)
        assert record.status is RunStatus.NEEDS_ATTENTION, (record.status, record.outcome)
        assert sum(1 for row in service.ledger if row[1] == key) == 1
        assert service.invocations[key] == 1, "the in-doubt call was made again"
        assert service.invocations[f"{run_id}:1"] == 1
        attention = [e for e in events if isinstance(e, ev.NeedsAttention)]
        assert len(attention) == 1, attention
        reason = attention[0].reason
        print(f"\nneeds attention: {reason}")
        assert attention[0].step_id == 2
        assert "step 2" in reason and "transfer" in reason and key in reason, reason
        assert record.outcome == reason
        started = [e for e in events if isinstance(e, ev.StepStarted) and e.step_id == 2]
        assert len(started) == 1 and not started[0].idempotent
        assert not [e for e in events if isinstance(e, ev.StepCompleted | ev.StepRan | ev.StepReconciled)
                    and e.step_id == 2]
        assert sum(isinstance(e, ev.RunRecovered) for e in events) == 1
        assert verify_chain(baton.journal(run_id)) is None
