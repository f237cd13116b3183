"""The tools of the demo's refund agent (``refund_agent.py``).

Alice, in support, asks Baton to refund $120 on order 98765 (ticket T-4321). The agent
checks the order and the payment, issues the refund, e-mails the receipt and notes the
ticket in the CRM. Policy (``policies/refunds.cedar``) holds refunds over $100 for a manager.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from baton import Reconciled, tool

from .services import PAUSE_ENV, Services


class OrderNotFound(Exception):
    retryable = False


@tool(idempotent=True)
def check_order(order_id: str) -> dict[str, Any]:
    """Look the order up: who bought it and what they paid."""
    order = Services.from_env().order(order_id)
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return order


@tool(idempotent=True)
def check_payment(order_id: str) -> dict[str, Any]:
    """How much of the order's payment can still be refunded."""
    services = Services.from_env()
    order = services.order(order_id)
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    refundable = order["amount"] - services.refunded(order_id)
    return {"payment_id": order["payment_id"], "captured": order["amount"], "refundable": refundable}


@tool(idempotent=True, retries=3, timeout=5.0, role="support-refund-limited",
      resource="Order::{order_id}", cost=lambda amount: amount)
def issue_refund(order_id: str, amount: float, *, idempotency_key: str) -> dict[str, Any]:
    """Move money back to the customer. The payment service honours idempotency keys."""
    receipt = Services.from_env().refund(order_id, amount, idempotency_key)
    pause_marker = os.environ.get(PAUSE_ENV)
    if pause_marker and not Path(pause_marker).exists():
        # The demo kills this process here: after the payment service moved the money,
        # before Baton has recorded that it did.
        Path(pause_marker).write_text(receipt["txn_id"])
        time.sleep(60)
    return receipt


@tool(idempotent=True, retries=3, backoff=0.3)
def send_receipt(to: str, txn_id: str, amount: float, *, idempotency_key: str) -> dict[str, Any]:
    """E-mail the customer their refund receipt."""
    return Services.from_env().send_email(to, f"Your refund of ${amount:.2f} ({txn_id})", idempotency_key)


def _note_taken(ticket: str, note: str, idempotency_key: str) -> Reconciled:
    found = Services.from_env().note_by_key(idempotency_key)
    return Reconciled(applied=found is not None, result=found)


@tool(reconcile=_note_taken)
def update_crm(ticket: str, note: str, *, idempotency_key: str) -> dict[str, Any]:
    """Add a note to the support ticket. Not idempotent: each call adds a note."""
    return Services.from_env().add_note(ticket, note, idempotency_key)
