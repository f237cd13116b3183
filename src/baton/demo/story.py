"""``baton demo``: the seed's refund story, offline, with a real SIGKILL in the middle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from ..approvals import ApprovalRecord
from ..audit import verify, write_checkpoint
from ..audit.keys import KEY_ENV, load_private, load_public
from ..audit.keys import generate as generate_key
from ..cli.render import Tail, status_text, timeline_table
from ..config import Governance
from ..journal import decode
from ..journal import events as ev
from ..runtime import Baton
from ..sensitive import mask_of
from ..settings import Settings
from .refund_agent import input_for
from .services import PAUSE_ENV, SERVICES_ENV, Services

WORKFLOW = "baton.demo.refund_agent:refund_agent"
DEMO_DIR = Path(".baton") / "demo"


class DemoFailed(Exception):
    pass


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "baton", "worker", "--until-idle", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait(proc: subprocess.Popen[bytes], tail: Tail, label: str, until: float,
          marker: Path | None = None) -> None:
    while time.monotonic() < until:
        tail.show(label)
        if marker is not None and marker.exists():
            return
        if proc.poll() is not None:
            tail.show(label)
            return
        time.sleep(0.02)
    proc.kill()
    raise DemoFailed(f"{label} did not finish in time")


def run_demo(console: Console, *, root: Path = DEMO_DIR, interactive: bool = False, model: str | None = None) -> int:
    try:
        return _story(console, root=root, interactive=interactive, model=model)
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1


def _governance_files(root: Path) -> Path:
    """Copy the demo's baton.toml and policy file next to its database, for people to read."""
    package = resources.files("baton.demo")
    (root / "policies").mkdir(exist_ok=True)
    for name in ("baton.toml", "policies/refunds.cedar"):
        (root / name).write_text(package.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    return root / "baton.toml"


def _approval(baton: Baton, run_id: str, console: Console, command: str, env_prefix: str, *,
              interactive: bool) -> ApprovalRecord:
    """Bob decides: automatically, or from another terminal with ``--interactive``."""
    pending = baton.store.list_approvals(run_id=run_id)
    if not pending:
        raise DemoFailed("the run is waiting but no approval request was found")
    request = pending[0]
    approve = (f"{env_prefix} {command} approve {request.approval_id} --as bob "
               f"--reason \"Customer is a long-standing account; refund confirmed\"")
    if not interactive:
        console.print(f"\n  [bold magenta]\\[auto][/] Bob (manager) approves, exactly as this command would "
                      f"(run [bold]baton demo --interactive[/] to type it yourself):\n  {approve}\n",
                      highlight=False)
        return baton.decide(request.approval_id, principal="bob", approve=True,
                            reason="Customer is a long-standing account; refund confirmed")
    console.print(f"\n  The run waits durably; no process holds it. In another terminal, as Bob:\n  {approve}\n"
                  f"  (or deny it with [bold]{command} deny {request.approval_id} --as bob --reason ...[/])\n"
                  "  Waiting for the decision…", highlight=False)
    while True:
        found = baton.store.get_approval(request.approval_id)
        if found is not None and found.status != "pending":
            return found
        time.sleep(0.2)


def _sealed_check(baton: Baton, run_id: str, db_path: Path, services: Services) -> tuple[bool, str]:
    """The customer's e-mail address went through three steps: the database files hold it only
    encrypted, while the run itself (the worker that took over after the kill) read it back
    and sent the receipt to it."""
    order = services.order("98765")
    email = str(order["email"]) if order else "?"
    on_disk = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*")
                       if not p.name.endswith(".master-key"))
    opened = json.dumps([e.to_json() for e in baton.events(run_id, reveal=True)])
    sent_to = {recipient for recipient, _ in services.emails()}
    ok = email.encode() not in on_disk and email in opened and sent_to == {email}
    return ok, (f"the customer's e-mail address is stored only encrypted with the run's own key (shown as "
                f"{mask_of('email')}; 0 readable copies in the database files), yet the worker that took over "
                f"sent the receipt to it; `baton runs forget {run_id}` would erase it and leave the record "
                "verifiable")


def _model_check(services: Services) -> tuple[bool, str]:
    """Each model call is a journaled step: a worker that takes over reads the turns already
    answered from the journal and never asks the model again."""
    calls = [(purpose, turn) for purpose, turn, _ in services.model_calls()]
    askers = len({pid for _, _, pid in services.model_calls()})
    turns = sum(purpose == "turn" for purpose, _ in calls)
    ok = len(calls) == len(set(calls)) and ("plan", 0) in calls and askers >= 2
    return ok, (f"the model was asked {len(calls)} times in all (a plan and {turns} turns, from {askers} workers), "
                "never twice for the same turn: the worker that took over read the turns already answered from "
                "the journal")


def _story(console: Console, *, root: Path, interactive: bool, model: str | None) -> int:
    started = time.monotonic()
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    db_path, services_path, marker = root / "baton.db", root / "services.db", root / "refund-paused"
    for path in root.iterdir():  # every demo starts from nothing
        if path.name.startswith(("baton.db", "services.db", "refund-paused", "baton-audit.")):
            path.unlink()
    services = Services(services_path)
    services.seed()
    config = _governance_files(root)
    url = f"sqlite:///{db_path}"
    baton = Baton(Settings(database_url=url), governance=Governance.load(config))
    private_key, public_key = generate_key(root)  # workers sign checkpoints; an auditor needs only the .pub
    env = {**os.environ, "BATON_DATABASE_URL": url, "BATON_CONFIG": str(config), KEY_ENV: str(private_key),
           SERVICES_ENV: str(services_path)}
    command = shutil.which("baton") or str(Path(sys.executable).parent / "baton")
    env_prefix = f"BATON_DATABASE_URL={url} BATON_CONFIG={config}"

    console.print(Rule("[bold]Baton demo: a refund that survives a crash"))
    thinker = f"the model [bold]{model}[/]" if model else "a scripted model (offline; --model bedrock:… for a real one)"
    console.print(
        "Alice (support) asks Baton's refund agent to refund [bold]$120[/] on order [bold]98765[/] "
        f"(ticket T-4321). The agent, driven by {thinker}, plans, then proposes each step: check the order and "
        "the payment, refund through a payment service that honours idempotency keys, e-mail the receipt "
        "(the mail server fails once) and note the ticket in the CRM. Baton validates every proposed call, "
        f"checks it against the Cedar policies in {config.parent / 'policies' / 'refunds.cedar'} (refunds over "
        "$100 need a manager), runs it, and journals it before the model sees the result.\n"
    )
    run_id = baton.start(WORKFLOW, input_for(model), principal="alice")
    console.print(f"run [bold]{run_id}[/] started for alice; worker 1 picks it up\n", highlight=False)
    tail = Tail(baton, run_id, console)

    holder = _worker(env)
    _wait(holder, tail, "worker 1", time.monotonic() + 30)
    if baton.get_run(run_id).waiting_for != "approval":
        raise DemoFailed("policy did not hold the refund for approval: "
                         + (holder.stderr.read().decode() if holder.stderr else ""))
    decision = _approval(baton, run_id, console, command, env_prefix, interactive=interactive)
    tail.show("bob     ")
    if decision.status != "approved":
        console.print(f"\n  The refund was {decision.status}; worker 2 lets the workflow see it.\n")
        _wait(_worker(env), tail, "worker 2", time.monotonic() + 30)
        baton.close()
        return 0

    console.print("\nWorker 2 continues the approved run:\n")
    first = _worker({**env, PAUSE_ENV: str(marker)})
    _wait(first, tail, "worker 2", time.monotonic() + 30, marker=marker)
    if not marker.exists():
        raise DemoFailed("worker 2 stopped before reaching the refund: "
                         + (first.stderr.read().decode() if first.stderr else ""))
    txn = marker.read_text()
    console.print(
        f"\n  [bold]The payment service has refunded $120 ({txn}), but Baton has not recorded it yet.[/]\n"
        f"  [bold red]Killing worker 2 (pid {first.pid}) with SIGKILL.[/]"
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    record = baton.get_run(run_id)
    console.print(f"  worker 2 is dead; the run is still {status_text(record.status.value)} "
                  f"with {record.head_seq} events in its journal.\n", highlight=False)

    console.print("Worker 3 starts, sees that the run's owner is gone, and takes over:\n")
    second = _worker(env)
    _wait(second, tail, "worker 3", time.monotonic() + 30)
    record = baton.get_run(run_id)
    if not record.status.terminal:
        raise DemoFailed(f"the run is {record.status.value} after worker 2 finished")

    console.print()
    console.print(Rule("[bold]Timeline"))
    rows = baton.journal(run_id)
    console.print(timeline_table([(r.seq, r.at, decode(r, baton.store.blob)) for r in rows]))

    console.print()
    console.print(Rule("[bold]Proof"))
    refunds = [r for r in services.refunds() if r[1] == "98765"]
    requests = services.refund_requests()
    attempts = services.email_attempts()
    notes = services.notes()
    events = [decode(r, baton.store.blob) for r in rows]
    held = [e for e in events if isinstance(e, ev.PolicyDecided) and e.effect == "approval"]
    granted = [e for e in events if isinstance(e, ev.ApprovalGranted)]
    consumed = [e for e in events if isinstance(e, ev.ApprovalConsumed)]
    approved_at = datetime.fromtimestamp(decision.decided_at or 0, UTC).strftime("%H:%M:%S UTC")
    checks = [
        (bool(held) and held[0].principal == "alice",
         f"alice requested it; policy {', '.join(held[0].policies) if held else '?'} held it for a manager"),
        (len(granted) == 1 and granted[0].by == "bob",
         f"bob approved at {approved_at}: \"{granted[0].reason if granted else ''}\""),
        (len(consumed) == 1, "the approval was used exactly once, in the same write as the refund's start"),
        (len(refunds) == 1,
         f"order 98765 was refunded exactly once: {', '.join(f'{t} ${a:.2f}' for t, _, a in refunds)}"),
        (len(requests) >= 2 and sum(r[1] for r in requests) == len(requests) - 1,
         f"the payment service got the refund {len(requests)} times with the same idempotency key "
         "and moved money once"),
        (len(attempts) == 2 and attempts[0][1] == 0 and attempts[1][1] == 1,
         "the receipt e-mail failed once (SMTP 421) and the retry delivered it"),
        (len(notes) == 1, f"ticket T-4321 got one CRM note: {notes[0][1] if notes else '-'}"),
        (record.status.value == "completed", f"the run {status_text(record.status.value)}"),
        _sealed_check(baton, run_id, db_path, services),
    ]
    if model is None:  # a real model's calls are not booked by the demo's services
        checks.insert(-1, _model_check(services))
    signing_key = load_private(str(private_key))
    assert signing_key is not None
    write_checkpoint(baton.store, signing_key, baton.clock.time(), force=True)
    report = verify(baton.store, public_key=load_public(str(public_key)))
    checks.append((report.ok, f"audit chain verified: {report.runs} run, {report.events} events, every hash "
                              f"recomputed; {report.checkpoints} signed checkpoints (the last one written just now) "
                              "verified with the public key alone" if report.ok else
                   f"audit chain broken: {report.problems[0]}"))
    for ok, text in checks:
        console.print(f"  {'[green]✓[/]' if ok else '[bold red]✗[/]'} {text}", highlight=False)
    elapsed = time.monotonic() - started
    console.print(f"\nDone in {elapsed:.1f}s. Explore it yourself:\n"
                  f"  {env_prefix} {command} runs show {run_id}\n"
                  f"  {env_prefix} {command} approvals list --status all\n"
                  f"  {env_prefix} {command} audit verify --public-key {public_key}", highlight=False)
    baton.close()
    return 0 if all(ok for ok, _ in checks) else 1
