"""Workflows and a fake payment service for the PostgreSQL chaos tests
(``test_postgres_chaos.py``).

Worker processes load this file by path, so it must not depend on anything the test process
sets up in memory. The fake service keeps its state in its own SQLite file (``db``, passed in
every tool call), as ``crash_workflows.py`` does, and in addition records who made each call
and when, so that a test can tell which process touched a run at what moment:

``calls``        one row per raw call of a tool: tool, idempotency key, pid, wall-clock time;
``effects``      the idempotent ``charge``/``slow_charge``: one row per charge applied, keyed
                 by idempotency key; a repeated key returns the first result, applies nothing
                 and bumps ``replays``;
``ledger``       the non-idempotent ``record`` (reconcile hook: ``find_entry``) and ``wire``
                 (no reconcile hook): one row appended per call;
``self_kills``   the calls that killed their own worker process on purpose;
``deaths``       pid and time of each such self-kill.

Every tool's result (and every reconciled result) carries ``pid``: the process that returned
it to the engine, which is the process that journals the step. A journal whose step results
name a process other than the run's owner at that point was written by a stale worker.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from baton import Context, Reconciled, tool, workflow

# Workers load this file by path and put only its own folder on sys.path; the helpers it
# shares with the crash tests are one level up.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from crash_support import (
    PAYMENT_TABLES,
    SERVICE_TABLES,
    append_ledger,
    apply_charge,
    connect,
    create_tables,
    first_self_kill,
    network_pause,
)

WORKFLOWS_FILE = Path(__file__).resolve()

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    pid INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deaths (
    pid INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def init_service(db: str) -> None:
    create_tables(db, SERVICE_TABLES + PAYMENT_TABLES + SCHEMA)


def log_call(db: str, tool_name: str, key: str) -> None:
    with closing(connect(db)) as conn:
        conn.execute("INSERT INTO calls (tool, key, pid, at) VALUES (?, ?, ?, ?)",
                     (tool_name, key, os.getpid(), time.time()))


def _kill_once(conn: sqlite3.Connection, key: str, tool_name: str) -> bool:
    """Inside a transaction: ``True`` the first time for ``key`` (noting pid and time)."""
    if not first_self_kill(conn, key, tool_name, "after"):
        return False
    conn.execute("INSERT INTO deaths (pid, key, at) VALUES (?, ?, ?)", (os.getpid(), key, time.time()))
    return True


def _pause() -> None:
    network_pause(0.001, 0.008)


# -- the tools ------------------------------------------------------------------------------


@tool(idempotent=True)
def charge(db: str, run: str, step: int, amount: int, crash: bool = False, *,
           idempotency_key: str) -> dict[str, Any]:
    """Charge ``amount`` at a payment API that honours idempotency keys: a repeated key
    returns the first charge. With ``crash``, the first call for a key applies the charge
    and then kills its own process."""
    log_call(db, "charge", idempotency_key)
    _pause()
    result = apply_charge(db, run, step, amount, idempotency_key, _kill_once if crash else None)
    _pause()
    return {**result, "pid": os.getpid()}


@tool(idempotent=True)
def slow_charge(db: str, run: str, step: int, amount: int, seconds: float, *,
                idempotency_key: str) -> dict[str, Any]:
    """``charge`` that takes ``seconds`` on the way to the API: the call is made (and
    logged) at once, the charge is applied at the end."""
    log_call(db, "slow_charge", idempotency_key)
    time.sleep(seconds)
    result = apply_charge(db, run, step, amount, idempotency_key, None)
    return {**result, "pid": os.getpid()}


def find_entry(db: str, idempotency_key: str) -> Reconciled:
    """``record``'s reconcile hook: did the call with this key reach the ledger?"""
    with closing(connect(db)) as conn:
        row = conn.execute("SELECT entry, amount FROM ledger WHERE key = ?", (idempotency_key,)).fetchone()
    if row is None:
        return Reconciled(applied=False)
    return Reconciled(applied=True, result={"entry": row[0], "amount": row[1], "pid": os.getpid()})


@tool(reconcile=find_entry)
def record(db: str, run: str, step: int, amount: int, crash: bool = False, *,
           idempotency_key: str) -> dict[str, Any]:
    """Append to a ledger that knows nothing of idempotency keys (it only stores them, so
    that ``find_entry`` can answer). With ``crash``, the first call for a key appends and
    then kills its own process before returning."""
    log_call(db, "record", idempotency_key)
    _pause()
    entry = append_ledger(db, "record", run, step, amount, idempotency_key, _kill_once if crash else None)
    _pause()
    return {"entry": entry, "amount": amount, "pid": os.getpid()}


@tool
def wire(db: str, run: str, step: int, amount: int, crash: bool = False, *,
         idempotency_key: str) -> dict[str, Any]:
    """Like ``record``, but with no way to ask whether a call took effect: a call
    interrupted after its start is in doubt for good, and needs a person."""
    log_call(db, "wire", idempotency_key)
    _pause()
    entry = append_ledger(db, "wire", run, step, amount, idempotency_key, _kill_once if crash else None)
    _pause()
    return {"entry": entry, "amount": amount, "pid": os.getpid()}


TOOLS = {"charge": charge, "record": record, "wire": wire}


# -- the workflows --------------------------------------------------------------------------


@workflow
def payments(ctx: Context, db: str, plan: list[str], amounts: list[int],
             crash_steps: list[int] | None = None) -> dict[str, Any]:
    """Step ``i`` (1-based) calls ``plan[i-1]`` (``charge``, ``record`` or ``wire``) for
    ``amounts[i-1]``."""
    crash = set(crash_steps or [])
    receipts = []
    for step, (name, amount) in enumerate(zip(plan, amounts, strict=True), start=1):
        receipts.append(ctx.call(TOOLS[name], db=db, run=ctx.run_id, step=step, amount=amount,
                                 crash=step in crash))
    return {"receipts": receipts, "total": sum(r["amount"] for r in receipts)}


@workflow
def slow_payment(ctx: Context, db: str, seconds: float) -> dict[str, Any]:
    """A quick charge, a slow one, a quick one."""
    first = ctx.call(charge, db=db, run=ctx.run_id, step=1, amount=1)
    second = ctx.call(slow_charge, db=db, run=ctx.run_id, step=2, amount=20, seconds=seconds)
    third = ctx.call(charge, db=db, run=ctx.run_id, step=3, amount=300)
    return {"receipts": [first, second, third], "total": first["amount"] + second["amount"] + third["amount"]}


@workflow
def long_haul(ctx: Context, db: str, rounds: int, amounts: list[int], seconds: float,
              nap: float) -> dict[str, Any]:
    """``rounds`` rounds of: a slow idempotent charge (``seconds``), a non-idempotent ledger
    entry, a durable timer of ``nap`` seconds. Steps are numbered 3 per round; the timers
    take the third number of each round."""
    receipts = []
    for i in range(rounds):
        base = 3 * i
        receipts.append(ctx.call(slow_charge, db=db, run=ctx.run_id, step=base + 1, amount=amounts[2 * i],
                                 seconds=seconds))
        receipts.append(ctx.call(record, db=db, run=ctx.run_id, step=base + 2, amount=amounts[2 * i + 1]))
        ctx.sleep(nap)
    return {"receipts": receipts, "total": sum(r["amount"] for r in receipts)}
