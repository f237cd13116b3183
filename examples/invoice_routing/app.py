"""Finance: an agent routes today's incoming invoices.

Nora (accounts payable) hands four invoices to the agent. It reads them, matches each
against its purchase order and the goods received, schedules payment of those that match
and holds the one that does not. Policy holds the $18,400 payment for a controller (Victor
approves it), and refuses the last payment of the day: it would take Nora past her $20,000
daily limit. The vendors' bank details are sensitive (IBANs are detected and sealed).

    python examples/invoice_routing/app.py
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from baton import Baton, Governance, Limits, Settings, tool
from baton.agent import AgentLimits, ModelRequest, Reply, ScriptedModel, agent, calls_of, say
from baton.cli.render import Tail

HERE = Path(__file__).resolve().parent


@dataclass
class Ledger:
    """A fake ERP and bank: invoices, purchase orders, and the books of what was done."""

    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    matches: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def seed(self) -> None:
        """Start from today's four invoices and their purchase orders, nothing done yet."""
        self.invoices, self.orders, self.matches, self.payments, self.holds = {}, {}, {}, {}, {}
        for number, vendor, amount, po, iban in [
            ("INV-1001", "Northwind Office Supply", 1240.00, "PO-7781", "GB82WEST12345698765432"),
            ("INV-1002", "Contoso Cloud", 18400.00, "PO-7790", "DE89370400440532013000"),
            ("INV-1003", "Fabrikam Logistics", 3900.00, "PO-7802", "FR1420041010050500013M02606"),
            ("INV-1004", "Tailspin Print", 2750.00, "PO-7811", "NL91ABNA0417164300"),
        ]:
            self.invoices[number] = {"invoice_id": number, "vendor": vendor, "amount": amount, "currency": "USD",
                                     "po_number": po, "iban": iban}
            self.orders[po] = {"vendor": vendor, "amount": amount, "received": True}
        self.orders["PO-7802"]["amount"] = 3100.00  # Fabrikam billed $800 more than was ordered


LEDGER = Ledger()


@tool(read_only=True, idempotent=True, resource="Invoice::{invoice_id}")
def read_invoice(invoice_id: str) -> dict[str, Any]:
    """Read an invoice: vendor, amount, purchase order number, bank account."""
    return dict(LEDGER.invoices[invoice_id])


@tool(idempotent=True, resource="Invoice::{invoice_id}")
def match_purchase_order(invoice_id: str, po_number: str, *, idempotency_key: str) -> dict[str, Any]:
    """Three-way match: the invoice against its purchase order and the goods received.
    The result is recorded on the invoice."""
    invoice, order = LEDGER.invoices[invoice_id], LEDGER.orders[po_number]
    matched = order["received"] and order["vendor"] == invoice["vendor"] and order["amount"] == invoice["amount"]
    return LEDGER.matches.setdefault(idempotency_key, {
        "invoice_id": invoice_id, "po_number": po_number, "matched": matched, "invoice_amount": invoice["amount"],
        "po_amount": order["amount"], "goods_received": order["received"]})


@tool(idempotent=True, resource="Vendor::{vendor}", cost=lambda amount: amount, role="ap-payments")
def schedule_payment(invoice_id: str, vendor: str, amount: float, *, idempotency_key: str) -> dict[str, Any]:
    """Schedule payment of an invoice in the next bank run. The bank deduplicates on the key."""
    return LEDGER.payments.setdefault(idempotency_key, {
        "payment_id": f"PAY-{len(LEDGER.payments) + 1:04d}", "invoice_id": invoice_id, "vendor": vendor,
        "amount": amount, "pay_on": "2026-12-01"})


@tool(idempotent=True, resource="Invoice::{invoice_id}")
def hold_invoice(invoice_id: str, reason: str, *, idempotency_key: str) -> dict[str, Any]:
    """Put an invoice on hold for a person in accounts payable, saying why."""
    return LEDGER.holds.setdefault(idempotency_key, {"hold_id": f"HLD-{len(LEDGER.holds) + 1:04d}",
                                                     "invoice_id": invoice_id, "reason": reason})


# -- the model: a scripted conversation, reading each result as a real model would ----------

INBOX = ["INV-1001", "INV-1002", "INV-1003", "INV-1004"]


def match_all(request: ModelRequest) -> Reply:
    reply = Reply(text="Matching each invoice against its purchase order and the goods received.")
    for _, _, invoice in calls_of(request, "read_invoice"):
        reply = reply.and_call("match_purchase_order", invoice_id=invoice["invoice_id"], po_number=invoice["po_number"])
    return reply


def pay_or_hold(request: ModelRequest) -> Reply:
    invoices = {i["invoice_id"]: i for _, _, i in calls_of(request, "read_invoice")}
    reply = Reply(text="Scheduling payment of the matched invoices; holding the one that does not match.")
    for _, _, match in calls_of(request, "match_purchase_order"):
        invoice = invoices[match["invoice_id"]]
        if match["matched"]:
            reply = reply.and_call("schedule_payment", invoice_id=invoice["invoice_id"], vendor=invoice["vendor"],
                                   amount=invoice["amount"])
        else:
            reply = reply.and_call("hold_invoice", invoice_id=invoice["invoice_id"], reason=(
                f"invoice ${match['invoice_amount']:,.2f} but {match['po_number']} is for ${match['po_amount']:,.2f}"))
    return reply


def report(request: ModelRequest) -> Reply:
    lines = []
    for _, asked, paid in calls_of(request, "schedule_payment"):
        head = f"{asked['invoice_id']}, ${asked['amount']:,.2f} to {asked['vendor']}"
        lines.append(f"{head}: scheduled as {paid['payment_id']}" if "payment_id" in paid
                     else f"{head}: NOT paid, {paid['error']}; it waits for tomorrow's run")
    lines += [f"{asked['invoice_id']}: held ({held['hold_id']}), {held['reason']}"
              for _, asked, held in calls_of(request, "hold_invoice")]
    return say("Today's invoices:\n- " + "\n- ".join(lines))


router_model = ScriptedModel([
    Reply(text="Reading the four invoices in today's inbox.").and_call("read_invoice", invoice_id=INBOX[0])
    .and_call("read_invoice", invoice_id=INBOX[1]).and_call("read_invoice", invoice_id=INBOX[2])
    .and_call("read_invoice", invoice_id=INBOX[3]),
    match_all,
    pay_or_hold,
    report,
], label="ap-router")

invoice_router = agent(
    "invoice_router",
    instructions="You route Acme's incoming invoices: pay what matches its purchase order, hold the rest.",
    model=router_model, tools=[read_invoice, match_purchase_order, schedule_payment, hold_invoice],
    limits=AgentLimits(max_turns=8),
)

GOAL = f"Route today's inbox: {', '.join(INBOX)}."


# -- the story --------------------------------------------------------------------------------


@dataclass
class Story:
    run_id: str
    database: Path
    approval_id: str


def story(root: Path, console: Console) -> Story:
    LEDGER.seed()
    database = root / "baton.db"
    with Baton(Settings(database_url=f"sqlite:///{database}"), governance=Governance.load(HERE / "baton.toml")) as b:
        console.rule("[bold]Accounts payable: routing today's invoices")
        # The run may pay out $25,000 at most, whatever policy would allow.
        run_id = b.start(invoice_router, goal=GOAL, principal="nora", limits=Limits(max_spend=25_000))
        console.print(f"nora: {GOAL}  (run {run_id}, at most $25,000)\n")
        timeline = Tail(b, run_id, console)
        record = b.drive(run_id)
        timeline.show()

        (request,) = b.approvals("victor")
        console.print(f"\n[bold]The run is {record.status.value}[/] for approval [bold]{request.approval_id}[/]: "
                      f"{request.title}, ${request.args['amount']:,.2f} to {request.args['vendor']}\n"
                      f"  policy {', '.join(request.policies)}; may decide: {', '.join(request.approvers)}\n")
        b.decide(request.approval_id, principal="victor", approve=True,
                 reason="annual licence, budgeted in the IT plan; PO-7790 signed in October")
        console.print("victor approves; the run continues:\n")
        b.drive(run_id)
        timeline.show()

        result = b.result(run_id)
        console.print(f"\n[bold]Answer[/] ({result['stop_reason']}, {result['turns']} turns, "
                      f"{result['tokens']:,} model tokens): {result['answer']}")
        paid = sum(p["amount"] for p in LEDGER.payments.values())
        console.print(f"[bold]Bank[/]: {len(LEDGER.payments)} payments, ${paid:,.2f}; "
                      f"[bold]ERP[/]: {len(LEDGER.holds)} invoice on hold")
        return Story(run_id=run_id, database=database, approval_id=request.approval_id)


def main(workdir: str | Path | None = None) -> Story:
    """Run the story offline: in ``workdir`` (kept, for a look with ``baton``) or in a
    temporary directory."""
    console = Console(highlight=False, soft_wrap=True)
    if workdir is not None:
        return story(Path(workdir), console)
    with tempfile.TemporaryDirectory(prefix="baton-invoices-") as tmp:
        return story(Path(tmp), console)


if __name__ == "__main__":
    main(*sys.argv[1:2])
