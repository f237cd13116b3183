"""The replay table: a run's journal folded into what each step position already holds.

The workflow function runs again from the top on every resume; each ``ctx`` call looks
up its position here and either returns what is recorded or does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..journal import events as ev


@dataclass(slots=True)
class ApprovalState:
    """Where a step's approval request stands."""

    request: ev.ApprovalRequested
    approvers: list[str]
    expires_at: float
    status: str = "pending"
    """``pending``, ``approved`` or ``denied``."""
    by: str | None = None
    reason: str = ""
    escalated: bool = False
    consumed: bool = False


@dataclass(slots=True)
class StepRecord:
    step_id: int
    kind: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    attempts: int = 0
    failures: int = 0
    in_flight: bool = False
    """The latest attempt started and nothing says how it ended: after a crash, in doubt."""
    completed: bool = False
    result: Any = None
    error: ev.ErrorInfo | None = None
    fire_at: float | None = None
    fired: bool = False
    timeout_at: float | None = None
    retry_at: float | None = None
    """After a failed attempt: when the next one is due."""
    compensated: bool = False
    policy: ev.PolicyDecided | None = None
    approval: ApprovalState | None = None

    @property
    def done(self) -> bool:
        return self.completed or self.error is not None or self.fired


_PROGRESS = frozenset({
    ev.StepCompleted, ev.StepRan, ev.StepFailed, ev.TimerFired, ev.SignalReceived,
    ev.StepResolved, ev.ValueRecorded, ev.Compensated, ev.ApprovalGranted, ev.ApprovalDenied,
    ev.ApprovalConsumed,
})


@dataclass(slots=True)
class ReplayState:
    started: ev.RunStarted | None = None
    steps: dict[int, StepRecord] = field(default_factory=dict)
    terminal: ev.Event | None = None
    recoveries_since_progress: int = 0
    attention: str | None = None
    """The reason of the question put to a person since the run last made progress."""

    @classmethod
    def fold(cls, events: list[ev.Event]) -> ReplayState:
        state = cls()
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: ev.Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        if type(event) in _PROGRESS:
            self.recoveries_since_progress = 0
            self.attention = None
        elif type(event) is ev.NeedsAttention:
            self.attention = event.reason
        elif type(event) is ev.RunRecovered:
            self.recoveries_since_progress += 1

    def _attempt(self, event: ev.StepCall) -> StepRecord:
        """The step an attempt belongs to, updated with what the attempt says."""
        rec = self.steps.get(event.step_id)
        if rec is None:
            rec = self.steps[event.step_id] = StepRecord(event.step_id, event.kind, event.name)
        rec.args = event.args
        rec.idempotency_key = event.idempotency_key
        rec.attempts = event.attempt
        return rec

    def _started(self, event: ev.StepStarted) -> None:
        self._attempt(event).in_flight = event.attempt > 0

    def _ran(self, event: ev.StepRan) -> None:
        rec = self._attempt(event)
        rec.completed, rec.result, rec.in_flight = True, event.result, False

    def _completed(self, event: ev.StepCompleted) -> None:
        rec = self.steps[event.step_id]
        rec.completed, rec.result, rec.in_flight = True, event.result, False

    def _failed(self, event: ev.StepFailed) -> None:
        rec = self.steps[event.step_id]
        rec.in_flight = False
        rec.failures += 1
        rec.retry_at = None if event.final else event.retry_at
        if event.final:
            rec.error = event.error

    def _settled(self, event: ev.StepReconciled | ev.StepResolved) -> None:
        rec = self.steps[event.step_id]
        rec.in_flight = False
        if event.applied:
            rec.completed, rec.result = True, event.result

    def _value(self, event: ev.ValueRecorded) -> None:
        self.steps[event.step_id] = StepRecord(
            event.step_id, event.kind, event.kind, completed=True, result=event.value
        )

    def _timer_set(self, event: ev.TimerSet) -> None:
        self.steps[event.step_id] = StepRecord(event.step_id, "sleep", "sleep", fire_at=event.fire_at)

    def _awaited(self, event: ev.SignalAwaited) -> None:
        self.steps[event.step_id] = StepRecord(event.step_id, "wait", event.name, timeout_at=event.timeout_at)

    def _received(self, event: ev.SignalReceived) -> None:
        rec = self.steps.get(event.step_id)
        if rec is None:
            rec = self.steps[event.step_id] = StepRecord(event.step_id, "wait", event.name)
        rec.completed, rec.result = True, event.data

    def _fired(self, event: ev.TimerFired) -> None:
        self.steps[event.step_id].fired = True

    def _compensated(self, event: ev.Compensated) -> None:
        self.steps[event.step_id].compensated = True

    def _policy(self, event: ev.PolicyDecided) -> None:
        rec = self.steps.get(event.step_id)
        if rec is None:
            rec = self.steps[event.step_id] = StepRecord(event.step_id, "call", event.tool, args=event.args)
        rec.policy = event

    def _requested(self, event: ev.ApprovalRequested) -> None:
        rec = self.steps.get(event.step_id)
        if rec is None:
            kind, name = ("call", event.tool) if event.tool is not None else ("approval", event.title)
            rec = self.steps[event.step_id] = StepRecord(event.step_id, kind, name, args=event.args)
        rec.approval = ApprovalState(event, list(event.approvers), event.expires_at)

    def _decided(self, event: ev.ApprovalGranted | ev.ApprovalDenied) -> None:
        approval = self.steps[event.step_id].approval
        if approval is not None and approval.request.approval_id == event.approval_id:
            approval.status = "approved" if isinstance(event, ev.ApprovalGranted) else "denied"
            approval.by, approval.reason = event.by, event.reason

    def _escalated(self, event: ev.ApprovalEscalated) -> None:
        approval = self.steps[event.step_id].approval
        if approval is not None:
            approval.approvers, approval.expires_at = list(event.approvers), event.expires_at
            approval.escalated = True

    def _withdrawn(self, event: ev.ApprovalWithdrawn) -> None:
        rec = self.steps[event.step_id]
        rec.approval, rec.policy = None, None

    def _consumed(self, event: ev.ApprovalConsumed) -> None:
        approval = self.steps[event.step_id].approval
        if approval is not None:
            approval.consumed = True

    def _run_started(self, event: ev.RunStarted) -> None:
        self.started = event

    def _ended(self, event: ev.Event) -> None:
        self.terminal = event


_HANDLERS: dict[type[ev.Event], Callable[[ReplayState, Any], None]] = {
    ev.RunStarted: ReplayState._run_started,
    ev.StepStarted: ReplayState._started,
    ev.StepCompleted: ReplayState._completed,
    ev.StepRan: ReplayState._ran,
    ev.StepFailed: ReplayState._failed,
    ev.StepReconciled: ReplayState._settled,
    ev.StepResolved: ReplayState._settled,
    ev.ValueRecorded: ReplayState._value,
    ev.TimerSet: ReplayState._timer_set,
    ev.SignalAwaited: ReplayState._awaited,
    ev.SignalReceived: ReplayState._received,
    ev.TimerFired: ReplayState._fired,
    ev.Compensated: ReplayState._compensated,
    ev.PolicyDecided: ReplayState._policy,
    ev.ApprovalRequested: ReplayState._requested,
    ev.ApprovalGranted: ReplayState._decided,
    ev.ApprovalDenied: ReplayState._decided,
    ev.ApprovalEscalated: ReplayState._escalated,
    ev.ApprovalWithdrawn: ReplayState._withdrawn,
    ev.ApprovalConsumed: ReplayState._consumed,
    ev.RunCompleted: ReplayState._ended,
    ev.RunFailed: ReplayState._ended,
    ev.RunCancelled: ReplayState._ended,
}
