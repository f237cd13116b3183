"""Governance at the step: budgets, policy and approvals, between a tool call's arguments
being validated and its first attempt.

A new call is checked against the run's limits, then decided by policy. The decision is
journaled with the step (``PolicyDecided`` rides along with the step's own append, so an
allowed step costs no extra write). A denied step fails at the ``ctx.call``; a step that
needs approval records the request and suspends the run until a person decides. A granted
approval is consumed in the same append as the step's start, so a crash can neither lose
it nor use it twice; changed arguments withdraw it and ask again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..approvals import args_hash, send
from ..budgets import Limits, Usage, exceeded
from ..config import Governance
from ..errors import ApprovalDenied, BatonError, BudgetExceeded, PolicyDenied
from ..identity import Principal
from ..journal import events as ev
from ..journal.index import Usage as UsageRow
from ..policy import PolicyRequest, Verdict
from ..tools import Tool
from .replay import ApprovalState, StepRecord
from .stops import Abort, Suspend

if TYPE_CHECKING:
    from .execution import Execution

DAY = 86400.0
T = TypeVar("T")


def new_approval_id() -> str:
    return secrets.token_hex(6)


class Guard:
    """The governance of one execution."""

    def __init__(self, x: Execution, governance: Governance, limits: Limits, created_at: float) -> None:
        self.x = x
        self.governance = governance
        self.limits = limits
        self.created_at = created_at
        started = x.state.started
        self.principal_id = started.principal if started else None
        self.tenant = started.tenant if started else None
        self.principal: Principal | None = governance.directory.get(self.principal_id or "")
        self.active = governance.enforcing or bool(limits)
        """Are tool calls checked (policy in force, or limits set)?"""
        self.tracks_usage = governance.enforcing
        """Index completed calls, so policies can count a principal's calls across runs."""
        self.usage = Usage()
        self.per_tool: dict[str, tuple[int, float]] = {}
        self.costs: dict[int, float] = {}
        """The cost of each call this execution checked, by step."""
        self._counted = 0

    # -- what the run has used ---------------------------------------------------------

    def count(self) -> Usage:
        """Fold steps before the current position into the usage, once each."""
        x = self.x
        for step_id in range(self._counted + 1, x.position):
            rec = x.state.steps.get(step_id)
            tool = x.tools.get(step_id)
            if rec is None or rec.kind != "call" or tool is None or rec.attempts == 0:
                continue
            self.usage.steps += 1
            if rec.completed or rec.in_flight or rec.error is None:
                cost = self.costs.get(step_id)
                if cost is None:
                    cost = self.cost(tool, rec.args)
                self.usage.spend += cost
                if rec.completed:
                    count, total = self.per_tool.get(tool.name, (0, 0.0))
                    self.per_tool[tool.name] = (count + 1, total + cost)
                    self.usage.tokens += self.tokens(tool, rec.result)
        self._counted = max(self._counted, x.position - 1)
        return self.usage

    def cost_now(self, tool: Tool[Any, Any], values: dict[str, Any]) -> float:
        if tool.cost is None:
            return 0.0
        return self._declared("cost", tool, lambda: tool.cost_of(values))

    def cost(self, tool: Tool[Any, Any], args: dict[str, Any]) -> float:
        """The cost of a recorded call, from its recorded arguments."""
        if tool.cost is None:
            return 0.0
        return self._declared("cost", tool, lambda: tool.cost_of(tool.validate(args)[0]))

    def tokens(self, tool: Tool[Any, Any], result: Any) -> int:
        if tool.tokens is None:
            return 0
        return self._declared("tokens", tool, lambda: tool.tokens_of(tool.decode_result(result)))

    def _declared(self, what: str, tool: Tool[Any, Any], compute: Callable[[], T]) -> T:
        """Run a function the tool declared: a broken one fails the run, never passes silently."""
        try:
            return compute()
        except Exception as exc:  # noqa: BLE001 - whatever the tool's own function raised
            raise Abort(BatonError(f"{what} function of {tool.name} failed: {type(exc).__name__}: {exc}",
                                   run_id=self.x.run_id)) from None

    def usage_rows(self, batch: list[ev.Event]) -> list[UsageRow]:
        """Completed calls in an append, for the store's index of recent calls."""
        rows = []
        for event in batch:
            if isinstance(event, ev.StepRan | ev.StepCompleted) or (
                    isinstance(event, ev.StepReconciled | ev.StepResolved) and event.applied):
                tool = self.x.tools.get(event.step_id)
                rec = self.x.state.steps.get(event.step_id)
                if tool is not None and rec is not None:
                    cost = self.costs.get(event.step_id)
                    if cost is None:
                        cost = self.cost(tool, rec.args)
                    rows.append(UsageRow(event.step_id, tool.name, cost))
        return rows

    # -- a new call ---------------------------------------------------------------------

    def check_budget(self, tool: Tool[Any, Any], values: dict[str, Any]) -> None:
        cost = self.costs[self.x.position] = self.cost_now(tool, values)
        if not self.limits:
            return
        why = exceeded(self.limits, self.count(), age=self.x.clock.time() - self.created_at, cost=cost)
        if why is not None:
            raise Abort(BudgetExceeded(f"budget exceeded before step {self.x.position} ({tool.name}): {why}",
                                       run_id=self.x.run_id, step_id=self.x.position))

    def decide(self, tool: Tool[Any, Any], step_id: int, values: dict[str, Any],
               args_json: dict[str, Any]) -> tuple[Verdict, ev.PolicyDecided] | None:
        """Ask policy about the call; ``None`` when no policy is in force."""
        engine = self.governance.policies
        if engine is None or not engine.active or not tool.governed:
            return None
        engine.refresh()
        try:
            resource = tool.resource_of(values)
        except Exception as exc:  # noqa: BLE001 - the tool's declaration is wrong
            raise Abort(BatonError(f"resource of {tool.name} cannot be built from its arguments: {exc}",
                                   run_id=self.x.run_id, step_id=step_id)) from None
        if self.principal is None:
            who = self.principal_id or "nobody"
            verdict = Verdict("deny", errors=(f"the run acts for {who}, who is not a known principal",))
        else:
            usage = self.count()
            run_count, run_total = self.per_tool.get(tool.name, (0, 0.0))
            day_count, day_total = 0, 0.0
            if engine.reads_day_history:  # a query: made only if a policy in force reads it
                day_count, day_total = self.x.store.tool_usage(
                    self.tenant, self.principal_id, tool.name, self.x.clock.time() - DAY)
            cost = self.costs.get(step_id)
            if cost is None:
                cost = self.costs[step_id] = self.cost_now(tool, values)
            request = PolicyRequest(
                principal=self.principal, tool=tool.name, resource=resource, args=args_json,
                context={
                    "tool": {"name": tool.name, "role": tool.role, "idempotent": tool.idempotent, "cost": cost,
                             "read_only": tool.read_only, "destructive": tool.destructive},
                    "run": {"id": self.x.run_id, "steps": usage.steps, "spend": usage.spend},
                    # ``after``: the total with this call's cost added (Cedar cannot add decimals).
                    "history": {"run": {"count": run_count, "total": run_total, "after": run_total + cost},
                                "day": {"count": day_count, "total": day_total, "after": day_total + cost}},
                },
            )
            with self.x.telemetry.span(f"baton.policy {tool.name}", {
                    "baton.run.id": self.x.run_id, "baton.step.id": step_id, "gen_ai.tool.name": tool.name}) as span:
                verdict = engine.decide(request)
                if span is not None:
                    span.set_attributes({"baton.policy.effect": verdict.effect,
                                         "baton.policy.ids": list(verdict.policies)})
        decided = ev.PolicyDecided.trusted(  # every field is already checked: no second validation
            step_id=step_id, tool=tool.name, args=args_json, principal=self.principal_id, role=tool.role,
            action=f"Action::{tool.name}", resource=f"{resource[0]}::{resource[1]}", effect=verdict.effect,
            policies=list(verdict.policies), errors=list(verdict.errors), shadow_effect=verdict.shadow_effect,
            shadow_policies=list(verdict.shadow_policies),
        )
        return verdict, decided

    def denied(self, tool: Tool[Any, Any], step_id: int, verdict: Verdict, decided: ev.PolicyDecided,
               attempt: int = 0) -> PolicyDenied:
        """Journal a denial; the error the workflow sees."""
        why = "; ".join(verdict.errors) if verdict.errors else (
            f"denied by {', '.join(verdict.policies)}" if verdict.policies else "no policy permits it")
        message = f"policy denied {tool.name} for {self.principal_id or 'nobody'}: {why}"
        if self.x.telemetry.meter is not None:
            self.x.telemetry.denials.add(1, {"gen_ai.tool.name": tool.name})
        info = ev.ErrorInfo(type="PolicyDenied", message=message, code=PolicyDenied.code)
        self.x.append([decided, ev.StepFailed(step_id=step_id, attempt=attempt, error=info, final=True)])
        return PolicyDenied(self.x.recorded_error(step_id).message, policies=verdict.policies,
                            error_type="PolicyDenied", run_id=self.x.run_id, step_id=step_id)

    def request(self, step_id: int, *, title: str, tool: str | None, args_json: dict[str, Any],
                policies: tuple[str, ...], approvers: tuple[str, ...], expires_after: float | None,
                escalate_to: tuple[str, ...], evidence: Any = None,
                before: list[ev.Event] | None = None) -> ev.ApprovalRequested:
        settings = self.governance.approvals
        period = expires_after or settings.expires_after
        request = ev.ApprovalRequested(
            step_id=step_id, approval_id=new_approval_id(), title=title, tool=tool, args=args_json,
            args_hash=args_hash(tool, args_json, self.x.sealer), policies=list(policies),
            evidence=evidence if evidence is not None else self.x.evidence,
            requester=self.principal_id, tenant=self.tenant, approvers=list(approvers),
            expires_at=self.x.clock.time() + period, expires_after=period,
            escalate_to=list(escalate_to or settings.escalate_to),
        )
        self.x.append([*(before or []), request])
        self.notify(request)
        return request

    def notify(self, request: ev.ApprovalRequested) -> None:
        """Tell the notifier, with the request as it is stored: sensitive values sealed."""
        notifier = self.governance.notifier
        if notifier is not None:
            stored = self.x.sealer.seal(request, self.x.hints_of(request))
            assert isinstance(stored, ev.ApprovalRequested)
            send(notifier, self.x.run_id, stored, self.x.store, self.x.clock.time)

    # -- a call waiting for (or holding) an approval ------------------------------------

    def settle_expiry(self, rec: StepRecord, approval: ApprovalState) -> None:
        """A pending request: escalate or deny it if it expired; otherwise keep waiting."""
        x = self.x
        if approval.status != "pending":
            return
        request = approval.request
        if x.clock.time() < approval.expires_at:
            raise Suspend()
        if request.escalate_to and not approval.escalated:
            expires = x.clock.time() + request.expires_after
            escalated = ev.ApprovalEscalated(step_id=rec.step_id, approval_id=request.approval_id,
                                             approvers=request.escalate_to, expires_at=expires)
            x.append([escalated])
            self.notify(request.model_copy(update={"approvers": request.escalate_to, "expires_at": expires}))
            raise Suspend()
        # Buffered: written with what the step makes of it (its failure), in one append.
        x.buffer(ev.ApprovalDenied(step_id=rec.step_id, approval_id=request.approval_id, by=None,
                                   reason="the request expired before anyone decided it"))

    def record_wait(self, step_id: int, approval: ApprovalState) -> None:
        """A span for the time the step waited for its decision, recorded once, when the
        decision is first acted on (the wait itself spans processes, maybe days)."""
        telemetry, request = self.x.telemetry, approval.request
        if telemetry.tracer is None or approval.status == "pending" or approval.consumed:
            return
        telemetry.waited("baton.approval.wait", {
            "baton.run.id": self.x.run_id, "baton.step.id": step_id, "baton.approval.id": request.approval_id,
            "baton.approval.status": approval.status, "baton.approval.decided_by": approval.by or "expiry",
        }, since=request.expires_at - request.expires_after)

    def untrusted_grant(self, approval: ApprovalState) -> str | None:
        """Why a grant may not be used under this runtime's principals, or ``None``: the
        decider must exist here, be in the run's tenant, not be the requester, and be one
        of the approvers the request named when it was decided."""
        who = self.governance.directory.get(approval.by or "")
        request = approval.request
        if who is None:
            problem = "is not a known principal"
        elif who.tenant != request.tenant:
            problem = f"belongs to tenant {who.tenant!r}, not the run's"
        elif who.id == request.requester:
            problem = "asked for it"
        elif not who.may_act_as(approval.approvers):
            problem = "is not one of its approvers"
        else:
            return None
        return f"approved by {approval.by}, who {problem} under this runtime's principals; not used"

    def approval_denied(self, tool_name: str, step_id: int, approval: ApprovalState) -> ApprovalDenied:
        who = f"by {approval.by}" if approval.by else "(the request expired)"
        message = f"approval for {tool_name} was denied {who}: {approval.reason}"
        info = ev.ErrorInfo(type="ApprovalDenied", message=message, code=ApprovalDenied.code)
        self.x.append([ev.StepFailed(step_id=step_id, attempt=0, error=info, final=True)])
        return ApprovalDenied(self.x.recorded_error(step_id).message, policies=tuple(approval.request.policies),
                              error_type="ApprovalDenied", run_id=self.x.run_id, step_id=step_id)
