"""Approvals, one story per test: a step gated by policy waits for a person; who may decide
(not the requester, only the named role, only in the same tenant); what a decision does to
the run; expiry and escalation; changed arguments; ``ctx.approval``; notifiers; the CLI."""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from baton import Baton, Context, RunStatus, Sensitive, tool, workflow
from baton.approvals import ApprovalRecord, WebhookNotifier, args_hash
from baton.approvals.decisions import _append
from baton.cli import app, main
from baton.config import Governance
from baton.errors import ApprovalDenied, ApprovalError, PolicyDenied, RunNotFound, UsageError
from baton.journal import events as ev
from baton.testing import FakeClock
from engine_support import event_types, make_settings, of_type

# The module, not the Typer app that ``baton.cli`` exports under the same name.
cli_module = importlib.import_module("baton.cli.app")

HOUR = 3600.0

POLICY = """
@id("support-can-refund")
permit(principal in Role::"support", action, resource);

@id("refunds-over-100-need-a-manager")
GATE
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("100.0")) };

@id("no-refund-over-1000")
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("1000.0")) };
"""
MANAGER_GATE = '@approval("role:manager")'
ESCALATING_GATE = '@approval("role:manager")\n@expires("2h")\n@escalate("role:director")'

PRINCIPALS: dict[str, dict[str, Any]] = {
    "alice": {"tenant": "acme", "roles": ["support"]},
    "carol": {"tenant": "acme", "roles": ["support"]},
    "bob": {"tenant": "acme", "roles": ["support", "manager"]},
    "dora": {"tenant": "acme", "roles": ["director"]},
    "eve": {"tenant": "other", "roles": ["support", "manager"]},
}

# What the tools did, in order: the side effects the approvals must guard.
refunded: list[tuple[str, float]] = []
credited: list[str] = []


@pytest.fixture(autouse=True)
def _empty_ledgers() -> None:
    refunded.clear()
    credited.clear()


@tool(idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount)
def issue_refund(order_id: str, amount: float) -> str:
    refunded.append((order_id, amount))
    return f"txn-{order_id}-{amount:g}"


@tool(idempotent=True, resource="Order::{order_id}")
def issue_credit(order_id: str) -> str:
    credited.append(order_id)
    return f"credit-{order_id}"


@workflow
def refund(ctx: Context, order_id: str, amount: float) -> str:
    return ctx.call(issue_refund, order_id=order_id, amount=amount)


@workflow
def refund_from_file(ctx: Context, order_id: str, amount_file: str) -> str:
    """Reads the amount where the test can change it between two drives of the run."""
    amount = float(Path(amount_file).read_text())
    return ctx.call(issue_refund, order_id=order_id, amount=amount)


@workflow
def refund_or_explain(ctx: Context, order_id: str, amount: float) -> dict[str, Any]:
    try:
        return {"refunded": True, "txn": ctx.call(issue_refund, order_id=order_id, amount=amount)}
    except ApprovalDenied as exc:
        return {"refunded": False, "why": exc.message}


@workflow
def goodwill(ctx: Context, order_id: str) -> dict[str, Any]:
    decision = ctx.approval(f"goodwill credit on order {order_id}", approvers="role:manager",
                            evidence={"order_id": order_id, "complaints": 3})
    credit = ctx.call(issue_credit, order_id=order_id) if decision else None
    return {"approved": decision.approved, "by": decision.by, "reason": decision.reason, "credit": credit}


@workflow
def urgent_goodwill(ctx: Context, order_id: str) -> dict[str, Any]:
    decision = ctx.approval(f"urgent credit on order {order_id}", approvers=["role:manager"], expires_in=60,
                            escalate_to="role:director")
    return {"approved": decision.approved, "by": decision.by}


# -- set-up -----------------------------------------------------------------------------


def config(tmp_path: Path, gate: str = MANAGER_GATE, **approvals: Any) -> dict[str, Any]:
    """A baton.toml as a dict; the policy file is written under ``tmp_path``."""
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "refunds.cedar").write_text(POLICY.replace("GATE", gate))
    return {
        "principals": PRINCIPALS,
        "policies": {"files": ["policies/refunds.cedar"]},
        "approvals": {"expires_after": "1h", **approvals},
    }


def governance(tmp_path: Path, gate: str = MANAGER_GATE, **approvals: Any) -> Governance:
    return Governance.from_dict(config(tmp_path, gate, **approvals), base=tmp_path, source="baton.toml")


@pytest.fixture
def gov(tmp_path: Path) -> Governance:
    return governance(tmp_path)


@pytest.fixture
def b(tmp_path: Path, clock: FakeClock, gov: Governance) -> Iterator[Baton]:
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as runtime:
        yield runtime


def pending_request(b: Baton, run_id: str) -> ApprovalRecord:
    """Drive the run; it must stop waiting for exactly one pending approval request."""
    record = b.drive(run_id)
    assert record.status is RunStatus.WAITING and record.waiting_for == "approval", record
    found = [a for a in b.approvals() if a.run_id == run_id]
    assert len(found) == 1, found
    return found[0]


def gated_run(b: Baton, amount: float = 150.0, principal: str = "alice", order_id: str = "98765"
              ) -> tuple[str, ApprovalRecord]:
    run_id = b.start(refund, {"order_id": order_id, "amount": amount}, principal=principal)
    return run_id, pending_request(b, run_id)


def failure(b: Baton, run_id: str) -> ev.ErrorInfo:
    (failed,) = of_type(b, run_id, ev.RunFailed)
    return failed.error


# -- the request ------------------------------------------------------------------------


def test_a_gated_step_waits_with_a_durable_request_and_a_small_one_runs(
        b: Baton, clock: FakeClock, tmp_path: Path, gov: Governance) -> None:
    small = b.start(refund, {"order_id": "1", "amount": 40.0}, principal="alice")
    assert b.drive(small).status is RunStatus.COMPLETED
    assert refunded == [("1", 40.0)]
    assert not of_type(b, small, ev.ApprovalRequested)

    run_id, request = gated_run(b, 150.0)
    assert refunded == [("1", 40.0)]  # the gated refund did not run
    assert event_types(b, run_id) == ["RunStarted", "PolicyDecided", "ApprovalRequested"]
    (decided,) = of_type(b, run_id, ev.PolicyDecided)
    assert decided.effect == "approval"
    (asked,) = of_type(b, run_id, ev.ApprovalRequested)
    assert asked.approval_id == request.approval_id
    assert asked.args_hash == args_hash("issue_refund", {"order_id": "98765", "amount": 150.0}, b.sealer(run_id))
    assert request.status == "pending"
    assert (request.requester, request.tenant) == ("alice", "acme")
    assert request.tool == "issue_refund" and request.args == {"order_id": "98765", "amount": 150.0}
    assert request.approvers == ["role:manager"]
    assert request.policies == ["refunds-over-100-need-a-manager"]
    assert request.expires_at == clock.time() + HOUR
    assert request.decided_by is None and request.consumed_at is None

    # Another process on the same database sees the same request.
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as other:
        assert [a.approval_id for a in other.approvals("bob")] == [request.approval_id]

    # Driving again changes nothing while nobody has decided.
    before = len(b.events(run_id))
    assert b.drive(run_id).status is RunStatus.WAITING
    assert len(b.events(run_id)) == before


# -- who may decide ---------------------------------------------------------------------


def test_the_requester_cannot_decide_their_own_request(b: Baton) -> None:
    # bob is a manager, so only the self-approval rule stands in his way.
    run_id, request = gated_run(b, principal="bob")
    for approve in (True, False):
        with pytest.raises(ApprovalError, match=r"bob asked for approval .* someone else must decide"):
            b.decide(request.approval_id, principal="bob", approve=approve, reason="looks fine to me")
    assert b.get_approval(request.approval_id).status == "pending"
    assert not of_type(b, run_id, ev.ApprovalGranted) and not of_type(b, run_id, ev.ApprovalDenied)
    assert b.approvals("bob") == []  # nor is it offered to him


def test_an_approver_without_the_role_is_refused_and_told_which_role(b: Baton) -> None:
    run_id, request = gated_run(b)
    for approve, verb in ((True, "approve"), (False, "deny")):
        with pytest.raises(ApprovalError) as refused:
            b.decide(request.approval_id, principal="carol", approve=approve, reason="I know the customer")
        assert f"carol may not {verb} approval {request.approval_id}" in refused.value.message
        assert "it needs a manager" in refused.value.message
    assert b.get_approval(request.approval_id).status == "pending"
    assert b.drive(run_id).status is RunStatus.WAITING
    assert refunded == []


def test_a_reason_is_required(b: Baton) -> None:
    _, request = gated_run(b)
    with pytest.raises(UsageError, match="reason"):
        b.decide(request.approval_id, principal="bob", approve=True, reason="   ")
    assert b.get_approval(request.approval_id).status == "pending"


def test_another_tenant_can_neither_see_nor_decide_the_request(b: Baton) -> None:
    run_id, request = gated_run(b)
    assert b.approvals("eve") == []
    assert b.approvals("eve", status=None) == []
    with pytest.raises(ApprovalError, match="no approval request"):
        b.get_approval(request.approval_id, "eve")
    with pytest.raises(ApprovalError, match="no approval request"):
        b.decide(request.approval_id, principal="eve", approve=True, reason="manager elsewhere")
    assert b.get_approval(request.approval_id).status == "pending"
    assert b.drive(run_id).status is RunStatus.WAITING
    assert refunded == []


def test_listing_as_a_principal_shows_only_what_they_may_decide(b: Baton, clock: FakeClock) -> None:
    _, alices = gated_run(b, principal="alice", order_id="1")
    _, bobs = gated_run(b, principal="bob", order_id="2")
    assert {a.approval_id for a in b.approvals()} == {alices.approval_id, bobs.approval_id}
    assert [a.approval_id for a in b.approvals("bob")] == [alices.approval_id]  # not his own
    assert b.approvals("carol") == []  # not a manager
    assert b.approvals("dora") == []  # a director, but the gate names managers
    with pytest.raises(UsageError, match="unknown principal 'mallory'"):
        b.approvals("mallory")

    clock.advance(HOUR)  # expired: nobody is offered it any more, though it is still pending
    assert b.approvals("bob") == []
    assert {a.approval_id for a in b.approvals()} == {alices.approval_id, bobs.approval_id}


# -- decisions --------------------------------------------------------------------------


def test_approval_runs_the_step_exactly_once_and_is_consumed(b: Baton) -> None:
    run_id, request = gated_run(b)
    decided = b.decide(request.approval_id, principal="bob", approve=True, reason="customer verified")
    assert (decided.status, decided.decided_by, decided.reason) == ("approved", "bob", "customer verified")
    assert decided.consumed_at is None
    assert refunded == []  # a decision only records; the run continues when driven

    batches: list[list[str]] = []
    record = b.drive(run_id, listener=lambda _, events: batches.append([e.type_name for e in events]))
    assert record.status is RunStatus.COMPLETED
    assert refunded == [("98765", 150.0)]
    assert event_types(b, run_id) == [
        "RunStarted", "PolicyDecided", "ApprovalRequested", "ApprovalGranted",
        "PolicyDecided", "ApprovalConsumed", "StepStarted", "StepRan", "RunCompleted",
    ]
    # Policy is asked again before the grant is used; the answer, the consumption and the
    # step's start are one append.
    assert ["PolicyDecided", "ApprovalConsumed", "StepStarted"] in batches
    (granted,) = of_type(b, run_id, ev.ApprovalGranted)
    assert (granted.approval_id, granted.by, granted.reason) == (request.approval_id, "bob", "customer verified")
    (started,) = of_type(b, run_id, ev.StepStarted)
    assert started.args == {"order_id": "98765", "amount": 150.0}

    indexed = b.get_approval(request.approval_id)
    assert indexed.status == "approved" and indexed.decided_by == "bob"
    assert indexed.consumed_at is not None
    assert b.approvals() == []

    assert b.drive(run_id).status is RunStatus.COMPLETED
    assert refunded == [("98765", 150.0)]


def test_denial_fails_the_step_and_the_tool_never_runs(b: Baton) -> None:
    run_id, request = gated_run(b)
    b.decide(request.approval_id, principal="bob", approve=False, reason="refund already issued by hand")
    record = b.drive(run_id)
    assert record.status is RunStatus.FAILED
    assert refunded == []
    assert not of_type(b, run_id, ev.StepStarted) and not of_type(b, run_id, ev.ApprovalConsumed)
    (step_failed,) = of_type(b, run_id, ev.StepFailed)
    assert step_failed.final and step_failed.error.code == ApprovalDenied.code
    error = failure(b, run_id)
    assert error.code == ApprovalDenied.code
    assert "denied by bob" in error.message and "refund already issued by hand" in error.message
    indexed = b.get_approval(request.approval_id)
    assert (indexed.status, indexed.decided_by) == ("denied", "bob")
    assert indexed.consumed_at is None


def test_a_workflow_that_catches_the_denial_completes(b: Baton) -> None:
    run_id = b.start(refund_or_explain, {"order_id": "98765", "amount": 150.0}, principal="alice")
    request = pending_request(b, run_id)
    b.decide(request.approval_id, principal="bob", approve=False, reason="no receipt")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    (done,) = of_type(b, run_id, ev.RunCompleted)
    assert isinstance(done.result, dict) and done.result["refunded"] is False
    assert "denied by bob: no receipt" in done.result["why"]
    assert refunded == []
    assert issubclass(ApprovalDenied, PolicyDenied)


@pytest.mark.parametrize("first", [True, False], ids=["approved-first", "denied-first"])
def test_a_request_is_decided_once(b: Baton, first: bool) -> None:
    run_id, request = gated_run(b)
    b.decide(request.approval_id, principal="bob", approve=first, reason="first word")
    status = "approved" if first else "denied"
    for again in (True, False):
        with pytest.raises(ApprovalError, match=f"already {status} by bob"):
            b.decide(request.approval_id, principal="bob", approve=again, reason="second word")
    b.drive(run_id)
    with pytest.raises(ApprovalError, match=f"already {status} by bob"):
        b.decide(request.approval_id, principal="bob", approve=not first, reason="after the run moved on")
    decisions = of_type(b, run_id, ev.ApprovalGranted) + of_type(b, run_id, ev.ApprovalDenied)
    assert [d.reason for d in decisions] == ["first word"]
    assert refunded == ([("98765", 150.0)] if first else [])


# -- expiry and escalation --------------------------------------------------------------


def test_an_expired_request_is_denied_when_the_run_is_next_driven(b: Baton, clock: FakeClock) -> None:
    run_id, request = gated_run(b)
    clock.advance(HOUR - 1)
    assert b.drive(run_id).status is RunStatus.WAITING  # not yet
    assert not of_type(b, run_id, ev.ApprovalDenied)

    clock.advance(1)
    with pytest.raises(ApprovalError, match="expired"):
        b.decide(request.approval_id, principal="bob", approve=True, reason="too late")
    assert b.drive(run_id).status is RunStatus.FAILED
    (denied,) = of_type(b, run_id, ev.ApprovalDenied)
    assert denied.by is None and denied.approval_id == request.approval_id
    assert not of_type(b, run_id, ev.ApprovalEscalated)
    assert failure(b, run_id).code == ApprovalDenied.code
    assert "expired" in failure(b, run_id).message
    assert refunded == []
    indexed = b.get_approval(request.approval_id)
    assert indexed.status == "expired" and indexed.decided_by is None


def test_an_expired_request_escalates_once_to_the_named_role(tmp_path: Path, clock: FakeClock) -> None:
    with Baton(make_settings(tmp_path), clock=clock, governance=governance(tmp_path, ESCALATING_GATE)) as b:
        run_id, request = gated_run(b)
        assert request.expires_at == clock.time() + 2 * HOUR  # @expires overrides the config's 1h
        assert request.escalate_to == ["role:director"]
        with pytest.raises(ApprovalError, match="needs a manager"):
            b.decide(request.approval_id, principal="dora", approve=True, reason="not yet mine")

        clock.advance(2 * HOUR)
        record = b.drive(run_id)
        assert record.status is RunStatus.WAITING and record.waiting_for == "approval"
        (escalated,) = of_type(b, run_id, ev.ApprovalEscalated)
        assert escalated.approvers == ["role:director"]
        assert escalated.expires_at == clock.time() + 2 * HOUR
        assert not of_type(b, run_id, ev.ApprovalDenied)
        indexed = b.get_approval(request.approval_id)
        assert indexed.status == "pending" and indexed.escalated and indexed.approvers == ["role:director"]
        assert b.approvals("bob") == []
        assert [a.approval_id for a in b.approvals("dora")] == [request.approval_id]

        with pytest.raises(ApprovalError, match=r"bob may not approve .* it needs a director"):
            b.decide(request.approval_id, principal="bob", approve=True, reason="still my call?")
        b.decide(request.approval_id, principal="dora", approve=True, reason="escalated and checked")
        assert b.drive(run_id).status is RunStatus.COMPLETED
        assert refunded == [("98765", 150.0)]
        assert len(of_type(b, run_id, ev.ApprovalEscalated)) == 1
        assert b.get_approval(request.approval_id).decided_by == "dora"


def test_expiry_after_escalation_denies(tmp_path: Path, clock: FakeClock) -> None:
    with Baton(make_settings(tmp_path), clock=clock, governance=governance(tmp_path, ESCALATING_GATE)) as b:
        run_id, request = gated_run(b)
        clock.advance(2 * HOUR)
        assert b.drive(run_id).status is RunStatus.WAITING
        clock.advance(2 * HOUR - 1)
        assert b.drive(run_id).status is RunStatus.WAITING
        clock.advance(1)
        assert b.drive(run_id).status is RunStatus.FAILED
        assert len(of_type(b, run_id, ev.ApprovalEscalated)) == 1
        (denied,) = of_type(b, run_id, ev.ApprovalDenied)
        assert denied.by is None
        assert failure(b, run_id).code == ApprovalDenied.code
        assert refunded == []
        assert b.get_approval(request.approval_id).status == "expired"


def test_escalation_from_the_config_applies_to_every_gate(tmp_path: Path, clock: FakeClock) -> None:
    gov = governance(tmp_path, MANAGER_GATE, escalate_to=["role:director"])
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as b:
        run_id, request = gated_run(b)
        assert request.escalate_to == ["role:director"]
        clock.advance(HOUR)
        assert b.drive(run_id).status is RunStatus.WAITING
        assert [a.approval_id for a in b.approvals("dora")] == [request.approval_id]


# -- changed arguments ------------------------------------------------------------------


def amount_run(b: Baton, tmp_path: Path, amount: float) -> tuple[str, Path]:
    amount_file = tmp_path / "amount.txt"
    amount_file.write_text(str(amount))
    run_id = b.start(refund_from_file, {"order_id": "98765", "amount_file": str(amount_file)}, principal="alice")
    return run_id, amount_file


def test_changed_arguments_withdraw_a_pending_request_and_ask_again(b: Baton, tmp_path: Path) -> None:
    run_id, amount_file = amount_run(b, tmp_path, 150.0)
    first = pending_request(b, run_id)
    amount_file.write_text("200")
    second = pending_request(b, run_id)
    assert second.approval_id != first.approval_id
    assert second.args == {"order_id": "98765", "amount": 200.0}
    (withdrawn,) = of_type(b, run_id, ev.ApprovalWithdrawn)
    assert withdrawn.approval_id == first.approval_id
    assert b.get_approval(first.approval_id).status == "withdrawn"
    with pytest.raises(ApprovalError, match="already withdrawn"):
        b.decide(first.approval_id, principal="bob", approve=True, reason="the old one")

    b.decide(second.approval_id, principal="bob", approve=True, reason="the new one")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    assert refunded == [("98765", 200.0)]


def test_an_approval_for_the_old_arguments_is_never_used_for_new_ones(b: Baton, tmp_path: Path) -> None:
    run_id, amount_file = amount_run(b, tmp_path, 150.0)
    old = pending_request(b, run_id)
    b.decide(old.approval_id, principal="bob", approve=True, reason="150 is fine")
    amount_file.write_text("900")
    new = pending_request(b, run_id)  # asks again instead of refunding 900 on the old approval
    assert refunded == []
    assert new.approval_id != old.approval_id and new.args["amount"] == 900.0
    withdrawn = b.get_approval(old.approval_id)
    assert withdrawn.status == "withdrawn" and withdrawn.consumed_at is None
    assert not of_type(b, run_id, ev.ApprovalConsumed)

    b.decide(new.approval_id, principal="bob", approve=True, reason="900 checked too")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    assert refunded == [("98765", 900.0)]
    assert [c.approval_id for c in of_type(b, run_id, ev.ApprovalConsumed)] == [new.approval_id]
    (started,) = of_type(b, run_id, ev.StepStarted)
    assert started.args["amount"] == 900.0


def test_changed_arguments_that_need_no_approval_run_directly(b: Baton, tmp_path: Path) -> None:
    run_id, amount_file = amount_run(b, tmp_path, 150.0)
    old = pending_request(b, run_id)
    b.decide(old.approval_id, principal="bob", approve=True, reason="150 is fine")
    amount_file.write_text("60")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    assert refunded == [("98765", 60.0)]
    assert len(of_type(b, run_id, ev.ApprovalRequested)) == 1
    assert not of_type(b, run_id, ev.ApprovalConsumed)
    assert b.get_approval(old.approval_id).status == "withdrawn"


def test_changed_arguments_that_policy_forbids_fail_the_step(b: Baton, tmp_path: Path) -> None:
    run_id, amount_file = amount_run(b, tmp_path, 150.0)
    old = pending_request(b, run_id)
    b.decide(old.approval_id, principal="bob", approve=True, reason="150 is fine")
    amount_file.write_text("5000")
    assert b.drive(run_id).status is RunStatus.FAILED
    assert refunded == []
    assert failure(b, run_id).code == PolicyDenied.code
    assert "no-refund-over-1000" in failure(b, run_id).message
    assert b.get_approval(old.approval_id).status == "withdrawn"


def test_changed_arguments_after_a_denial_neither_wedge_the_run_nor_repeat_the_call(
        b: Baton, tmp_path: Path) -> None:
    run_id, amount_file = amount_run(b, tmp_path, 150.0)
    request = pending_request(b, run_id)
    b.decide(request.approval_id, principal="bob", approve=False, reason="not this amount")
    amount_file.write_text("60")
    first = b.drive(run_id)
    second = b.drive(run_id)
    # Whatever the outcome (the new call allowed, or the denial standing), every call made is
    # recorded, and a second drive does not make it again.
    recorded = len(of_type(b, run_id, ev.StepRan))
    assert len(refunded) == recorded <= 1
    assert first.status.terminal and second.status is first.status


# -- ctx.approval -----------------------------------------------------------------------


def test_ctx_approval_waits_and_returns_the_approval(b: Baton) -> None:
    run_id = b.start(goodwill, {"order_id": "98765"}, principal="alice")
    request = pending_request(b, run_id)
    assert request.title == "goodwill credit on order 98765"
    assert request.tool is None and request.approvers == ["role:manager"]
    assert request.evidence == {"order_id": "98765", "complaints": 3}
    assert request.requester == "alice"
    (asked,) = of_type(b, run_id, ev.ApprovalRequested)
    assert asked.evidence == {"order_id": "98765", "complaints": 3}
    assert credited == []
    with pytest.raises(ApprovalError, match="alice asked for approval"):
        b.decide(request.approval_id, principal="alice", approve=True, reason="I think so")

    b.decide(request.approval_id, principal="bob", approve=True, reason="long-standing customer")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    (done,) = of_type(b, run_id, ev.RunCompleted)
    assert done.result == {"approved": True, "by": "bob", "reason": "long-standing customer",
                           "credit": "credit-98765"}
    assert credited == ["98765"]
    assert [c.approval_id for c in of_type(b, run_id, ev.ApprovalConsumed)] == [request.approval_id]
    assert b.get_approval(request.approval_id).consumed_at is not None


def test_ctx_approval_returns_a_denial_instead_of_raising(b: Baton) -> None:
    run_id = b.start(goodwill, {"order_id": "98765"}, principal="alice")
    request = pending_request(b, run_id)
    b.decide(request.approval_id, principal="bob", approve=False, reason="third credit this year")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    (done,) = of_type(b, run_id, ev.RunCompleted)
    assert done.result == {"approved": False, "by": "bob", "reason": "third credit this year", "credit": None}
    assert credited == []


def test_ctx_approval_that_expires_is_a_denial_by_nobody(b: Baton, clock: FakeClock) -> None:
    run_id = b.start(goodwill, {"order_id": "98765"}, principal="alice")
    pending_request(b, run_id)
    clock.advance(HOUR)
    assert b.drive(run_id).status is RunStatus.COMPLETED
    (done,) = of_type(b, run_id, ev.RunCompleted)
    assert isinstance(done.result, dict)
    assert done.result["approved"] is False and done.result["by"] is None
    assert credited == []


def test_ctx_approval_with_its_own_expiry_escalates(b: Baton, clock: FakeClock) -> None:
    run_id = b.start(urgent_goodwill, {"order_id": "98765"}, principal="alice")
    request = pending_request(b, run_id)
    assert request.expires_at == clock.time() + 60  # not the config's hour
    assert request.escalate_to == ["role:director"]
    clock.advance(60)
    assert b.drive(run_id).status is RunStatus.WAITING
    assert [a.approval_id for a in b.approvals("dora")] == [request.approval_id]
    assert b.approvals("bob") == []
    b.decide(request.approval_id, principal="dora", approve=True, reason="urgent and fair")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    (done,) = of_type(b, run_id, ev.RunCompleted)
    assert done.result == {"approved": True, "by": "dora"}


def test_ctx_approval_without_principals_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    with Baton(make_settings(tmp_path), clock=clock, governance=Governance()) as b:
        run_id = b.start(goodwill, {"order_id": "98765"})
        record = b.drive(run_id)
        assert not of_type(b, run_id, ev.ApprovalRequested)
        assert record.status in (RunStatus.FAILED, RunStatus.NEEDS_ATTENTION)
        assert "principals" in (record.outcome or "")


# -- notifiers --------------------------------------------------------------------------


class Hook:
    """A local HTTP receiver that answers 503 to the first POST and 200 after that."""

    def __init__(self) -> None:
        self.received: list[tuple[int, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 503 if not hook.received else 200
                hook.received.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/baton"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


def test_the_webhook_is_retried_until_delivered(tmp_path: Path, clock: FakeClock, hook: Hook) -> None:
    gov = governance(tmp_path, webhook=hook.url, webhook_retries=2)
    notifier = gov.notifier
    assert isinstance(notifier, WebhookNotifier) and notifier.url == hook.url and notifier.retries == 2
    notifier.backoff = 0.05  # keep the retry quick
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as b:
        run_id, request = gated_run(b)
        notifier.wait(timeout=10)
    assert [status for status, _ in hook.received] == [503, 200]
    delivered = [body for status, body in hook.received if status == 200]
    assert len(delivered) == 1
    body = delivered[0]
    assert body["event"] == "approval_requested" and body["run_id"] == run_id
    assert body["approval_id"] == request.approval_id
    assert body["approvers"] == ["role:manager"] and body["args"]["amount"] == 150.0
    assert hook.received[0][1] == body  # the retry sends the same notice


def test_a_failing_notifier_does_not_break_the_run(b: Baton, gov: Governance) -> None:
    told: list[str] = []

    class Broken:
        def notify(self, run_id: str, request: ev.ApprovalRequested) -> None:
            told.append(request.approval_id)
            raise RuntimeError("the chat service is down")

    gov.notifier = Broken()
    run_id, request = gated_run(b)
    assert told == [request.approval_id]
    assert [a.approval_id for a in b.approvals("bob")] == [request.approval_id]
    b.decide(request.approval_id, principal="bob", approve=True, reason="seen in the list")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    assert refunded == [("98765", 150.0)]


class Flaky:
    """A notifier that fails while ``down`` is set, and records what it was told."""

    def __init__(self) -> None:
        self.down = True
        self.told: list[tuple[str, list[str]]] = []

    def notify(self, run_id: str, request: ev.ApprovalRequested) -> bool:
        self.told.append((request.approval_id, request.approvers))
        return not self.down


def test_an_undelivered_notification_is_sent_again_by_a_worker(b: Baton, gov: Governance,
                                                               clock: FakeClock) -> None:
    flaky = Flaky()
    gov.notifier = flaky
    _, request = gated_run(b)
    worker = b.worker()
    assert worker.redeliver() == 0  # the first notification's own retries get a grace period
    clock.advance(121)
    flaky.down = False
    assert worker.redeliver() == 1
    assert b.store.unnotified(clock.time()) == []  # delivered once: not sent again
    assert worker.redeliver() == 0
    assert [approval_id for approval_id, _ in flaky.told] == [request.approval_id] * 2


def test_a_request_made_by_a_process_that_died_before_notifying_is_notified(
        tmp_path: Path, clock: FakeClock) -> None:
    """The request is committed; the process dies before its notifier runs (here: it had
    none). Any worker with a notifier sends it."""
    with Baton(make_settings(tmp_path), clock=clock, governance=governance(tmp_path)) as first:
        _, request = gated_run(first)
    flaky = Flaky()
    flaky.down = False
    gov = governance(tmp_path)
    gov.notifier = flaky
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as second:
        clock.advance(121)
        assert second.worker().redeliver() == 1
    assert flaky.told == [(request.approval_id, ["role:manager"])]


def test_an_escalated_request_is_notified_to_its_new_approvers(tmp_path: Path, clock: FakeClock) -> None:
    flaky = Flaky()
    flaky.down = False
    gov = governance(tmp_path, ESCALATING_GATE)
    gov.notifier = flaky
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as b:
        run_id, request = gated_run(b)
        clock.advance(2 * HOUR + 1)
        assert b.drive(run_id).waiting_for == "approval"
        assert flaky.told == [(request.approval_id, ["role:manager"]), (request.approval_id, ["role:director"])]
        assert b.store.unnotified(clock.time() + 1) == []


# -- the command line -------------------------------------------------------------------


def test_approvals_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "refunds.cedar").write_text(POLICY.replace("GATE", MANAGER_GATE))
    toml = ["[policies]", 'files = ["policies/refunds.cedar"]', "", "[approvals]", 'expires_after = "1h"']
    for pid, spec in PRINCIPALS.items():
        toml += ["", f"[principals.{pid}]", f'tenant = "{spec["tenant"]}"', f"roles = {json.dumps(spec['roles'])}"]
    config_file = tmp_path / "baton.toml"
    config_file.write_text("\n".join(toml) + "\n")
    settings = make_settings(tmp_path)
    env = {"BATON_DATABASE_URL": settings.database_url, "BATON_CONFIG": str(config_file)}
    runner = CliRunner()
    # Wide consoles, whatever the terminal the tests run in: ids must not be folded.
    monkeypatch.setattr(cli_module, "out", Console(width=200))
    monkeypatch.setattr(cli_module, "err", Console(stderr=True, width=200))

    # The real clock: the command line decides with the time of day.
    with Baton(settings, governance=Governance.load(config_file)) as b:
        run_id, request = gated_run(b)
        aid = request.approval_id

        listed = runner.invoke(app, ["approvals", "list", "--as", "bob"], env=env)
        assert listed.exit_code == 0, listed.output
        assert aid in listed.output and "a manager" in listed.output
        as_json = runner.invoke(app, ["approvals", "list", "--as", "bob", "--json"], env=env)
        assert [a["approval_id"] for a in json.loads(as_json.stdout)] == [aid]
        for other in ("carol", "eve", "alice"):
            nothing = runner.invoke(app, ["approvals", "list", "--as", other], env=env)
            assert nothing.exit_code == 0 and aid not in nothing.output
            assert f"no pending approval requests that {other} may decide" in nothing.output

        shown = runner.invoke(app, ["approvals", "show", aid], env=env)
        assert shown.exit_code == 0, shown.output
        for text in (f"approval {aid}", "pending", "issue_refund", "refunds-over-100-need-a-manager",
                     "alice (tenant acme)", "may decide: a manager", run_id):
            assert text in shown.stdout, shown.stdout
        by_prefix = runner.invoke(app, ["approvals", "show", aid[:6], "--json"], env=env)
        assert by_prefix.exit_code == 0 and json.loads(by_prefix.stdout)["approval_id"] == aid
        hidden = runner.invoke(app, ["approvals", "show", aid, "--as", "eve"], env=env)
        assert hidden.exit_code == 1 and isinstance(hidden.exception, ApprovalError)

        # Runs too are seen per tenant: eve (tenant other) neither lists nor finds alice's.
        mine = runner.invoke(app, ["runs", "list", "--as", "bob", "--json"], env=env)
        assert [r["run_id"] for r in json.loads(mine.stdout)] == [run_id]
        theirs = runner.invoke(app, ["runs", "list", "--as", "eve", "--json"], env=env)
        assert json.loads(theirs.stdout) == []
        for ref in (run_id, run_id[:8]):
            unseen = runner.invoke(app, ["runs", "show", ref, "--as", "eve"], env=env)
            assert unseen.exit_code == 1 and isinstance(unseen.exception, RunNotFound), unseen.output
        seen = runner.invoke(app, ["runs", "show", run_id[:8], "--as", "bob"], env=env)
        assert seen.exit_code == 0 and run_id in seen.output

        refused = runner.invoke(app, ["approve", aid, "--as", "alice", "--reason", "x"], env=env)
        assert refused.exit_code == 1
        assert isinstance(refused.exception, ApprovalError)
        assert "alice asked for approval" in refused.exception.message

        # The installed entry point turns the same refusal into one line on stderr.
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr("sys.argv", ["baton", "approve", aid, "--as", "alice", "--reason", "x"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 1
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("error: alice asked for approval") and "Traceback" not in captured.err
        assert b.get_approval(aid).status == "pending"

        approved = runner.invoke(app, ["approve", aid, "--as", "bob", "--reason", "ok"], env=env)
        assert approved.exit_code == 0, approved.output
        assert f"approval {aid} approved by bob" in approved.stdout
        indexed = b.get_approval(aid)
        assert (indexed.status, indexed.decided_by, indexed.reason) == ("approved", "bob", "ok")
        assert refunded == []
        assert b.drive(run_id).status is RunStatus.COMPLETED
        assert refunded == [("98765", 150.0)]

        again = runner.invoke(app, ["approvals", "show", aid, "--json"], env=env)
        data = json.loads(again.stdout)
        assert data["status"] == "approved" and data["consumed_at"] is not None


@workflow
def refund_with_evidence(ctx: Context, order_id: str, amount: float) -> str:
    with ctx.evidence({"payment": "cleared", "complaint": "severity high"}):
        first: str = ctx.call(issue_refund, order_id=order_id, amount=amount)
    ctx.call(issue_refund, order_id=order_id + "-b", amount=amount)  # outside: no evidence
    return first


def test_evidence_attached_by_the_workflow_goes_with_the_request(b: Baton) -> None:
    run_id = b.start(refund_with_evidence, {"order_id": "1", "amount": 150.0}, principal="alice")
    first = pending_request(b, run_id)
    assert first.evidence == {"payment": "cleared", "complaint": "severity high"}
    assert b.get_approval(first.approval_id, "bob").evidence == first.evidence
    b.decide(first.approval_id, principal="bob", approve=True, reason="evidence checked")
    second = pending_request(b, run_id)
    assert second.approval_id != first.approval_id and second.evidence is None


# -- a grant is checked again before it is used ---------------------------------------------

DAILY_LIMIT = """
@id("daily-refund-limit")
forbid(principal, action == Action::"issue_refund", resource)
when { context.history.day.after.greaterThan(decimal("500.0")) };
"""


def test_policy_is_asked_again_when_an_approved_step_runs(tmp_path: Path, clock: FakeClock) -> None:
    """Three refunds of 400 each held for a manager and all approved: when each runs, the
    daily limit sees the ones already made, so only the first goes through."""
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "refunds.cedar").write_text(POLICY.replace("GATE", MANAGER_GATE) + DAILY_LIMIT)
    gov = Governance.from_dict({"principals": PRINCIPALS, "policies": {"files": ["policies/refunds.cedar"]}},
                               base=tmp_path, source="baton.toml")
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as b:
        runs = [gated_run(b, 400.0, order_id=str(i)) for i in range(3)]
        for _, request in runs:
            b.decide(request.approval_id, principal="bob", approve=True, reason="ok")
        statuses = [b.drive(run_id).status for run_id, _ in runs]
        assert statuses == [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.FAILED]
        assert refunded == [("0", 400.0)]
        _, request = runs[1]
        assert "daily-refund-limit" in failure(b, runs[1][0]).message
        assert b.get_approval(request.approval_id).status == "withdrawn"
        assert b.get_approval(request.approval_id).consumed_at is None


def test_a_grant_from_someone_this_runtime_does_not_trust_is_not_used(tmp_path: Path, clock: FakeClock) -> None:
    """Mallory is a manager in a baton.toml of her own; the worker's directory says she is
    not. Her grant is withdrawn and the step asks again, of approvers the worker trusts."""
    own = governance(tmp_path)
    forged = Governance.from_dict(
        {"principals": {**PRINCIPALS, "mallory": {"tenant": "acme", "roles": ["manager"]}},
         "policies": {"files": ["policies/refunds.cedar"]}}, base=tmp_path, source="mine.toml")
    with Baton(make_settings(tmp_path), clock=clock, governance=own) as b, \
            Baton(make_settings(tmp_path), clock=clock, governance=forged) as intruder:
        run_id, request = gated_run(b)
        intruder.decide(request.approval_id, principal="mallory", approve=True, reason="trust me")
        again = pending_request(b, run_id)
        assert again.approval_id != request.approval_id
        assert refunded == []
        (withdrawn,) = of_type(b, run_id, ev.ApprovalWithdrawn)
        assert "mallory" in withdrawn.reason and "not a known principal" in withdrawn.reason
        b.decide(again.approval_id, principal="bob", approve=True, reason="checked")
        assert b.drive(run_id).status is RunStatus.COMPLETED
        assert refunded == [("98765", 150.0)]


def test_a_decision_is_checked_against_an_escalation_it_raced(tmp_path: Path, clock: FakeClock) -> None:
    """The manager looked while the request was theirs to decide; by the time the decision is
    appended, the request has been escalated to a director. The decision is refused."""
    with Baton(make_settings(tmp_path), clock=clock, governance=governance(tmp_path, ESCALATING_GATE)) as b:
        run_id, request = gated_run(b)
        record = b.get_approval(request.approval_id, "bob")  # what bob's process saw
        clock.advance(2 * HOUR + 1)
        assert b.drive(run_id).waiting_for == "approval"  # escalated meanwhile
        with pytest.raises(ApprovalError, match="may not approve"):
            _append(b, record, b.governance.directory.require("bob"), "approve",
                    ev.ApprovalGranted(step_id=record.step_id, approval_id=record.approval_id, by="bob",
                                       reason="ok"))
        assert not of_type(b, run_id, ev.ApprovalGranted)


def test_ids_with_accents_and_quotes_are_decided_like_any_other(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "refunds.cedar").write_text(
        'permit(principal == User::"josé", action, resource == Order::"Ünïcode \\"1\\"");')
    gov = Governance.from_dict({"principals": {"josé": {"tenant": "acme", "roles": ["support"]}},
                                "policies": {"files": ["policies/refunds.cedar"]}},
                               base=tmp_path, source="baton.toml")
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as b:
        run_id = b.start(refund, {"order_id": 'Ünïcode "1"', "amount": 10.0}, principal="josé")
        assert b.drive(run_id).status is RunStatus.COMPLETED
        (decided,) = of_type(b, run_id, ev.PolicyDecided)
        assert decided.effect == "allow" and not decided.errors


def test_an_expired_request_fails_the_step_in_one_append(b: Baton, clock: FakeClock) -> None:
    run_id, _ = gated_run(b)
    clock.advance(HOUR + 1)
    batches: list[list[str]] = []
    b.drive(run_id, listener=lambda _, events: batches.append([e.type_name for e in events]))
    assert ["ApprovalDenied", "StepFailed"] in batches


def test_cancelling_withdraws_the_request_before_compensating(b: Baton) -> None:
    run_id, request = gated_run(b)
    b.cancel(run_id)
    batches: list[list[str]] = []
    assert b.drive(run_id, listener=lambda _, events: batches.append([e.type_name for e in events])).status \
        is RunStatus.CANCELLED
    assert batches == [["ApprovalWithdrawn"], ["RunCancelled"]]  # withdrawn first, on its own
    assert b.get_approval(request.approval_id).status == "withdrawn"
    with pytest.raises(ApprovalError):
        b.decide(request.approval_id, principal="bob", approve=True, reason="too late")


def test_an_id_prefix_never_reveals_another_tenants_request(b: Baton) -> None:
    _, request = gated_run(b)
    with pytest.raises(ApprovalError, match="no approval request"):
        b.get_approval(request.approval_id[:3], "eve")
    assert b.get_approval(request.approval_id[:6], "bob").approval_id == request.approval_id


@tool(name="issue_refund", idempotent=True, resource="Order::{order_id}", cost=lambda amount: amount)
def issue_refund_to(order_id: str, amount: float, account: Annotated[str, Sensitive]) -> str:
    refunded.append((account, amount))
    return f"txn-{order_id}"


@workflow
def refund_to_account(ctx: Context, order_id: str, amount: float, account: Annotated[str, Sensitive],
                      email: str) -> str:
    with ctx.evidence({"customer": email, "order": order_id}):
        return ctx.call(issue_refund_to, order_id=order_id, amount=amount, account=account)


def test_an_approval_shows_sensitive_arguments_masked_and_binds_them_all_the_same(
        tmp_path: Path, clock: FakeClock, hook: Hook) -> None:
    """The request, its notification and the approvals index hold the account number and the
    customer's e-mail sealed; the approver sees masks; the grant still binds the exact
    arguments, and the tool gets the real ones."""
    gov = governance(tmp_path, webhook=hook.url)
    assert isinstance(gov.notifier, WebhookNotifier)
    gov.notifier.backoff = 0.05
    with Baton(make_settings(tmp_path), clock=clock, governance=gov) as b:
        run_id = b.start(refund_to_account, {"order_id": "98765", "amount": 150.0, "account": "DE89-3704-0044",
                                             "email": "dan@example.com"}, principal="alice")
        request = pending_request(b, run_id)
        gov.notifier.wait(timeout=10)
        shown = request.to_json()
        assert shown["args"] == {"order_id": "98765", "amount": 150.0, "account": "\u2039sensitive\u203a"}
        assert shown["evidence"] == {"customer": "\u2039email\u203a", "order": "98765"}
        delivered = [body for status, body in hook.received if status == 200]
        assert delivered and delivered[0]["args"] == shown["args"] and delivered[0]["evidence"] == shown["evidence"]
        b.decide(request.approval_id, principal="bob", approve=True, reason="checked the account")
        assert b.drive(run_id).status is RunStatus.COMPLETED
    assert refunded == [("DE89-3704-0044", 150.0)]
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("b.db*") if not p.name.endswith("master-key"))
    assert b"DE89-3704-0044" not in stored and b"dan@example.com" not in stored


@workflow
def goodwill_for(ctx: Context, email: str) -> bool:
    return bool(ctx.approval(f"goodwill credit for {email}", approvers="role:manager"))


def test_an_approval_title_with_a_sensitive_value_is_stored_masked_and_replays(b: Baton) -> None:
    """The title is the approval step's name on replay; it is stored redacted, and the run
    must still recognise its own step when it resumes."""
    run_id = b.start(goodwill_for, {"email": "erin@example.com"}, principal="alice")
    request = pending_request(b, run_id)
    assert request.title == "goodwill credit for \u2039email\u203a"
    b.decide(request.approval_id, principal="bob", approve=True, reason="loyal customer erin@example.com")
    assert b.drive(run_id).status is RunStatus.COMPLETED
    assert b.result(run_id) is True
    (granted,) = of_type(b, run_id, ev.ApprovalGranted)
    assert granted.reason == "loyal customer \u2039email\u203a"
