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
import secrets
import sys
from pathlib import Path
from typing import Any

from baton import Context, tool, workflow

# Workers load this file by path and put only its own folder on sys.path; the helpers it
# shares with the crash tests are one level up.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from crash_support import (
    SERVICE_TABLES,
    create_tables,
    die,
    find_ledger_entry,
    first_self_kill,
    network_pause,
    record_invocation,
    replayed_result,
    transaction,
)

WORKFLOWS_FILE = Path(__file__).resolve()
GATED_STEP = 2
"""The refund is the workflow's second step: its idempotency key is ``f"{run_id}:2"``."""

SCHEMA = """
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


def init_service(db: str) -> None:
    create_tables(db, SERVICE_TABLES + SCHEMA)


def _pause() -> None:
    network_pause(0.002, 0.015)


def _maybe_die_before(db: str, key: str, tool_name: str, crash: str) -> None:
    """With ``crash="before"``, the first call for ``key`` dies here, having done nothing."""
    if crash != "before":
        return
    with transaction(db) as conn:
        kill = first_self_kill(conn, key, tool_name, "before")
    if kill:
        die()


def _refund_called(db: str, tool_name: str, key: str, crash: str) -> None:
    """What every refund tool does before its effect: the raw call is counted even when the
    worker then dies."""
    record_invocation(db, tool_name, key)
    _maybe_die_before(db, key, tool_name, crash)
    _pause()


def _workflow_pass(db: str, run: str, crash: str) -> None:
    """Count a pass of the workflow through its refund step; die there if ``crash`` says so."""
    if crash not in ("pickup", "pickup-twice", "pickup-thrice"):
        return
    with transaction(db) as conn:
        conn.execute("INSERT INTO passes (run, pid) VALUES (?, ?)", (run, os.getpid()))
        count = conn.execute("SELECT COUNT(*) FROM passes WHERE run = ?", (run,)).fetchone()[0]
        if crash == "pickup":
            kill = count == 2 and first_self_kill(conn, f"{run}:pickup", "refund", "pickup")
        else:
            kill = count in ((2, 3) if crash == "pickup-twice" else (2, 3, 4))
    if kill:
        die()


# -- ungated steps -----------------------------------------------------------------------


@tool(idempotent=True, resource="Order::{order_id}")
def look_up_order(db: str, order_id: str, *, idempotency_key: str) -> dict[str, Any]:
    record_invocation(db, "look_up_order", idempotency_key)
    _pause()
    return {"order_id": order_id, "customer": f"cust-{order_id}"}


@tool(idempotent=True, resource="Order::{order_id}")
def close_ticket(db: str, order_id: str, *, idempotency_key: str) -> str:
    record_invocation(db, "close_ticket", idempotency_key)
    _pause()
    return f"closed-{order_id}"


# -- the idempotent refund -----------------------------------------------------------------


@tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount)
def issue_refund(db: str, order_id: str, amount: float, crash: str = "", *,
                 idempotency_key: str) -> dict[str, Any]:
    """Refund ``amount``, like a payment API that honours idempotency keys."""
    _refund_called(db, "issue_refund", idempotency_key, crash)
    with transaction(db) as conn:
        result = replayed_result(conn, idempotency_key)
        if result is None:
            result = {"refund_id": f"re_{secrets.token_hex(6)}", "amount": amount}
            conn.execute("INSERT INTO effects (key, order_id, amount, result) VALUES (?, ?, ?, ?)",
                         (idempotency_key, order_id, amount, json.dumps(result)))
        kill = crash == "after" and first_self_kill(conn, idempotency_key, "issue_refund", "after")
    if kill:
        die()
    _pause()
    return result


# -- the non-idempotent refunds --------------------------------------------------------------


def _ledger_refund(db: str, tool_name: str, order_id: str, amount: float, crash: str,
                   key: str) -> dict[str, Any]:
    """The two ledger refunds differ only in whether they can be reconciled."""
    _refund_called(db, tool_name, key, crash)
    with transaction(db) as conn:
        entry = conn.execute("INSERT INTO ledger (tool, key, order_id, amount) VALUES (?, ?, ?, ?)",
                             (tool_name, key, order_id, amount)).lastrowid
        kill = crash == "after" and first_self_kill(conn, key, tool_name, "after")
    if kill:
        die()
    _pause()
    return {"entry": entry, "amount": amount}


@tool(reconcile=find_ledger_entry, resource="Order::{order_id}", cost=lambda amount: amount)
def transfer_refund(db: str, order_id: str, amount: float, crash: str = "", *,
                    idempotency_key: str) -> dict[str, Any]:
    """Append to a ledger that knows nothing of idempotency keys (it only stores them, so
    that ``find_ledger_entry`` can answer)."""
    return _ledger_refund(db, "transfer_refund", order_id, amount, crash, idempotency_key)


@tool(resource="Order::{order_id}", cost=lambda amount: amount)
def wire_refund(db: str, order_id: str, amount: float, crash: str = "", *,
                idempotency_key: str) -> dict[str, Any]:
    """Moves money and has no way to ask whether a call took effect."""
    return _ledger_refund(db, "wire_refund", order_id, amount, crash, idempotency_key)


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
