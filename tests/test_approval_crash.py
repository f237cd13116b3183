"""Crash safety of approved steps, with real processes.

A refund above 100 is held by policy for a manager's approval. Worker processes (and the
process that approves) are SIGKILLed at chosen and at random points around the approved
step, a fresh worker then finishes the run, and every time the same must hold: the request
was made once, granted once and consumed once (in the append that records the step's
start), the refund happened once, and the journal's hash chain is intact.

Random kill points come from a seed that is printed; set ``BATON_CRASH_SEED`` to reuse one.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from baton import Baton, RunStatus, Settings
from baton.approvals import ApprovalRecord
from baton.audit import verify
from baton.config import Governance
from baton.errors import ApprovalError
from baton.journal import events as ev
from baton.journal import verify_chain
from crash_support import (
    SEED_ENV,
    WORKER_CODE,
    WorkerChaos,
    connect,
    crash_seed,
    kill_launched,
    launch,
    sqlite_url,
    worker_env,
)
from crashapp import approval_workflows as aw

WORKFLOW = f"{aw.WORKFLOWS_FILE}:refund"
GATED = aw.GATED_STEP
SERVING_WORKER_CODE = "from baton import Baton; Baton().worker(concurrency=2).run()"
# Approves one request as bob. With "read" or "append" as its second argument it kills
# itself right after that store call returns (the journal read; the decision written).
DECIDER_CODE = """
import os, signal, sys
from baton import Baton
approval_id, die_after = sys.argv[1], sys.argv[2]
baton = Baton()
if die_after in ("read", "append"):
    original = getattr(baton.store, die_after)
    def dying(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(baton.store, die_after, dying)
print("ready", flush=True)
sys.stdin.readline()
baton.decide(approval_id, principal="bob", approve=True, reason="refund checked")
print("decided", flush=True)
"""
UNFINISHED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING)


# -- processes -----------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    yield
    kill_launched()


@dataclass
class App:
    """One test's databases, config and runtime (the test process's own Baton)."""

    tmp: Path
    baton: Baton
    service_db: str
    env: dict[str, str]

    def spawn(self, code: str = WORKER_CODE, *args: str, log: str = "worker.log",
              stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.DEVNULL,
              ) -> subprocess.Popen[str]:
        return launch(code, *args, env=self.env, cwd=self.tmp, log=self.tmp / log, stdin=stdin, stdout=stdout)

    def work(self) -> int:
        """Run a worker until nothing is left for it to do; its exit code."""
        return self.spawn().wait(timeout=60)

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp.glob("*.log")))

    def status(self, run_id: str) -> RunStatus:
        return self.baton.get_run(run_id).status


def make_app(tmp: Path, max_recoveries: int = 3) -> App:
    config = aw.write_config(tmp)
    url = sqlite_url(tmp / "baton.db")
    service_db = str(tmp / "service.db")
    aw.init_service(service_db)
    env = worker_env(url, max_recoveries, config)
    baton = Baton(Settings(database_url=url), governance=Governance.load(config))
    return App(tmp, baton, service_db, env)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    made = make_app(tmp_path)
    try:
        yield made
    finally:
        made.baton.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting ({timeout}s) until {what}"
        time.sleep(0.005)


# -- runs and what the service saw -------------------------------------------------------------


@dataclass
class Spec:
    run_id: str
    order_id: str
    amount: float
    via: str
    crash: str = ""

    @property
    def key(self) -> str:
        """The idempotency key of the gated refund."""
        return f"{self.run_id}:{GATED}"


def start(app: App, order_id: str, via: str, crash: str = "", amount: float = 120.5) -> Spec:
    run_id = app.baton.start(WORKFLOW, {"db": app.service_db, "order_id": order_id, "amount": amount,
                                        "via": via, "crash": crash}, principal="alice")
    return Spec(run_id, order_id, amount, via, crash)


@dataclass
class Service:
    """Everything the fake refund service recorded."""

    effects: dict[str, tuple[str, float, Any, int]]      # key -> order, amount, first result, replays
    ledger: list[tuple[int, str, str, str, float]]       # entry, tool, key, order, amount
    invocations: Counter[tuple[str, str]]                # (tool, key) -> raw calls
    self_kills: dict[str, tuple[str, str]]               # key -> tool, phase

    @classmethod
    def read(cls, db: str) -> Service:
        with closing(connect(db)) as conn:
            effects = {key: (order, amount, json.loads(result), replays) for key, order, amount, result, replays
                       in conn.execute("SELECT key, order_id, amount, result, replays FROM effects")}
            ledger = list(conn.execute("SELECT entry, tool, key, order_id, amount FROM ledger ORDER BY entry"))
            invocations = Counter((tool, key) for tool, key in conn.execute("SELECT tool, key FROM invocations"))
            self_kills = {k: (t, p) for k, t, p in conn.execute("SELECT key, tool, phase FROM self_kills")}
        return cls(effects, ledger, invocations, self_kills)

    def ledger_rows(self, key: str) -> list[tuple[int, str, str, str, float]]:
        return [row for row in self.ledger if row[2] == key]

    def calls(self, spec: Spec) -> int:
        """Raw calls of the run's refund tool."""
        return self.invocations[(f"{spec.via}_refund", spec.key)]


def of_type(baton: Baton, run_id: str, kind: type[Any]) -> list[Any]:
    return [e for e in baton.events(run_id) if isinstance(e, kind)]


def the_approval(baton: Baton, run_id: str) -> ApprovalRecord:
    found = baton.store.list_approvals(status=None, run_id=run_id)
    assert len(found) == 1, f"run {run_id}: {len(found)} approval requests in the index: {found}"
    return found[0]


def approval_problems(baton: Baton, spec: Spec) -> list[str]:
    """Requested once, granted once (by bob), consumed once, in the append that records the
    step's first start, and the index row agrees; the journal is intact."""
    rid = spec.run_id
    problems: list[str] = []
    rows = baton.journal(rid)
    events = baton.events(rid)
    if (bad := verify_chain(rows)) is not None:
        problems.append(f"{rid}: hash chain broken at seq {bad}")
    report = verify(baton.store, rid)
    if not report.ok:
        problems.append(f"{rid}: audit: {'; '.join(map(str, report.problems))}")
    requested = [e for e in events if isinstance(e, ev.ApprovalRequested)]
    granted = [e for e in events if isinstance(e, ev.ApprovalGranted)]
    consumed = [i for i, e in enumerate(events) if isinstance(e, ev.ApprovalConsumed)]
    other = [e.type_name for e in events
             if isinstance(e, ev.ApprovalDenied | ev.ApprovalWithdrawn | ev.ApprovalEscalated)]
    if (len(requested), len(granted), len(consumed)) != (1, 1, 1) or other:
        return [*problems, f"{rid}: {len(requested)} ApprovalRequested, {len(granted)} ApprovalGranted, "
                           f"{len(consumed)} ApprovalConsumed, and {other}; expected one of the first three"]
    approval_id = requested[0].approval_id
    used = events[consumed[0]]
    if {granted[0].approval_id, used.approval_id} != {approval_id} or used.step_id != GATED:
        problems.append(f"{rid}: the grant or the consumption is of another request: {granted[0]}, {used}")
    if granted[0].by != "bob":
        problems.append(f"{rid}: granted by {granted[0].by}")
    if events.index(granted[0]) > consumed[0]:
        problems.append(f"{rid}: consumed before it was granted")
    at = consumed[0]
    after = events[at + 1] if at + 1 < len(events) else None
    if not (isinstance(after, ev.StepStarted) and after.step_id == GATED and after.attempt == 1
            and after.idempotency_key == spec.key and rows[at].at == rows[at + 1].at):
        problems.append(f"{rid}: ApprovalConsumed is not written with the step's first StepStarted: "
                        f"next is {after}")
    attempts = [i for i, e in enumerate(events) if isinstance(e, ev.StepStarted | ev.StepRan) and e.step_id == GATED]
    if attempts and attempts[0] != at + 1:
        problems.append(f"{rid}: the gated step started before its approval was consumed")
    keys = {e.idempotency_key for e in events if isinstance(e, ev.StepStarted | ev.StepRan) and e.step_id == GATED}
    if keys != {spec.key}:
        problems.append(f"{rid}: the gated step ran under keys {keys}, expected only {spec.key}")
    record = baton.store.get_approval(approval_id)
    if record is None or record.status != "approved" or record.consumed_at is None or record.decided_by != "bob":
        problems.append(f"{rid}: approval index row {record}")
    if len(baton.store.list_approvals(status=None, run_id=rid)) != 1:
        problems.append(f"{rid}: more than one approval request in the index")
    return problems


def effect_problems(baton: Baton, spec: Spec, service: Service) -> list[str]:
    """The run completed once, and its refund happened once, with the service's answer."""
    rid = spec.run_id
    record = baton.get_run(rid)
    if record.status is not RunStatus.COMPLETED:
        return [f"{rid}: {record.status.value}: {record.outcome}"]
    finished = of_type(baton, rid, ev.RunCompleted)
    if len(finished) != 1:
        return [f"{rid}: {len(finished)} RunCompleted events"]
    receipt = finished[0].result["receipt"]
    problems = []
    if spec.via == "issue":
        effect = service.effects.get(spec.key)
        if effect is None:
            return [f"{rid}: refund {spec.key} missing at the service"]
        if effect[:2] != (spec.order_id, spec.amount) or receipt != effect[2]:
            problems.append(f"{rid}: service holds {effect}, the run got {receipt}")
        if service.ledger_rows(spec.key):
            problems.append(f"{rid}: ledger rows for an idempotent refund")
    else:
        rows = service.ledger_rows(spec.key)
        if len(rows) != 1:
            return [f"{rid}: {len(rows)} ledger rows for {spec.key}: {rows}"]
        entry, tool, _, order, amount = rows[0]
        if (tool, order, amount) != (f"{spec.via}_refund", spec.order_id, spec.amount):
            problems.append(f"{rid}: ledger row {rows[0]}")
        if receipt != {"entry": entry, "amount": spec.amount}:
            problems.append(f"{rid}: the run got {receipt}, the ledger entry is {entry}")
        if spec.key in service.effects:
            problems.append(f"{rid}: an idempotent refund for a ledger refund")
    return problems


def assert_no_strays(specs: list[Spec], service: Service) -> None:
    """The service holds refunds for these runs' gated steps only, never two for one, and
    every call of a refund tool (first or repeated) used the key of a gated step."""
    keys = {s.key for s in specs}
    called = {key for (tool, key) in service.invocations if tool.endswith("_refund")}
    assert called <= keys, called - keys
    assert set(service.effects) <= keys, set(service.effects) - keys
    ledger = Counter(row[2] for row in service.ledger)
    assert set(ledger) <= keys, set(ledger) - keys
    assert all(n == 1 for n in ledger.values()), ledger
    assert not set(ledger) & set(service.effects)


def drive_to_approval(app: App, specs: list[Spec]) -> None:
    """Run each up to its approval request, in this process: the crashes come later."""
    for spec in specs:
        record = app.baton.drive(spec.run_id)
        assert (record.status, record.waiting_for) == (RunStatus.WAITING, "approval"), record
        assert the_approval(app.baton, spec.run_id).status == "pending"
    pending = {a.run_id for a in app.baton.approvals("bob")}
    assert pending >= {s.run_id for s in specs}


def approve(app: App, spec: Spec) -> ApprovalRecord:
    approval = the_approval(app.baton, spec.run_id)
    decided = app.baton.decide(approval.approval_id, principal="bob", approve=True, reason="refund checked")
    assert decided.status == "approved" and decided.consumed_at is None, decided
    return decided


# -- a worker killed inside the approved step ------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["issue", "transfer", "wire"])
@pytest.mark.parametrize("crash", ["pickup", "before", "after"],
                         ids=["after-the-pickup", "before-the-call", "after-the-effect"])
def test_worker_killed_inside_the_approved_step(app: App, via: str, crash: str) -> None:
    """The worker that picks the approved run up dies: ``pickup``, in the workflow before the
    refund step (the approval is granted, not yet consumed); ``before``, in the refund tool
    before it does anything (the consumption and the step's start are durable, the refund
    did not happen); ``after``, in the tool after the refund, before it returns."""
    spec = start(app, "o-1", via, crash)
    baton = app.baton
    drive_to_approval(app, [spec])
    assert Service.read(app.service_db).calls(spec) == 0
    approve(app, spec)

    assert app.work() == -signal.SIGKILL
    service = Service.read(app.service_db)
    events = baton.events(spec.run_id)
    consumed = [e for e in events if isinstance(e, ev.ApprovalConsumed)]
    started = [(e.step_id, e.attempt) for e in events if isinstance(e, ev.StepStarted)]
    done = [e for e in events if isinstance(e, ev.StepRan | ev.StepCompleted) and e.step_id == GATED]
    effects = len(service.ledger_rows(spec.key)) + (spec.key in service.effects)
    if crash == "pickup":
        assert service.self_kills == {f"{spec.run_id}:pickup": ("refund", "pickup")}
        assert (len(consumed), started, done, effects) == (0, [], [], 0)
        assert the_approval(baton, spec.run_id).consumed_at is None
    else:
        assert service.self_kills == {spec.key: (f"{via}_refund", crash)}
        assert (len(consumed), started, done) == (1, [(GATED, 1)], [])
        assert effects == (0 if crash == "before" else 1)
        assert the_approval(baton, spec.run_id).consumed_at is not None

    # A fresh worker takes the run over.
    assert app.work() == 0, app.logs()[-3000:]
    service = Service.read(app.service_db)
    events = baton.events(spec.run_id)
    assert sum(isinstance(e, ev.RunRecovered) for e in events) == 1
    if crash == "pickup":
        # The approval was still unused: the new worker uses it, once, and calls the tool once.
        assert service.calls(spec) == 1
        assert not [e for e in events if isinstance(e, ev.StepReconciled | ev.NeedsAttention)]
    elif via == "wire":
        # Not idempotent and nothing to ask: a person decides, the call is not made again.
        record = baton.get_run(spec.run_id)
        assert record.status is RunStatus.NEEDS_ATTENTION, (record.status, record.outcome)
        assert service.calls(spec) == 1, "the in-doubt refund was made again"
        assert len(service.ledger_rows(spec.key)) == effects
        attention = of_type(baton, spec.run_id, ev.NeedsAttention)
        assert len(attention) == 1 and attention[0].step_id == GATED and spec.key in attention[0].reason
        head = record.head_seq
        assert app.work() == 0
        assert baton.get_run(spec.run_id).head_seq == head, "a worker touched a run that needs attention"
        assert Service.read(app.service_db).calls(spec) == 1

        # The operator checks the ledger and settles the step; the run then finishes, and
        # the approval is neither asked for again nor used again.
        rows = service.ledger_rows(spec.key)
        result = {"entry": rows[0][0], "amount": spec.amount} if rows else None
        baton.resolve_step(spec.run_id, GATED, applied=bool(rows), result=result, by="carol",
                           note="checked the ledger")
        assert app.work() == 0, app.logs()[-3000:]
        service = Service.read(app.service_db)
        assert service.calls(spec) == (2 if crash == "before" else 1)
    elif via == "issue":
        # Idempotent: retried under the same key; the service applied it once.
        assert service.calls(spec) == 2
        assert service.effects[spec.key][3] == (1 if crash == "after" else 0)
        ran = [e for e in events if isinstance(e, ev.StepRan) and e.step_id == GATED]
        assert [(e.attempt, e.idempotency_key) for e in ran] == [(2, spec.key)]
    else:
        # Not idempotent, with a reconcile hook: asked, and re-run only if it did not happen.
        reconciled = [e for e in events if isinstance(e, ev.StepReconciled)]
        assert [(e.step_id, e.applied) for e in reconciled] == [(GATED, crash == "after")]
        assert service.calls(spec) == (2 if crash == "before" else 1)

    problems = approval_problems(baton, spec) + effect_problems(baton, spec, service)
    assert not problems, "\n".join(problems)
    assert_no_strays([spec], service)
    assert not baton.approvals(), "a request is pending again"
    assert "execution error" not in app.logs(), app.logs()[-3000:]


# -- a worker killed while the run waits ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_killed_while_the_runs_wait_for_approval(app: App) -> None:
    """One run per refund tool; the worker that brought them to their requests is killed
    while they wait (which must change nothing), then they are approved and a new worker
    finishes them."""
    specs = [start(app, f"o-{via}", via) for via in ("issue", "transfer", "wire")]
    baton = app.baton
    serving = app.spawn(SERVING_WORKER_CODE)  # a worker that stays up when there is nothing to do
    wait_until(lambda: all(app.status(s.run_id) is RunStatus.WAITING for s in specs), "the runs wait")
    serving.send_signal(signal.SIGKILL)
    assert serving.wait(timeout=30) == -signal.SIGKILL

    # Nothing was lost or done: the requests are pending, no refund made.
    service = Service.read(app.service_db)
    for spec in specs:
        record = baton.get_run(spec.run_id)
        assert (record.status, record.waiting_for) == (RunStatus.WAITING, "approval"), record
        assert the_approval(baton, spec.run_id).status == "pending"
        assert service.calls(spec) == 0
    for spec in specs:
        approve(app, spec)

    assert app.work() == 0, app.logs()[-3000:]
    service = Service.read(app.service_db)
    problems = [p for s in specs for p in approval_problems(baton, s) + effect_problems(baton, s, service)]
    assert not problems, "\n".join(problems)
    for spec in specs:
        assert service.calls(spec) == 1
        assert sum(isinstance(e, ev.RunRecovered) for e in baton.events(spec.run_id)) <= 1
    assert_no_strays(specs, service)


# -- the approving process killed -------------------------------------------------------------------


@dataclass
class Trial:
    spec: Spec
    die_after: str          # "read", "append", or "random" (killed from here after a delay)
    delay: float = 0.0
    pid: int = 0
    code: int | None = None
    finished: bool = False  # printed "decided" before it died (or was not killed at all)


def spawn_decider(app: App, trial: Trial, approval_id: str) -> subprocess.Popen[str]:
    """An approver, started and ready, that decides when told to go."""
    proc = app.spawn(DECIDER_CODE, approval_id, trial.die_after, log="decider.log",
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    trial.pid = proc.pid
    return proc


def decide_and_kill(app: App, trial: Trial, proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == "ready\n", app.logs()[-3000:]
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if trial.die_after == "random":
        time.sleep(trial.delay)
        proc.send_signal(signal.SIGKILL)
    trial.code = proc.wait(timeout=30)
    trial.finished = read_all(proc.stdout) == "decided\n"
    proc.stdin.close()


def read_all(stream: IO[str]) -> str:
    try:
        return stream.read()
    finally:
        stream.close()


@pytest.mark.timeout(90)
def test_approver_killed_while_deciding(app: App) -> None:
    """Each request's approver is SIGKILLed: right after it read the run's journal, right
    after it wrote the decision, and at random moments. The request is then pending or
    approved, never lost or decided twice; an approver never holds the run's lease, so its
    death leaves nothing to take over; each run completes once."""
    seed = crash_seed("approval crash")
    rng = random.Random(seed)
    baton = app.baton
    ways = ["issue", "transfer", "wire"]
    trials = [Trial(start(app, f"o-{i}", ways[i % 3]), die_after) for i, die_after in
              enumerate(["read", "append", *["random"] * 6])]
    for trial in trials:
        trial.delay = rng.uniform(0.0, 0.006) if trial.die_after == "random" else 0.0
    drive_to_approval(app, [t.spec for t in trials])
    # Started together (starting is the slow part); each decides only when told to.
    deciders = [spawn_decider(app, t, the_approval(baton, t.spec.run_id).approval_id) for t in trials]

    outcomes = []
    for trial, decider in zip(trials, deciders, strict=True):
        spec = trial.spec
        approval = the_approval(baton, spec.run_id)
        decide_and_kill(app, trial, decider)
        after = the_approval(baton, spec.run_id)
        record = baton.get_run(spec.run_id)
        granted = of_type(baton, spec.run_id, ev.ApprovalGranted)
        dead_owner = record.owner is not None and f":{trial.pid}:" in record.owner
        outcomes.append(f"{trial.die_after}{f' {trial.delay * 1000:.1f}ms' if trial.delay else ''}: "
                        f"exit {trial.code}, {after.status}, lease left held: {dead_owner}")
        assert after.status in ("pending", "approved"), after
        assert len(granted) == (after.status == "approved"), (after, granted)
        assert not of_type(baton, spec.run_id, ev.ApprovalConsumed)
        assert verify_chain(baton.journal(spec.run_id)) is None
        assert not dead_owner, outcomes[-1]
        if trial.die_after == "read":
            assert trial.code == -signal.SIGKILL and after.status == "pending", outcomes[-1]
        if trial.die_after == "append":
            assert trial.code == -signal.SIGKILL and after.status == "approved", outcomes[-1]
            assert record.status is RunStatus.RUNNING
        if trial.finished or trial.code == 0:
            assert after.status == "approved" and not dead_owner, outcomes[-1]
        if after.status == "pending":
            approve(app, spec)  # decided again, here; the dead approver's lease is no obstacle
        else:
            with pytest.raises(ApprovalError, match="already approved"):
                baton.decide(approval.approval_id, principal="bob", approve=True, reason="again")
        assert len(of_type(baton, spec.run_id, ev.ApprovalGranted)) == 1
    print("approvers killed:\n  " + "\n  ".join(outcomes))

    assert app.work() == 0, app.logs()[-3000:]
    service = Service.read(app.service_db)
    problems = [p for t in trials for p in approval_problems(baton, t.spec) + effect_problems(baton, t.spec, service)]
    assert not problems, "\n".join(problems)
    for trial in trials:
        assert service.calls(trial.spec) == 1, trial.spec
    assert_no_strays([t.spec for t in trials], service)
    assert not baton.approvals()
    assert "execution error" not in app.logs(), app.logs()[-3000:]


# -- a batch of approved runs, workers killed at random ----------------------------------------------

RUNS = 5
SLOTS = 2
MAX_KILL_DELAY = 0.120  # after the worker's first progress, kill within this many seconds
CHAOS_BUDGET = 25.0


@pytest.mark.timeout(120)
def test_batch_of_approved_runs_survives_random_worker_kills(tmp_path: Path) -> None:
    seed = crash_seed("approval crash")
    rng = random.Random(seed)
    app = make_app(tmp_path, max_recoveries=50)
    baton = app.baton
    chaos = WorkerChaos(seed, tmp_path / "baton.db", app.env, tmp_path, MAX_KILL_DELAY)
    # Three runs kill their worker inside the approved refund once, at a chosen point.
    forced = {0: ("issue", "after"), 1: ("transfer", "after"), 2: ("transfer", "before")}
    try:
        specs = []
        for i in range(RUNS):
            via, crash = forced.get(i, (rng.choice(["issue", "transfer"]), ""))
            specs.append(start(app, f"o-{i}", via, crash, amount=100.0 + rng.randint(1, 900) + 0.25))
        t0 = time.monotonic()
        chaos.start(SLOTS)

        def all_waiting() -> bool:
            return len(baton.approvals("bob")) == RUNS or bool(chaos.errors)

        wait_until(all_waiting, "every run waits for approval", timeout=CHAOS_BUDGET)
        for spec in specs:  # the batch
            approve(app, spec)

        def all_settled() -> bool:
            return all(app.status(s.run_id) not in UNFINISHED for s in specs) or bool(chaos.errors)

        wait_until(all_settled, "every approved run is finished", timeout=CHAOS_BUDGET)
        chaos.halt(timeout=60)
        assert not chaos.errors, chaos.errors
        last = app.work()
        seconds = time.monotonic() - t0

        service = Service.read(app.service_db)
        events = {s.run_id: baton.events(s.run_id) for s in specs}
        recovered = sum(isinstance(e, ev.RunRecovered) for evs in events.values() for e in evs)
        reconciled = sum(isinstance(e, ev.StepReconciled) for evs in events.values() for e in evs)
        holding = sum(held for _, held in chaos.kills)
        statuses = Counter(app.status(s.run_id).value for s in specs)
        context = f"(seed {seed}; rerun with {SEED_ENV}={seed})"
        print(f"seed {seed}: {RUNS} runs ended {dict(statuses)}; {chaos.started + 1} workers started, "
              f"{len(chaos.kills)} SIGKILLed ({holding} holding a run), {len(service.self_kills)} self-kills; "
              f"{recovered} takeovers, {reconciled} reconciled steps; {seconds:.1f}s")

        assert last == 0, app.logs()[-3000:]
        problems = [p for s in specs for p in approval_problems(baton, s) + effect_problems(baton, s, service)]
        assert not problems, "\n".join([f"{len(problems)} problems {context}", *problems])
        assert_no_strays(specs, service)
        assert {k for k in service.self_kills} == {specs[i].key for i in forced}, context
        assert recovered >= len(forced), context
        assert not baton.approvals()
        assert "execution error" not in app.logs(), app.logs()[-3000:]
    finally:
        chaos.halt(timeout=30)
        baton.close()


# -- crash loops around a request ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_approvers_dying_mid_decision_do_not_count_as_crashes(tmp_path: Path) -> None:
    """Approvers never take the run's lease, so however many die while deciding, no worker
    takes the run over and the crash-loop limit is untouched."""
    limit = 1
    app = make_app(tmp_path, max_recoveries=limit)
    try:
        spec = start(app, "o-1", "issue")
        baton = app.baton
        drive_to_approval(app, [spec])
        approval_id = the_approval(baton, spec.run_id).approval_id
        for _ in range(limit + 2):
            trial = Trial(spec, "read")
            decide_and_kill(app, trial, spawn_decider(app, trial, approval_id))
            assert trial.code == -signal.SIGKILL
            assert app.work() == 0, app.logs()[-3000:]
            record = baton.get_run(spec.run_id)
            assert (record.status, record.outcome, record.owner) == (RunStatus.WAITING, None, None)
            assert the_approval(baton, spec.run_id).status == "pending"
        assert not of_type(baton, spec.run_id, ev.RunRecovered)

        approve(app, spec)
        assert app.work() == 0, app.logs()[-3000:]
        service = Service.read(app.service_db)
        problems = approval_problems(baton, spec) + effect_problems(baton, spec, service)
        assert not problems, "\n".join(problems)
    finally:
        app.baton.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("crash", "kills"), [("pickup-twice", 2), ("pickup-thrice", 3)])
def test_a_crash_loop_after_approval_withdraws_the_unused_approval(tmp_path: Path, crash: str, kills: int) -> None:
    """The approved run's code kills its worker on every pass (a bad deploy, say) until the
    crash-loop limit fails the run: with its compensations (two kills) or, when even that
    keeps dying, without them (three). Either way the unused approval is withdrawn with the
    run, cannot be decided again, and no refund is made."""
    app = make_app(tmp_path, max_recoveries=1)
    try:
        spec = start(app, "o-1", "issue", crash)
        baton = app.baton
        drive_to_approval(app, [spec])
        approval_id = the_approval(baton, spec.run_id).approval_id
        approve(app, spec)
        codes = []
        while app.status(spec.run_id) in UNFINISHED and len(codes) < 8:
            codes.append(app.work())
        record = baton.get_run(spec.run_id)
        assert record.status is RunStatus.FAILED and "crash loop" in (record.outcome or ""), (record, codes)
        assert codes == [-signal.SIGKILL] * kills + [0], codes

        request = the_approval(baton, spec.run_id)
        assert request.status == "withdrawn" and request.consumed_at is None, request
        assert not baton.approvals("bob")
        with pytest.raises(ApprovalError):
            baton.decide(approval_id, principal="bob", approve=True, reason="refund checked")
        assert app.work() == 0
        assert app.status(spec.run_id) is RunStatus.FAILED
        assert Service.read(app.service_db).calls(spec) == 0
    finally:
        app.baton.close()
