"""A small workflow showing each durable primitive: a retried call, a durable timer,
waiting for a signal from outside, and replay-safe time and ids.

    baton run examples/order_followup.py:follow_up --input '{"order_id": "98765"}'
    baton signal RUN_ID customer_reply --data '{"satisfied": true}'
    baton worker --until-idle
"""

from __future__ import annotations

from baton import Context, tool, workflow


@tool(idempotent=True, retries=3, timeout=5.0)
def lookup_order(order_id: str) -> dict[str, str]:
    """Pretend to call an order API."""
    return {"order_id": order_id, "customer": "dana@example.com"}


@tool(idempotent=True)
def send_survey(to: str, survey_id: str, *, idempotency_key: str) -> dict[str, str]:
    """Pretend to send an e-mail; a real mail API would deduplicate on the key."""
    return {"to": to, "survey_id": survey_id, "message_id": f"<{idempotency_key}@mail.example>"}


@workflow
def follow_up(ctx: Context, order_id: str, wait_seconds: float = 1.0) -> dict[str, object]:
    order = ctx.call(lookup_order, order_id=order_id)
    ctx.sleep(wait_seconds)  # durable: a long wait suspends the run and frees the worker
    survey = ctx.call(send_survey, to=order["customer"], survey_id=str(ctx.uuid()))
    reply = ctx.wait_for("customer_reply", timeout=7 * 24 * 3600, default={"satisfied": None})
    return {"order": order_id, "survey": survey["message_id"], "reply": reply, "closed_at": ctx.now().isoformat()}
