"""Deciding an approval request: the checks, then an append to the run's journal.

A decision is refused, with a message that says why, when the request is not in the
decider's tenant (it is reported as not existing), is no longer pending, was asked for by
the decider, names approvers the decider is not one of, or has expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..engine.execution import Execution
from ..engine.stops import Fenced, StoreFailed
from ..errors import ApprovalError, UsageError
from ..identity import Principal
from ..journal import decode
from ..journal import events as ev
from .requests import ApprovalRecord

if TYPE_CHECKING:
    from ..runtime import Baton


def describe_approvers(approvers: list[str]) -> str:
    """``["role:manager", "principal:carol"]`` → ``a manager or carol``; ``role:it-security``
    → ``anyone with role it-security`` (an article cannot be guessed from a role's name)."""
    names = [_role(e[5:]) if e.startswith("role:") else e.removeprefix("principal:") for e in approvers]
    return " or ".join(names) or "nobody"


def _role(name: str) -> str:
    plain = name.isalpha() and name.islower() and name[:1] not in "aeiou"
    return f"a {name}" if plain else f"anyone with role {name}"


def _when(epoch: float | None) -> str:
    return "?" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class _Standing:
    """What a decision is checked against: from the index first (for the message), then
    from the run's journal, which is what counts."""

    requester: str | None
    approvers: list[str]
    expires_at: float
    escalates: bool


def standing_of(record: ApprovalRecord) -> _Standing:
    return _Standing(record.requester, record.approvers, record.expires_at, record.request_escalates)


def refusal(who: Principal, verb: str, name: str, standing: _Standing, now: float) -> str | None:
    """Why ``who`` may not decide the request now, or ``None`` if they may: the one rule
    behind both deciding and listing what someone may decide."""
    if standing.requester == who.id:
        return f"{who.id} asked for approval {name} and cannot {verb} it: someone else must decide"
    if not who.may_act_as(standing.approvers):
        roles = ", ".join(sorted(who.roles)) or "none"
        return (f"{who.id} may not {verb} approval {name}: it needs "
                f"{describe_approvers(standing.approvers)} (roles of {who.id}: {roles})")
    if now >= standing.expires_at:
        then = "escalated" if standing.escalates else "denied"
        return (f"approval {name} expired at {_when(standing.expires_at)}; it will be {then} "
                "when the run is next picked up")
    return None


def _check(baton: Baton, who: Principal, verb: str, name: str, standing: _Standing) -> None:
    refused = refusal(who, verb, name, standing, baton.clock.time())
    if refused is not None:
        raise ApprovalError(refused)


def _append(baton: Baton, record: ApprovalRecord, who: Principal, verb: str, decision: ev.Event) -> None:
    """Append the decision at the run's head, without taking its lease: an approver that
    dies mid-way leaves nothing behind (no lease to expire, no takeover to count against
    the run). The checks are made again against the journal just read (an escalation may
    have changed who may decide); if the head moves before the append, all of it is done
    again. A worker executing the run meanwhile is fenced off by this append, as by any other."""
    name = record.approval_id
    for _ in range(50):
        run = baton.get_run(record.run_id)
        if run.status.terminal:
            raise ApprovalError(f"approval {name}: run {run.run_id} has ended ({run.status.value})")
        events = [decode(row, baton.store.blob) for row in baton.store.read(record.run_id)]
        x = Execution(store=baton.store, settings=baton.settings, clock=baton.clock, pool=baton.pool,
                      run=run, events=events)
        rec = x.state.steps.get(record.step_id)
        approval = rec.approval if rec is not None else None
        if approval is None or approval.request.approval_id != name or approval.status != "pending":
            raise ApprovalError(f"approval {name} is no longer pending")
        request = approval.request
        _check(baton, who, verb, name, _Standing(request.requester, approval.approvers, approval.expires_at,
                                                 bool(request.escalate_to) and not approval.escalated))
        if x.head_seq != len(events):
            continue  # the journal grew between the two reads
        try:
            x.append([decision])
            return
        except Fenced:
            continue  # someone appended first: look again
        except StoreFailed as failed:
            raise failed.error from None
    raise ApprovalError(f"run {record.run_id} keeps changing; try again")


def decide(baton: Baton, approval_id: str, *, principal: str, approve: bool, reason: str) -> ApprovalRecord:
    who = baton.governance.directory.require(principal)
    verb = "approve" if approve else "deny"
    reason = reason.strip()
    if not reason:
        raise UsageError(f"say why you {verb} it (--reason \"...\"): the reason is kept in the audit trail")
    record = baton.get_approval(approval_id, principal)
    name = record.approval_id
    if record.status != "pending":
        by = f" by {record.decided_by}" if record.decided_by else ""
        raise ApprovalError(f"approval {name} was already {record.status}{by} at {_when(record.decided_at)}; "
                            "a request is decided once")
    _check(baton, who, verb, name, standing_of(record))
    decision: ev.Event
    if approve:
        decision = ev.ApprovalGranted(step_id=record.step_id, approval_id=name, by=who.id, reason=reason)
    else:
        decision = ev.ApprovalDenied(step_id=record.step_id, approval_id=name, by=who.id, reason=reason)
    _append(baton, record, who, verb, decision)
    decided = baton.store.get_approval(name)
    assert decided is not None
    return decided
