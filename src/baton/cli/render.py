"""Turning journal events into lines a person can read: the live progress of
``baton run`` and the timeline of ``baton runs show``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..approvals import ApprovalRecord
from ..approvals.decisions import describe_approvers
from ..engine.owner import describe_owner
from ..journal import decode
from ..journal import events as ev
from ..sensitive import masked
from ..store import RunRecord

if TYPE_CHECKING:
    from ..runtime import Baton

STATUS_STYLE = {
    "pending": "cyan", "running": "cyan", "sleeping": "blue", "waiting": "blue",
    "needs_attention": "bold yellow", "completed": "green", "failed": "bold red",
    "cancelled": "magenta",
}


_VERBS = {"allow": "allow it", "deny": "deny it", "approval": "hold it for approval"}


def short(value: Any, limit: int = 80) -> str:
    """A value in one line, sensitive values masked."""
    text = json.dumps(masked(value), ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_text(name: str, args: dict[str, Any]) -> str:
    inner = ", ".join(f"{k}={short(v, 40)}" for k, v in args.items())
    return f"{name}({inner})"


def clock_time(stamp: str) -> str:
    """``2026-11-26T11:44:14.123456Z`` → ``11:44:14.123``."""
    return stamp[11:23] if len(stamp) >= 23 else stamp


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _one_line(text: Any, limit: int) -> str:
    flat = " ".join(str(masked(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def model_line(sid: int, name: str, args: dict[str, Any], result: Any) -> str | None:
    """An agent's model step in a line: what it proposed or answered, and what it cost;
    ``None`` if the step is not one."""
    if name not in ("model", "model.plan", "model.summary", "llm") or not isinstance(result, dict) \
            or not isinstance(result.get("message"), dict):
        return None
    parts = [p for p in result["message"].get("content", []) if isinstance(p, dict)]
    text = _one_line(" ".join(str(masked(p.get("text", ""))) for p in parts if p.get("type") == "text"), 160)
    usage: dict[str, Any] = result["usage"] if isinstance(result.get("usage"), dict) else {}
    tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
    if name == "model.plan":
        return f"[cyan]✎ step {sid}[/] plan: {escape(text)} [dim]({tokens} tokens)[/]"
    if name == "model.summary":
        return f"[cyan]≡ step {sid}[/] older turns summarised: {escape(text)} [dim]({tokens} tokens)[/]"
    calls = [call_text(str(p.get("name")), p["args"] if isinstance(p.get("args"), dict) else {"args": p.get("args")})
             for p in parts if p.get("type") == "tool_call"]
    said = f"proposes {', '.join(calls)}" if calls else f'answers: "{text}"'
    context: dict[str, Any] = args["context"] if isinstance(args.get("context"), dict) else {}
    seen = f"context {context.get('tokens')}/{context.get('budget')} tokens" if context else ""
    if context.get("turns_summarised"):
        seen += f", turns 1-{context['turns_summarised']} summarised"
    for dropped in context.get("dropped") or []:
        seen += f", cut {dropped}"
    who = "llm" if name == "llm" else f"model, turn {args.get('turn')}"
    return (f"[cyan]◆ step {sid}[/] {who}: {escape(said)} "
            f"[dim]({tokens} tokens; {escape(seen)})[/]")


class TimelineRenderer:
    """Feeds on events in order; remembers step names so outcomes can name their step."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.args: dict[int, dict[str, Any]] = {}
        self.granted: dict[int, str] = {}

    def line(self, event: ev.Event) -> str | None:
        """A Rich-markup line for ``event``, or ``None`` for events folded into others."""
        match event:
            case ev.RunStarted():
                who = f" for [bold]{escape(event.principal)}[/]" if event.principal else ""
                return f"[bold]▶ started[/] {escape(call_text(event.workflow, event.input))}{who}"
            case ev.StepStarted(step_id=sid):
                self.names[sid], self.args[sid] = event.name, event.args
                if event.idempotent:
                    return None
                return (f"[dim]… step {sid}[/] {escape(call_text(event.name, event.args))} "
                        f"[dim]intent recorded (attempt {event.attempt})[/]")
            case ev.StepRan(step_id=sid):
                self.names[sid], self.args[sid] = event.name, event.args
                agent_line = model_line(sid, event.name, event.args, event.result)
                if agent_line is not None:
                    return agent_line
                return (f"[green]✓ step {sid}[/] {escape(call_text(event.name, event.args))}"
                        f" → {escape(short(event.result))}")
            case ev.StepCompleted(step_id=sid):
                name = self.names.get(sid, "?")
                return (f"[green]✓ step {sid}[/] {escape(call_text(name, self.args.get(sid, {})))}"
                        f" → {escape(short(event.result))}")
            case ev.StepFailed(step_id=sid):
                name = self.names.get(sid, "?")
                tail = (f"retrying in {event.retry_in:.2f}s" if event.retry_in is not None
                        else "giving up")
                return (f"[red]✗ step {sid}[/] {escape(name)} attempt {event.attempt} failed: "
                        f"{escape(event.error.type)}: {escape(event.error.message)} [dim]({tail})[/]")
            case ev.StepReconciled(step_id=sid):
                verdict = "had taken effect" if event.applied else "had not taken effect"
                return f"[yellow]? step {sid}[/] reconciled: the interrupted call {verdict}"
            case ev.StepResolved(step_id=sid):
                verdict = "took effect" if event.applied else "did not take effect"
                return f"[yellow]? step {sid}[/] resolved by {escape(event.by)}: {verdict}"
            case ev.ValueRecorded(step_id=sid):
                return f"[dim]· step {sid} {event.kind} = {escape(short(event.value))}[/]"
            case ev.TimerSet(step_id=sid):
                fire = datetime.fromtimestamp(event.fire_at, UTC).strftime("%H:%M:%S")
                return f"[blue]◷ step {sid}[/] sleeping until {fire} UTC"
            case ev.TimerFired(step_id=sid):
                return f"[blue]◷ step {sid}[/] timer fired"
            case ev.SignalAwaited(step_id=sid):
                return f"[blue]◷ step {sid}[/] waiting for signal {escape(repr(event.name))}"
            case ev.SignalReceived(step_id=sid):
                return f"[blue]✉ step {sid}[/] signal {escape(repr(event.name))}: {escape(short(event.data))}"
            case ev.RunRecovered():
                return (f"[bold yellow]⟳ taken over[/] by {escape(describe_owner(event.worker))}: "
                        f"{escape(event.reason)}")
            case ev.NeedsAttention():
                return f"[bold yellow]! needs attention[/]: {escape(event.reason)}"
            case ev.Compensated(step_id=sid):
                ok = "undone" if event.ok else f"undo failed: {event.error.message if event.error else ''}"
                return f"[magenta]↶ step {sid}[/] {escape(event.name)} {escape(ok)}"
            case ev.PolicyDecided(step_id=sid):
                self.names[sid], self.args[sid] = event.tool, event.args
                granted = self.granted.get(sid)
                if granted is not None and event.effect == "approval":
                    return (f"[dim]⚖ step {sid} checked again before it runs: the gates "
                            f"{escape(', '.join(event.policies))} are covered by approval {granted}[/]")
                return self.policy_line(event)
            case ev.ApprovalRequested(step_id=sid):
                who = f" for [bold]{escape(event.requester)}[/]" if event.requester else ""
                evidence = f"; evidence: {escape(short(event.evidence, 160))}" if event.evidence is not None else ""
                return (f"[bold yellow]✋ step {sid}[/] approval [bold]{event.approval_id}[/] requested{who}: "
                        f"{escape(event.title)} [dim](may decide: {escape(describe_approvers(event.approvers))}; "
                        f"expires {when(event.expires_at)}{evidence})[/]")
            case ev.ApprovalGranted(step_id=sid):
                self.granted[sid] = event.approval_id
                return (f"[green]✓ step {sid}[/] approval {event.approval_id} [bold]granted by "
                        f"{escape(event.by)}[/]: {escape(event.reason)}")
            case ev.ApprovalDenied(step_id=sid):
                who = f"denied by {escape(event.by)}" if event.by else "expired"
                return f"[red]✗ step {sid}[/] approval {event.approval_id} [bold]{who}[/]: {escape(event.reason)}"
            case ev.ApprovalEscalated(step_id=sid):
                return (f"[yellow]↑ step {sid}[/] approval {event.approval_id} expired undecided; escalated to "
                        f"{escape(describe_approvers(event.approvers))} until {when(event.expires_at)}")
            case ev.ApprovalWithdrawn(step_id=sid):
                return f"[yellow]↺ step {sid}[/] approval {event.approval_id} withdrawn: {escape(event.reason)}"
            case ev.ApprovalConsumed(step_id=sid):
                return f"[dim]· step {sid} runs on approval {event.approval_id}[/]"
            case ev.RunCompleted():
                return f"[bold green]■ completed[/] → {escape(short(event.result, 120))}"
            case ev.RunFailed():
                return f"[bold red]■ failed[/]: {escape(event.error.type)}: {escape(event.error.message)}"
            case ev.RunCancelled():
                return f"[magenta]■ cancelled[/]: {escape(event.reason)}"
        return f"{type(event).__name__}"

    @staticmethod
    def policy_line(event: ev.PolicyDecided) -> str:
        by = ", ".join(event.policies)
        shadow = ""
        if event.shadow_effect is not None:
            shadow = (f" [dim](shadow policies would {_VERBS[event.shadow_effect]}"
                      f"{' by ' + escape(', '.join(event.shadow_policies)) if event.shadow_policies else ''})[/]")
        call = escape(call_text(event.tool, event.args))
        role = f" as {escape(event.role)}" if event.role else ""
        if event.effect == "allow":
            return f"[dim]⚖ step {event.step_id} {call}{role} allowed{' by ' + escape(by) if by else ''}[/]{shadow}"
        if event.effect == "approval":
            return (f"[yellow]⚖ step {event.step_id}[/] {call}{role} [bold]held for approval[/] by "
                    f"{escape(by)}{shadow}")
        why = escape(by) if by else "no policy permits it"
        errors = f" [dim]({escape('; '.join(event.errors))})[/]" if event.errors else ""
        return f"[red]⛔ step {event.step_id}[/] {call}{role} [bold]denied[/]: {why}{errors}{shadow}"


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def timeline_table(rows: list[tuple[int, str, ev.Event]]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("time (UTC)", style="dim")
    table.add_column("event", overflow="fold")
    renderer = TimelineRenderer()
    for seq, at, event in rows:
        text = renderer.line(event)
        if text is not None:
            table.add_row(str(seq), clock_time(at), text)
    return table


def runs_table(records: list[RunRecord]) -> Table:
    table = Table(header_style="bold", box=None)
    for column in ("run", "workflow", "status", "events", "started (UTC)", "for"):
        table.add_column(column)
    for r in records:
        started = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r.run_id, escape(r.workflow), status_text(r.status.value), str(r.head_seq),
                      started, escape(r.principal or ""))
    return table


def run_json(record: RunRecord) -> dict[str, Any]:
    outcome: Any = record.outcome
    if record.status.value == "completed" and outcome is not None:
        outcome = masked(json.loads(outcome))
    return {
        "run_id": record.run_id, "workflow": record.workflow, "workflow_ref": record.workflow_ref,
        "status": record.status.value, "created_at": record.created_at,
        "updated_at": record.updated_at, "events": record.head_seq, "head_hash": record.head_hash,
        "principal": record.principal, "tenant": record.tenant, "wake_at": record.wake_at,
        "waiting_for": record.waiting_for, "outcome": outcome, "owner": record.owner,
        "cancel_requested": record.cancel_requested,
    }


def approvals_table(requests: list[ApprovalRecord]) -> Table:
    table = Table(header_style="bold", box=None)
    for column in ("approval", "status", "what", "asked by", "may decide", "expires (UTC)", "run"):
        table.add_column(column, overflow="fold")
    for a in requests:
        what = a.title if a.tool is None else call_text(a.tool, a.args)
        status = a.status if not a.decided_by else f"{a.status} by {a.decided_by}"
        table.add_row(a.approval_id, escape(status), escape(what), escape(a.requester or ""),
                      escape(describe_approvers(a.approvers)), when(a.expires_at)[:-4], a.run_id)
    return table


def approval_text(a: ApprovalRecord) -> str:
    lines = [
        f"[bold]approval {a.approval_id}[/]  {escape(a.status)}",
        f"  what:       {escape(a.title if a.tool is None else call_text(a.tool, a.args))}",
        f"  why:        {escape(', '.join(a.policies) or 'the workflow asked for it')}",
        f"  asked by:   {escape(a.requester or '-')} (tenant {escape(a.tenant or '-')}), "
        f"run {a.run_id} step {a.step_id}",
        f"  may decide: {escape(describe_approvers(a.approvers))}",
        f"  expires:    {when(a.expires_at)}"
        + (f"; then {escape(describe_approvers(a.escalate_to))} may decide" if a.request_escalates else ""),
    ]
    if a.evidence is not None:
        lines.append(f"  evidence:   {escape(short(a.evidence, 400))}")
    if a.decided_by or a.decided_at:
        lines.append(f"  decided:    {escape(a.status)} by {escape(a.decided_by or 'expiry')} at "
                     f"{when(a.decided_at or 0)}: {escape(a.reason or '')}")
    if a.consumed_at:
        lines.append(f"  used:       at {when(a.consumed_at)}")
    return "\n".join(lines)


class Tail:
    """Prints a run's timeline as it grows, whichever process writes it: each :meth:`show`
    prints the lines not shown yet (as stored, so sensitive values stay masked)."""

    def __init__(self, baton: Baton, run_id: str, console: Console) -> None:
        self.baton, self.run_id, self.console = baton, run_id, console
        self.seq = 0
        self.renderer = TimelineRenderer()

    def show(self, label: str = "") -> None:
        prefix = f"  [dim]{label}[/]  " if label else "  "
        for row in self.baton.store.read(self.run_id, self.seq):
            self.seq = row.seq
            text = self.renderer.line(decode(row, self.baton.store.blob))
            if text is not None:
                self.console.print(f"{prefix}{text}", highlight=False)
