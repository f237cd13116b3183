"""The runtime on PostgreSQL: the same workflows, with workers in other processes. The store
contract is in ``store/test_contract.py`` (run on both databases); this is what a user sees:
upgrading a database, runs with approvals and sealed values, timers set by one worker and
fired by another, workers woken by notifications rather than polls, concurrency in one
process, and a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, Context, RunStatus, Settings, UsageError, tool, workflow
from baton.audit import verify
from baton.store import migrations, open_store
from baton.store.postgres import PostgresStore
from baton.testing import FakeClock
from pg_support import create_database, drop_database, schema_url


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = create_database()
    yield name
    drop_database(name)


@pytest.fixture
def url(database: str) -> str:
    """A fresh, upgraded Baton database (a schema of its own in the module's database)."""
    address = schema_url(database, f"t_{secrets.token_hex(6)}")
    PostgresStore(address).close()  # upgrades it, as `baton db upgrade` does
    return address


def settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": url, "heartbeat_seconds": 60.0, "lease_seconds": 600.0,
                              "short_sleep": 0.0}
    values.update(overrides)
    return Settings(**values)


def cli(url: str, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "baton", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "BATON_DATABASE_URL": url}, timeout=120)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


# -- schema --------------------------------------------------------------------------------


def test_a_database_is_refused_until_upgraded(database: str, tmp_path: Path) -> None:
    fresh = schema_url(database, f"t_{secrets.token_hex(6)}")
    with pytest.raises(UsageError, match="run `baton db upgrade`"):
        open_store(fresh)
    status = cli(fresh, tmp_path, "db", "status")
    assert "schema version 0, pending: 0001_initial" in " ".join(status.stdout.split())
    upgraded = cli(fresh, tmp_path, "db", "upgrade")
    assert f"schema version {len(migrations.load('postgres'))}" in upgraded.stdout
    assert "up to date" in cli(fresh, tmp_path, "db", "status").stdout
    open_store(fresh).close()


# -- runs ----------------------------------------------------------------------------------

refunded: list[tuple[str, float]] = []


@tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount)
def issue_refund(order_id: str, amount: float, email: str) -> str:
    refunded.append((order_id, amount))
    return f"txn-{order_id}"


@workflow
def refund(ctx: Context, order_id: str, amount: float, email: str) -> dict[str, Any]:
    with ctx.evidence({"customer": email}):
        txn = ctx.call(issue_refund, order_id=order_id, amount=amount, email=email)
    return {"txn": txn, "to": email}


POLICY = """
permit(principal, action, resource);

@id("big-refunds")
@approval("role:manager")
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("100.0")) };
"""


def test_a_governed_run_with_sensitive_data_on_postgres(url: str, tmp_path: Path) -> None:
    from baton.config import Governance

    (tmp_path / "p.cedar").write_text(POLICY)
    governance = Governance.from_dict({
        "principals": {"alice": {"tenant": "acme", "roles": ["support"]},
                       "bob": {"tenant": "acme", "roles": ["manager"]}},
        "policies": {"files": ["p.cedar"]},
    }, base=tmp_path, source="baton.toml")
    refunded.clear()
    with Baton(settings(url), governance=governance, clock=FakeClock()) as baton:
        run_id = baton.start(refund, {"order_id": "7", "amount": 150.0, "email": "pat@example.com"},
                             principal="alice")
        assert baton.drive(run_id).status is RunStatus.WAITING
        (request,) = baton.approvals("bob")
        assert request.to_json()["evidence"] == {"customer": "\u2039email\u203a"}
        baton.decide(request.approval_id, principal="bob", approve=True, reason="checked")
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        assert baton.result(run_id) == {"txn": "txn-7", "to": "pat@example.com"}
        assert refunded == [("7", 150.0)]
        assert verify(baton.store).ok
        with baton.store._tx() as conn:
            rows = conn.execute("SELECT data FROM events").fetchall()
        assert rows and not any("pat@example.com" in data for (data,) in rows)


@pytest.fixture
def app() -> str:
    """Where the workflows the worker processes load are (slow steps, a timer, a signal)."""
    return str(Path(__file__).parent / "crashapp" / "worker_workflows.py")


def test_a_timer_set_by_one_worker_fires_on_another(url: str, app: str, tmp_path: Path) -> None:
    with Baton(settings(url)) as baton:
        run_id = baton.start(f"{app}:nap", {"seconds": 1.0})
        record = baton.drive(run_id)
        assert record.status is RunStatus.SLEEPING and record.owner is None
    time.sleep(1.1)
    cli(url, tmp_path, "worker", "--until-idle", "--quiet")  # another process, after the timer is due
    with Baton(settings(url)) as baton:
        assert baton.get_run(run_id).status is RunStatus.COMPLETED
        assert baton.result(run_id) == "rested"


def _worker_thread(baton: Baton, **kwargs: Any) -> tuple[threading.Thread, Any]:
    worker = baton.worker(**kwargs)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread, worker


def wait_until(condition: Any, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_an_idle_worker_is_woken_by_the_database_not_by_its_poll(url: str, app: str) -> None:
    """The worker polls every 5 s here; a new run and a signal each reach it far sooner."""
    with Baton(settings(url, poll_seconds=5.0)) as baton:
        thread, worker = _worker_thread(baton)
        try:
            time.sleep(0.5)  # idle, waiting
            run_id = baton.start(f"{app}:ask", {})
            started = wait_until(lambda: baton.get_run(run_id).status is RunStatus.WAITING, 3.0)
            time.sleep(0.3)
            baton.signal(run_id, "answer", {"ok": True})
            answered = wait_until(lambda: baton.get_run(run_id).status is RunStatus.COMPLETED, 3.0)
        finally:
            worker.stop()
            thread.join(timeout=10)
    print(f"new run taken in {started * 1000:.0f} ms, signal acted on in {answered * 1000:.0f} ms (poll: 5 s)")
    assert started < 2.0 and answered < 2.0
    with Baton(settings(url)) as baton:
        assert baton.result(run_id) == {"ok": True}


def test_one_worker_process_runs_several_runs_at_once(url: str, app: str, tmp_path: Path) -> None:
    with Baton(settings(url)) as baton:
        run_ids = [baton.start(f"{app}:steps", {"n": 2}) for _ in range(4)]
    start = time.monotonic()
    cli(url, tmp_path, "worker", "--until-idle", "--quiet", "--concurrency", "4")
    elapsed = time.monotonic() - start
    with Baton(settings(url)) as baton:
        assert [baton.result(r) for r in run_ids] == [1, 1, 1, 1]
    # Eight half-second steps; four at a time take about 1 s (one at a time: 4 s).
    assert elapsed < 3.5, elapsed


def test_sigterm_hands_the_runs_in_hand_back(url: str, app: str, tmp_path: Path) -> None:
    with Baton(settings(url)) as baton:
        run_ids = [baton.start(f"{app}:steps", {"n": 8}) for _ in range(2)]
    worker = subprocess.Popen([sys.executable, "-m", "baton", "worker", "--quiet", "--concurrency", "2"],
                              cwd=tmp_path, env={**os.environ, "BATON_DATABASE_URL": url},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    with Baton(settings(url)) as baton:
        for run_id in run_ids:
            record = baton.get_run(run_id)
            assert record.owner is None and record.status is RunStatus.RUNNING, record
    cli(url, tmp_path, "worker", "--until-idle", "--quiet", "--concurrency", "2")
    with Baton(settings(url)) as baton:
        for run_id in run_ids:
            shown = json.loads(cli(url, tmp_path, "runs", "show", run_id, "--json").stdout)
            assert shown["status"] == "completed" and shown["outcome"] == 28
            assert sum(e["type"] == "StepRan" for e in shown["journal"]) == 8  # none twice
            assert not [e for e in shown["journal"] if e["type"] == "RunRecovered"]
        assert verify(baton.store).ok


def test_erasure_says_when_an_open_transaction_may_keep_the_old_key(url: str, app: str) -> None:
    import psycopg

    from baton.errors import StoreError

    with Baton(settings(url)) as baton:
        run_id = baton.start(f"{app}:nap", {"seconds": 0.0})
        baton.drive(run_id, wait_for_timers=True)
        reader = psycopg.connect(url, autocommit=False)
        try:
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            reader.execute("SELECT count(*) FROM runs").fetchone()  # a snapshot, held open
            with pytest.raises(StoreError, match="run `baton runs forget` again"):
                baton.forget(run_id)
        finally:
            reader.close()
        again = baton.forget(run_id)
        assert not again.now  # erased the first time; this time nothing else was open


def test_a_worker_without_the_master_key_is_refused(url: str, app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("BATON_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with Baton(settings(url)) as baton:
        baton.start(f"{app}:nap", {"seconds": 0.0})
    monkeypatch.delenv("BATON_MASTER_KEY")
    with Baton(settings(url)) as baton, pytest.raises(UsageError, match="set BATON_MASTER_KEY"):
        baton.start(f"{app}:nap", {"seconds": 0.0})


def test_a_database_newer_than_this_baton_is_refused(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)")
    with pytest.raises(UsageError, match="newer than this Baton knows"):
        open_store(url)
