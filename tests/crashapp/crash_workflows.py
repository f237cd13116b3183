"""Workflows and a fake payment service for the crash tests.

Worker processes load this file by path (``baton.start("/abs/path/crash_workflows.py:payments",
...)``), so it must not depend on anything the test process sets up in memory. The fake
service keeps its state in its own SQLite file (``db``, passed in every tool call):

``invocations``  one row per raw call of a tool, whatever happens next (shows retries);
``effects``      the idempotent ``charge``: one row per charge applied, keyed by idempotency
                 key; a repeated key returns the first result, applies nothing and bumps
                 ``replays``;
``ledger``       the non-idempotent ``record``/``transfer``: one row appended per call;
``self_kills``   the calls that killed their own worker process on purpose.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from baton import Context, Reconciled, tool, workflow

WORKFLOWS_FILE = Path(__file__).resolve()

SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    result TEXT NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger (
    entry INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    amount INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS self_kills (
    key TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""


def connect(db: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def init_service(db: str) -> None:
    conn = connect(db)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()


def _pause() -> None:
    """A few milliseconds of 'network': a window for a kill between intent and completion."""
    time.sleep(random.uniform(0.001, 0.008))


def _invoked(db: str, tool_name: str, key: str) -> None:
    conn = connect(db)
    try:
        conn.execute("INSERT INTO invocations (tool, key, pid) VALUES (?, ?, ?)",
                     (tool_name, key, os.getpid()))
    finally:
        conn.close()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _first_time(conn: sqlite3.Connection, key: str, tool_name: str) -> bool:
    """Inside a transaction: note that the call with ``key`` kills its process; ``False``
    if it already did so once."""
    done = conn.execute("SELECT 1 FROM self_kills WHERE key = ?", (key,)).fetchone()
    if done:
        return False
    conn.execute("INSERT INTO self_kills (key, tool, pid) VALUES (?, ?, ?)", (key, tool_name, os.getpid()))
    return True


# -- the idempotent tool -----------------------------------------------------------------


@tool(idempotent=True)
def charge(db: str, run: str, step: int, amount: int, crash: bool = False, *,
           idempotency_key: str) -> dict[str, Any]:
    """Charge ``amount``, like a payment API that honours idempotency keys. With ``crash``,
    the first call for a key applies the charge and then kills its own process."""
    _invoked(db, "charge", idempotency_key)
    _pause()
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT result FROM effects WHERE key = ?", (idempotency_key,)).fetchone()
        if row is not None:
            conn.execute("UPDATE effects SET replays = replays + 1 WHERE key = ?", (idempotency_key,))
            result: dict[str, Any] = json.loads(row[0])
        else:
            result = {"charge_id": f"ch_{secrets.token_hex(6)}", "amount": amount}
            conn.execute(
                "INSERT INTO effects (key, run, step, amount, result) VALUES (?, ?, ?, ?, ?)",
                (idempotency_key, run, step, amount, json.dumps(result)),
            )
        kill = crash and _first_time(conn, idempotency_key, "charge")
        conn.execute("COMMIT")
    finally:
        conn.close()
    if kill:
        _die()
    _pause()
    return result


# -- the non-idempotent tool, with a reconcile hook ----------------------------------------


def find_entry(db: str, idempotency_key: str) -> Reconciled:
    """Did the call with this key reach the ledger?"""
    conn = connect(db)
    try:
        row = conn.execute("SELECT entry, amount FROM ledger WHERE key = ?", (idempotency_key,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return Reconciled(applied=False)
    return Reconciled(applied=True, result={"entry": row[0], "amount": row[1]})


def _append_ledger(db: str, run: str, step: int, amount: int, key: str, crash_tool: str | None) -> int:
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute("INSERT INTO ledger (key, run, step, amount) VALUES (?, ?, ?, ?)",
                           (key, run, step, amount))
        entry = cur.lastrowid
        kill = crash_tool is not None and _first_time(conn, key, crash_tool)
        conn.execute("COMMIT")
    finally:
        conn.close()
    if kill:
        _die()
    assert entry is not None
    return entry


@tool(reconcile=find_entry)
def record(db: str, run: str, step: int, amount: int, crash: bool = False, *,
           idempotency_key: str) -> dict[str, Any]:
    """Append to a ledger that knows nothing of idempotency keys (it only stores them, so
    that ``find_entry`` can answer). With ``crash``, the first call for a key appends and
    then kills its own process before returning."""
    _invoked(db, "record", idempotency_key)
    _pause()
    entry = _append_ledger(db, run, step, amount, idempotency_key, "record" if crash else None)
    _pause()
    return {"entry": entry, "amount": amount}


TOOLS = {"charge": charge, "record": record}


@workflow
def payments(ctx: Context, db: str, plan: list[str], amounts: list[int],
             crash_steps: list[int] | None = None) -> dict[str, Any]:
    """Step ``i`` (1-based) calls ``plan[i-1]`` (``charge`` or ``record``) for ``amounts[i-1]``."""
    crash = set(crash_steps or [])
    receipts = []
    for step, (name, amount) in enumerate(zip(plan, amounts, strict=True), start=1):
        receipts.append(ctx.call(TOOLS[name], db=db, run=ctx.run_id, step=step, amount=amount,
                                 crash=step in crash))
    return {"receipts": receipts, "total": sum(r["amount"] for r in receipts)}


# -- a crash loop ---------------------------------------------------------------------------


@tool(idempotent=True)
def always_crash(db: str, *, idempotency_key: str) -> None:
    """Kills its own worker process, every time."""
    _invoked(db, "always_crash", idempotency_key)
    _die()


@workflow
def crash_loop(ctx: Context, db: str) -> str:
    ctx.call(charge, db=db, run=ctx.run_id, step=1, amount=5)
    ctx.call(always_crash, db=db)
    return "unreachable"


# -- a non-idempotent tool without reconcile -------------------------------------------------


@tool
def transfer(db: str, run: str, step: int, amount: int, *, idempotency_key: str) -> dict[str, Any]:
    """Moves money and has no way to ask whether a call took effect. Hangs after the effect
    so that the test can kill its worker mid-call."""
    _invoked(db, "transfer", idempotency_key)
    entry = _append_ledger(db, run, step, amount, idempotency_key, None)
    time.sleep(60)
    return {"entry": entry, "amount": amount}


@workflow
def unreconcilable(ctx: Context, db: str) -> dict[str, Any]:
    first = ctx.call(charge, db=db, run=ctx.run_id, step=1, amount=7)
    second = ctx.call(transfer, db=db, run=ctx.run_id, step=2, amount=11)
    return {"charge": first, "transfer": second}
