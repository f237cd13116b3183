"""The demo's refund, told by an agent: a model decides each step, Baton governs them.

By default the model is scripted (offline, deterministic) and reads like the model it
stands in for: it looks at the goal and at the tools' results, never at hidden answers.
``baton demo --model bedrock:…`` or ``--model openai:…`` hands the same tools, policy
and instructions to a real model.
"""

from __future__ import annotations

import re
from typing import Any

from ..agent import ModelRequest, ModelResponse, Reply, ScriptedModel, agent, call, last_results, say
from .refund import check_order, check_payment, issue_refund, send_receipt, update_crm
from .services import Services

GOAL = "Refund $120.00 on order 98765 (ticket T-4321): the customer received a damaged blender."

INSTRUCTIONS = """\
You are a support agent's refund assistant. To refund an order: check the order and its
payment, refund no more than what is still refundable, e-mail the customer their receipt,
then note the refund on the support ticket. Never refund the same order twice. When done,
answer with one sentence saying what was refunded and the transaction id."""


def _goal(request: ModelRequest) -> tuple[str, float, str]:
    """The order, amount and ticket the person asked about, as a model would read them."""
    text = request.messages[0].text
    order = re.search(r"order (\w+)", text)
    amount = re.search(r"\$(\d+(?:\.\d+)?)", text)
    ticket = re.search(r"ticket ([\w-]+)", text)
    if not (order and amount and ticket):
        return "", 0.0, ""
    return order.group(1), float(amount.group(1)), ticket.group(1)


def _look(request: ModelRequest) -> Reply:
    order_id, _, _ = _goal(request)
    if not order_id:
        return say("I need an order number, an amount and a ticket to refund anything.")
    return Reply("I'll check the order and its payment first.",
                 (("check_order", {"order_id": order_id}), ("check_payment", {"order_id": order_id})))


def _refund(request: ModelRequest) -> Reply:
    order_id, amount, _ = _goal(request)
    payment = last_results(request)["check_payment"]
    if "error" in payment or amount > payment["refundable"]:
        return say(f"I cannot refund ${amount:.2f} on order {order_id}: {payment}")
    text = (f"Payment {payment['payment_id']} cleared and ${payment['refundable']:.2f} is refundable; "
            f"refunding ${amount:.2f}.")
    return Reply(text, (("issue_refund", {"order_id": order_id, "amount": amount}),))


def _receipt(request: ModelRequest) -> Reply:
    _, amount, _ = _goal(request)
    seen = last_results(request)
    refund = seen["issue_refund"]
    if "error" in refund:
        return say(f"The refund was not made: {refund['error']}")
    return call("send_receipt", to=seen["check_order"]["email"], txn_id=refund["txn_id"], amount=amount)


def _note(request: ModelRequest) -> Reply:
    _, amount, ticket = _goal(request)
    seen = last_results(request)
    txn, message = seen["issue_refund"]["txn_id"], seen["send_receipt"].get("message_id", "not sent")
    return call("update_crm", ticket=ticket, note=f"Refunded ${amount:.2f} ({txn}); receipt {message}")


def _answer(request: ModelRequest) -> Reply:
    order_id, amount, ticket = _goal(request)
    txn = last_results(request)["issue_refund"]["txn_id"]
    return say(f"Refunded ${amount:.2f} on order {order_id} ({txn}), e-mailed the receipt and noted ticket {ticket}.")


class DemoModel(ScriptedModel):
    """The scripted model, booking each call with the demo's services so the demo can
    show that no call was made twice, whichever worker made it."""

    def complete(self, request: ModelRequest) -> ModelResponse:
        Services.from_env().model_called(request.purpose, request.turn)
        return super().complete(request)


model = DemoModel([_look, _refund, _receipt, _note, _answer], label="refund-demo",
                  plan="1. Check the order and its payment.\n2. Refund what was asked, if it is refundable.\n"
                       "3. E-mail the receipt.\n4. Note the refund on the ticket.")

refund_agent = agent("refund_agent", instructions=INSTRUCTIONS, model=model, plan=True,
                     tools=[check_order, check_payment, issue_refund, send_receipt, update_crm],
                     pin=["check_order", "check_payment"])


def input_for(model_spec: str | None) -> dict[str, Any]:
    return {"goal": GOAL, "model": model_spec}
