"""A workflow full of personal data, for the sensitive-data tests: every kind of value Baton
must keep out of its database, logs, spans and exports. Loaded by path in CLI processes."""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import BaseModel

from baton import Context, Sensitive, tool, workflow

EMAIL = "alice.liddell@example.com"
SSN = "078-05-1120"  # declared sensitive (the SSN detector would catch it too)
CARD = "4242 4242 4242 4242"
PHONE = "+1 415 555 0100"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
PASSWORD = "correct-horse-battery"
TAX_ID = "TX99-ABCD-7731"
NICKNAME = "Lapin-Blanc-77"
SIGNAL_EMAIL = "bob.builder@example.org"

PLANTED = (EMAIL, SSN, CARD, PHONE, AWS_KEY, PASSWORD, TAX_ID, NICKNAME, SIGNAL_EMAIL)

log = logging.getLogger("onboarding")
charged: list[str] = []


class Customer(BaseModel):
    name: str
    phone: str
    tax_id: Annotated[str, Sensitive]


class Found(BaseModel):
    customer: Customer
    nickname: str


@tool(idempotent=True, sensitive=["nickname"])
def find_customer(email: str) -> Found:
    log.warning("looking up %s", email)
    return Found(customer=Customer(name="Alice", phone=PHONE, tax_id=TAX_ID), nickname=NICKNAME)


@tool(retries=1, backoff=0.01)
def charge(card: str, ssn: Annotated[str, Sensitive], amount: float) -> str:
    if not charged:
        charged.append(card)
        log.warning("card %s of %s declined once", card, ssn)
        raise RuntimeError(f"card {card} declined for {ssn}")
    return "ch_1"


@tool
def store_credentials(user: str, password: str, aws_access_key_id: str) -> bool:
    return True


@workflow
def onboard(ctx: Context, email: str, ssn: Annotated[str, Sensitive], card: str) -> dict[str, object]:
    found = ctx.call(find_customer, email=email)
    ctx.call(charge, card=card, ssn=ssn, amount=25.0)
    ctx.call(store_credentials, user="alice", password=PASSWORD, aws_access_key_id=AWS_KEY)
    confirmed = ctx.wait_for("confirm")
    return {"ssn": ssn, "tax_id": found.customer.tax_id, "contact": confirmed, "email": email}
