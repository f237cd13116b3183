"""The command line, driven as a person would: real processes, a real database file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "order_followup.py"


def baton(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "baton", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"baton {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def only_run_id(tmp_path: Path) -> str:
    runs = json.loads(baton(tmp_path, "runs", "list", "--json").stdout)
    assert len(runs) == 1
    return str(runs[0]["run_id"])


def test_demo_tells_the_story(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "baton", "demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Killing worker 2" in out and "SIGKILL" in out
    assert "held for approval by refunds-over-100-need-a-manager" in out
    assert "[auto] Bob (manager) approves" in out
    assert 'evidence: {"agent": "refund_agent"' in out and '"customer": "Dana Smith"' in out
    assert "plan: 1. Check the order and its payment." in out
    assert "model, turn 2: proposes issue_refund" in out
    assert "never twice for the same turn" in out
    assert "granted by bob" in out
    assert "bob approved at" in out and "the approval was used exactly once" in out
    assert "taken over" in out
    assert "order 98765 was refunded exactly once" in out
    assert "failed once (SMTP 421) and the retry delivered it" in out
    assert "audit chain verified" in out and "verified with the public key alone" in out
    assert "✗" not in out.split("Proof")[1]
    services = sqlite3.connect(tmp_path / ".baton" / "demo" / "services.db")
    assert services.execute("SELECT COUNT(*) FROM refunds").fetchone()[0] == 1


def test_interactive_demo_waits_for_a_real_approval(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "400"}
    env.pop("BATON_CONFIG", None)
    demo = subprocess.Popen([sys.executable, "-m", "baton", "demo", "--interactive"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:
            lines.append(line)
            if "Waiting for the decision" in line:
                break
        command = next(line for line in lines if " approve " in line and "--as bob" in line).split()
        settings = dict(word.split("=", 1) for word in command if word.startswith("BATON_"))
        approval_id = command[command.index("approve") + 1]
        refused = subprocess.run([sys.executable, "-m", "baton", "approve", approval_id, "--as", "alice",
                                  "--reason", "mine"], cwd=tmp_path, capture_output=True, text=True,
                                 env={**env, **settings}, timeout=30)
        assert refused.returncode == 1
        assert "alice asked for approval" in refused.stderr and "Traceback" not in refused.stderr
        approved = subprocess.run([sys.executable, "-m", "baton", "approve", approval_id, "--as", "bob",
                                   "--reason", "checked the order"], cwd=tmp_path, capture_output=True,
                                  text=True, env={**env, **settings}, timeout=30)
        assert approved.returncode == 0, approved.stderr
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, "".join(lines) + rest
    assert 'bob approved at' in rest and '"checked the order"' in rest
    assert "order 98765 was refunded exactly once" in rest
    assert "✗" not in rest.split("Proof")[1]


def test_example_runs_end_to_end(tmp_path: Path) -> None:
    started = baton(tmp_path, "run", f"{EXAMPLE}:follow_up", "--input", '{"order_id": "98765"}')
    assert "waiting for signal 'customer_reply'" in started.stdout
    run_id = only_run_id(tmp_path)
    baton(tmp_path, "signal", run_id[:12], "customer_reply", "--data", '{"satisfied": true}')
    baton(tmp_path, "worker", "--until-idle", "--quiet")
    shown = json.loads(baton(tmp_path, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "completed"
    assert shown["outcome"]["reply"] == {"satisfied": True}
    types = [e["type"] for e in shown["journal"]]
    assert types[0] == "RunStarted" and types[-1] == "RunCompleted"
    assert "SignalReceived" in types and "TimerFired" in types
    assert "audit chain intact" in baton(tmp_path, "audit", "verify").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope.py:wf"], "nope.py does not exist"),
        (["run", f"{EXAMPLE}:missing"], "has no workflow named 'missing'"),
        (["run", f"{EXAMPLE}:follow_up", "--input", "{bad"], "--input is not valid JSON"),
        (["run", f"{EXAMPLE}:follow_up", "--input", '{"order": 1}'], "order_id: Field required"),
        (["run", f"{EXAMPLE}:follow_up", "--input", "[1]"], "--input must be a JSON object"),
        (["runs", "show", "doesnotexist"], "no run 'doesnotexist'"),
        (["signal", "doesnotexist", "x"], "no run 'doesnotexist'"),
        (["cancel", "doesnotexist"], "no run 'doesnotexist'"),
        (["run", f"{EXAMPLE}:follow_up", "--input", '{"order_id": NaN}'], "NaN is not JSON"),
        (["runs", "list", "--db", "sqlite:///elsewhere/none.db"], "no Baton database at elsewhere/none.db"),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    baton(tmp_path, "db", "upgrade")  # an empty database, so that "no run" is the mistake
    proc = baton(tmp_path, *args, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and message in lines[0], proc.stderr


def test_audit_verify_names_the_tampered_event(tmp_path: Path) -> None:
    baton(tmp_path, "run", f"{EXAMPLE}:follow_up", "--input", '{"order_id": "98765", "wait_seconds": 0}')
    run_id = only_run_id(tmp_path)
    db = sqlite3.connect(tmp_path / "baton.db")
    with db:
        changed = db.execute(
            "UPDATE events SET data = replace(data, '98765', '98766') WHERE run_id = ? AND seq = 2",
            (run_id,)).rowcount
    assert changed == 1
    proc = baton(tmp_path, "audit", "verify", check=False)
    assert proc.returncode == 1
    assert f"run {run_id}, event 2" in proc.stderr


CRASHING = textwrap.dedent('''
    import os, signal
    from pathlib import Path
    from baton import Context, tool, workflow

    LEDGER = Path(__file__).with_name("ledger.txt")

    @tool
    def charge_card(amount: float) -> dict:
        with LEDGER.open("a") as f:
            f.write(f"charged {amount}\\n")
        os.kill(os.getpid(), signal.SIGKILL)   # the process dies mid-call
        return {"ok": True}

    @workflow
    def pay(ctx: Context, amount: float) -> dict:
        return ctx.call(charge_card, amount=amount)
''')


def test_in_doubt_step_is_explained_and_resolved(tmp_path: Path) -> None:
    script = tmp_path / "pay.py"
    script.write_text(CRASHING)
    proc = baton(tmp_path, "run", f"{script}:pay", "--input", '{"amount": 42}', check=False)
    assert proc.returncode == -9
    run_id = only_run_id(tmp_path)
    worked = baton(tmp_path, "worker", "--until-idle", "--quiet")
    assert worked.returncode == 0
    shown = baton(tmp_path, "runs", "show", run_id)
    assert "needs_attention" in shown.stdout
    assert "step 1 (charge_card) was interrupted" in shown.stdout
    assert f"baton resolve {run_id} 1 --applied --result JSON" in shown.stdout
    assert (tmp_path / "ledger.txt").read_text() == "charged 42.0\n"   # never re-run on a guess
    resolved = baton(tmp_path, "resolve", run_id, "1", "--applied", "--result", '{"ok": true}',
                     "--by", "bob", "--note", "card statement shows the charge")
    assert "completed" in resolved.stdout
    shown_json = json.loads(baton(tmp_path, "runs", "show", run_id, "--json").stdout)
    assert shown_json["outcome"] == {"ok": True}
    assert (tmp_path / "ledger.txt").read_text() == "charged 42.0\n"


def test_embedded_example_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "embedded.py"), str(tmp_path / "e.db")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("completed ")
    assert "SignalReceived" in proc.stdout and "RunCompleted" in proc.stdout


def test_sigterm_stops_a_worker_between_steps_and_another_finishes(tmp_path: Path) -> None:
    script = ROOT / "tests" / "crashapp" / "worker_workflows.py"
    env = {**os.environ, "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db"}
    baton(tmp_path, "db", "upgrade")
    code = (f"from baton import Baton; b = Baton(); print(b.start({str(script) + ':steps'!r}, {{'n': 10}}))")
    run_id = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout.strip()
    worker = subprocess.Popen([sys.executable, "-m", "baton", "worker", "--quiet"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0  # it finished the step under way, then left
    shown = json.loads(baton(tmp_path, "runs", "show", run_id, "--json").stdout)
    assert shown["owner"] is None and shown["status"] == "running"  # stopped between steps
    done_before = sum(e["type"] == "StepRan" for e in shown["journal"])
    assert 0 < done_before < 10
    baton(tmp_path, "worker", "--until-idle", "--quiet")  # another worker carries on
    shown = json.loads(baton(tmp_path, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "completed" and shown["outcome"] == 45
    assert sum(e["type"] == "StepRan" for e in shown["journal"]) == 10  # none twice
    assert not [e for e in shown["journal"] if e["type"] == "RunRecovered"]  # a clean hand-over


GOVERNED = textwrap.dedent('''
    from baton import tool, workflow

    @tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount)
    def issue_refund(order_id: str, amount: float) -> str:
        return "txn-" + order_id

    @workflow
    def refund(ctx, order_id: str, amount: float) -> str:
        return ctx.call(issue_refund, order_id=order_id, amount=amount)
''')


def governed(tmp_path: Path, policy: str) -> None:
    (tmp_path / "wf.py").write_text(GOVERNED)
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "p.cedar").write_text(policy)
    (tmp_path / "baton.toml").write_text(textwrap.dedent('''
        [principals.alice]
        tenant = "acme"
        roles = ["support"]

        [policies]
        files = ["policies/p.cedar"]
    '''))


def test_policy_check_lists_policies_and_warns_of_approvers_nobody_is(tmp_path: Path) -> None:
    governed(tmp_path, 'permit(principal, action, resource);\n\n@id("big")\n@approval("role:manager")\n'
                       'forbid(principal, action, resource)\n'
                       'when { context.args.amount.greaterThan(decimal("9.0")) };\n')
    shown = baton(tmp_path, "policy", "check").stdout
    assert "big policies/p.cedar:3 needs approval by a manager" in shown
    assert "warning: big names role:manager, which no principal in baton.toml is" in shown
    (tmp_path / "policies" / "p.cedar").write_text("permit(principal, action, resource);\n\nforbid(principal,\n")
    broken = baton(tmp_path, "policy", "check", check=False)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith("error: policies/p.cedar:3: unexpected end of input")


def test_run_takes_its_principal_and_budget_from_the_command_line(tmp_path: Path) -> None:
    governed(tmp_path, "permit(principal, action, resource);\n")
    nobody = baton(tmp_path, "run", "wf.py:refund", "-i", '{"order_id": "1", "amount": 50}', check=False)
    assert nobody.returncode == 1 and "--as" in nobody.stderr and "alice" in nobody.stderr
    over = baton(tmp_path, "run", "wf.py:refund", "-i", '{"order_id": "1", "amount": 50}', "--as", "alice",
                 "--max-spend", "20", check=False)
    assert over.returncode == 1 and "over its limit of 20" in over.stdout
    ok = baton(tmp_path, "run", "wf.py:refund", "-i", '{"order_id": "2", "amount": 5}', "--as", "alice",
               "--max-spend", "20")
    assert "completed" in ok.stdout
