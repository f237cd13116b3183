"""A refund workflow whose refund step is held for a manager's approval, and a fake refund
service, for the approval crash tests.

Worker processes load this file by path (``baton.start("/abs/path/approval_workflows.py:refund",
...)``), so it must not depend on anything the test process sets up in memory. The fake
service keeps its state in its own SQLite file (``db``, passed in every tool call):

``invocations``  one row per raw call of a tool, whatever happens next (shows retries);
``effects``      the idempotent ``issue_refund``: one row per refund applied, keyed by
                 idempotency key; a repeated key returns the first result, applies nothing
                 and bumps ``replays``;
``ledger``       the non-idempotent ``transfer_refund`` (with a reconcile hook) and
                 ``wire_refund`` (without): one row appended per call;
``self_kills``   the calls that killed their own worker process on purpose.

``passes``       one row per time the workflow function reached its refund step.

``crash`` chooses where a worker dies. For the refund tools: ``"before"`` makes the first
call for a key kill its own process before doing anything; ``"after"`` makes it apply the
refund and then kill its own process before returning; either happens once per key
(``self_kills``). For the workflow: ``"pickup"`` kills the worker once, on the second pass
through the workflow (the first one after the approval: the first pass asked for it),
before the refund step is reached; ``"pickup-twice"`` does so on the second and third passes,
``"pickup-thrice"`` on the second, third and fourth.
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
GATED_STEP = 2
"""The refund is the workflow's second step: its idempotency key is ``f"{run_id}:2"``."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    amount REAL NOT NULL,
    result TEXT NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger (
    entry INTEGER PRIMARY KEY AUTOINCREMENT,
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    order_id TEXT NOT NULL,
    amount REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS passes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS self_kills (
    key TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    phase TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""

POLICY = """\
// Support staff may look orders up, refund them and close tickets.
@id("support-can-refund")
permit(principal in Role::"support", action, resource);

@id("refunds-over-100-need-a-manager")
@approval("role:manager")
forbid(principal, action in [Action::"issue_refund", Action::"transfer_refund", Action::"wire_refund"],
       resource)
when { context.args.amount.greaterThan(decimal("100.0")) };
"""

CONFIG = """\
[principals.alice]
tenant = "acme"
roles = ["support"]

[principals.bob]
tenant = "acme"
roles = ["support", "manager"]

[policies]
files = ["policies/refunds.cedar"]

[approvals]
expires_after = "1h"
"""


def write_config(directory: Path) -> Path:
    """Write ``baton.toml`` and its policy into ``directory``; returns the config's path."""
    (directory / "policies").mkdir(parents=True, exist_ok=True)
    (directory / "policies" / "refunds.cedar").write_text(POLICY)
    config = directory / "baton.toml"
    config.write_text(CONFIG)
    return config


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
    time.sleep(random.uniform(0.002, 0.015))


def _invoked(db: str, tool_name: str, key: str) -> None:
    conn = connect(db)
    try:
        conn.execute("INSERT INTO invocations (tool, key, pid) VALUES (?, ?, ?)", (tool_name, key, os.getpid()))
    finally:
        conn.close()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _first_time(conn: sqlite3.Connection, key: str, tool_name: str, phase: str) -> bool:
    """Inside a transaction: note that the call with ``key`` kills its process at ``phase``;
    ``False`` if it already did so once."""
    if conn.execute("SELECT 1 FROM self_kills WHERE key = ?", (key,)).fetchone():
        return False
    conn.execute("INSERT INTO self_kills (key, tool, phase, pid) VALUES (?, ?, ?, ?)",
                 (key, tool_name, phase, os.getpid()))
    return True


def _maybe_die_before(db: str, key: str, tool_name: str, crash: str) -> None:
    """With ``crash="before"``, the first call for ``key`` dies here, having done nothing."""
    if crash != "before":
        return
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        kill = _first_time(conn, key, tool_name, "before")
        conn.execute("COMMIT")
    finally:
        conn.close()
    if kill:
        _die()


def _workflow_pass(db: str, run: str, crash: str) -> None:
    """Count a pass of the workflow through its refund step; die there if ``crash`` says so."""
    if crash not in ("pickup", "pickup-twice", "pickup-thrice"):
        return
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO passes (run, pid) VALUES (?, ?)", (run, os.getpid()))
        count = conn.execute("SELECT COUNT(*) FROM passes WHERE run = ?", (run,)).fetchone()[0]
        if crash == "pickup":
            kill = count == 2 and _first_time(conn, f"{run}:pickup", "refund", "pickup")
        else:
            kill = count in ((2, 3) if crash == "pickup-twice" else (2, 3, 4))
        conn.execute("COMMIT")
    finally:
        conn.close()
    if kill:
        _die()


# -- ungated steps -----------------------------------------------------------------------


@tool(idempotent=True, resource="Order::{order_id}")
def look_up_order(db: str, order_id: str, *, idempotency_key: str) -> dict[str, Any]:
    _invoked(db, "look_up_order", idempotency_key)
    _pause()
    return {"order_id": order_id, "customer": f"cust-{order_id}"}


@tool(idempotent=True, resource="Order::{order_id}")
def close_ticket(db: str, order_id: str, *, idempotency_key: str) -> str:
    _invoked(db, "close_ticket", idempotency_key)
    _pause()
    return f"closed-{order_id}"


# -- the idempotent refund -----------------------------------------------------------------


@tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount)
def issue_refund(db: str, order_id: str, amount: float, crash: str = "", *,
                 idempotency_key: str) -> dict[str, Any]:
    """Refund ``amount``, like a payment API that honours idempotency keys."""
    _invoked(db, "issue_refund", idempotency_key)
    _maybe_die_before(db, idempotency_key, "issue_refund", crash)
    _pause()
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT result FROM effects WHERE key = ?", (idempotency_key,)).fetchone()
        if row is not None:
            conn.execute("UPDATE effects SET replays = replays + 1 WHERE key = ?", (idempotency_key,))
            result: dict[str, Any] = json.loads(row[0])
        else:
            result = {"refund_id": f"re_{secrets.token_hex(6)}", "amount": amount}
            conn.execute("INSERT INTO effects (key, order_id, amount, result) VALUES (?, ?, ?, ?)",
                         (idempotency_key, order_id, amount, json.dumps(result)))
        kill = crash == "after" and _first_time(conn, idempotency_key, "issue_refund", "after")
        conn.execute("COMMIT")
    finally:
        conn.close()
    if kill:
        _die()
    _pause()
    return result


# -- the non-idempotent refunds --------------------------------------------------------------


def _append_ledger(db: str, tool_name: str, order_id: str, amount: float, key: str, crash: str) -> int:
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute("INSERT INTO ledger (tool, key, order_id, amount) VALUES (?, ?, ?, ?)",
                           (tool_name, key, order_id, amount))
        entry = cur.lastrowid
        kill = crash == "after" and _first_time(conn, key, tool_name, "after")
        conn.execute("COMMIT")
    finally:
        conn.close()
    if kill:
        _die()
    assert entry is not None
    return entry


def find_transfer(db: str, idempotency_key: str) -> Reconciled:
    """Did the transfer with this key reach the ledger?"""
    conn = connect(db)
    try:
        row = conn.execute("SELECT entry, amount FROM ledger WHERE key = ?", (idempotency_key,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return Reconciled(applied=False)
    return Reconciled(applied=True, result={"entry": row[0], "amount": row[1]})


@tool(reconcile=find_transfer, resource="Order::{order_id}", cost=lambda amount: amount)
def transfer_refund(db: str, order_id: str, amount: float, crash: str = "", *,
                    idempotency_key: str) -> dict[str, Any]:
    """Append to a ledger that knows nothing of idempotency keys (it only stores them, so
    that ``find_transfer`` can answer)."""
    _invoked(db, "transfer_refund", idempotency_key)
    _maybe_die_before(db, idempotency_key, "transfer_refund", crash)
    _pause()
    entry = _append_ledger(db, "transfer_refund", order_id, amount, idempotency_key, crash)
    _pause()
    return {"entry": entry, "amount": amount}


@tool(resource="Order::{order_id}", cost=lambda amount: amount)
def wire_refund(db: str, order_id: str, amount: float, crash: str = "", *,
                idempotency_key: str) -> dict[str, Any]:
    """Moves money and has no way to ask whether a call took effect."""
    _invoked(db, "wire_refund", idempotency_key)
    _maybe_die_before(db, idempotency_key, "wire_refund", crash)
    _pause()
    entry = _append_ledger(db, "wire_refund", order_id, amount, idempotency_key, crash)
    _pause()
    return {"entry": entry, "amount": amount}


REFUNDS = {"issue": issue_refund, "transfer": transfer_refund, "wire": wire_refund}


@workflow
def refund(ctx: Context, db: str, order_id: str, amount: float, via: str = "issue",
           crash: str = "") -> dict[str, Any]:
    """Look the order up, refund it through ``via`` (held for approval above 100), close it."""
    order = ctx.call(look_up_order, db=db, order_id=order_id)
    _workflow_pass(db, ctx.run_id, crash)
    receipt = ctx.call(REFUNDS[via], db=db, order_id=order_id, amount=amount, crash=crash)
    ticket = ctx.call(close_ticket, db=db, order_id=order_id)
    return {"order": order, "receipt": receipt, "ticket": ticket}
