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

import sys
import time
from pathlib import Path
from typing import Any

from baton import Context, tool, workflow

# Workers load this file by path and put only its own folder on sys.path; the helpers it
# shares with the crash tests are one level up.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from crash_support import (
    PAYMENT_TABLES,
    SERVICE_TABLES,
    append_ledger,
    apply_charge,
    create_tables,
    die,
    find_ledger_entry,
    kill_after_once,
    network_pause,
    record_invocation,
)

WORKFLOWS_FILE = Path(__file__).resolve()


def init_service(db: str) -> None:
    create_tables(db, SERVICE_TABLES + PAYMENT_TABLES)


def _pause() -> None:
    network_pause(0.001, 0.008)


# -- the idempotent tool -----------------------------------------------------------------


@tool(idempotent=True)
def charge(db: str, run: str, step: int, amount: int, crash: bool = False, *,
           idempotency_key: str) -> dict[str, Any]:
    """Charge ``amount``, like a payment API that honours idempotency keys. With ``crash``,
    the first call for a key applies the charge and then kills its own process."""
    record_invocation(db, "charge", idempotency_key)
    _pause()
    result = apply_charge(db, run, step, amount, idempotency_key, kill_after_once if crash else None)
    _pause()
    return result


# -- the non-idempotent tool, with a reconcile hook ----------------------------------------


@tool(reconcile=find_ledger_entry)
def record(db: str, run: str, step: int, amount: int, crash: bool = False, *,
           idempotency_key: str) -> dict[str, Any]:
    """Append to a ledger that knows nothing of idempotency keys (it only stores them, so
    that ``find_ledger_entry`` can answer). With ``crash``, the first call for a key appends and
    then kills its own process before returning."""
    record_invocation(db, "record", idempotency_key)
    _pause()
    entry = append_ledger(db, "record", run, step, amount, idempotency_key, kill_after_once if crash else None)
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
    record_invocation(db, "always_crash", idempotency_key)
    die()


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
    record_invocation(db, "transfer", idempotency_key)
    entry = append_ledger(db, "transfer", run, step, amount, idempotency_key, None)
    time.sleep(60)
    return {"entry": entry, "amount": amount}


@workflow
def unreconcilable(ctx: Context, db: str) -> dict[str, Any]:
    first = ctx.call(charge, db=db, run=ctx.run_id, step=1, amount=7)
    second = ctx.call(transfer, db=db, run=ctx.run_id, step=2, amount=11)
    return {"charge": first, "transfer": second}
