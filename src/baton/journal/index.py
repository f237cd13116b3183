"""The run index: what the store keeps per run so it can find runnable work fast.

The index is derived, never authoritative: each event maps to an update (or none), and
the store applies a batch's updates in the same transaction as the append. Rebuilding
the index from the journal gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from . import events as ev
from .encoding import canonical_json


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    NEEDS_ATTENTION = "needs_attention"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


# Events that only say the run is moving: the common case, checked first.
MOVING = frozenset({
    ev.StepStarted, ev.StepCompleted, ev.StepRan, ev.StepReconciled, ev.StepResolved,
    ev.ValueRecorded, ev.TimerFired, ev.Compensated, ev.PolicyDecided,
})
# A takeover changes nothing about what the run is doing: a sleeping run stays asleep.
STILL = frozenset({ev.RunRecovered})


@dataclass(frozen=True, slots=True)
class Usage:
    step_id: int
    tool: str
    cost: float


@dataclass(slots=True)
class IndexUpdate:
    """Changes to a run's index row. ``None`` fields are left as they are, except where a
    new status clears them (a run that starts running is no longer waiting for anything)."""

    status: RunStatus | None = None
    wake_at: float | None = None
    waiting_for: str | None = None
    outcome: str | None = None
    consumed_signals: list[int] = field(default_factory=list)
    approvals: list[ev.Event] = field(default_factory=list)
    """Approval events, which the store applies to its index of approval requests."""
    usage: list[Usage] = field(default_factory=list)
    """Completed tool calls, for policies that count a principal's recent calls."""
    blobs: dict[str, str] = field(default_factory=dict)
    """Large values the appended rows refer to by hash, stored once."""

    def merge(self, event: ev.Event) -> None:
        if type(event) in MOVING:
            if self.status is not RunStatus.RUNNING:
                self._set(RunStatus.RUNNING)
            return
        if type(event) in STILL:
            return
        match event:
            case ev.RunStarted():
                self._set(RunStatus.PENDING)
            case ev.ApprovalRequested(expires_at=expires_at) | ev.ApprovalEscalated(expires_at=expires_at):
                # Waiting for a person; woken at expiry to deny or escalate the request.
                self._set(RunStatus.WAITING)
                self.waiting_for = "approval"
                self.wake_at = expires_at
                self.approvals.append(event)
            case ev.ApprovalGranted() | ev.ApprovalDenied() | ev.ApprovalConsumed() | ev.ApprovalWithdrawn():
                self._set(RunStatus.RUNNING)
                self.approvals.append(event)
            case ev.SignalReceived(signal_id=signal_id):
                self._set(RunStatus.RUNNING)
                if signal_id is not None:
                    self.consumed_signals.append(signal_id)
            case ev.StepFailed(final=False, retry_at=float() as retry_at):
                # Waiting out a retry's backoff: due again at retry_at, even after a crash.
                self._set(RunStatus.SLEEPING)
                self.wake_at = retry_at
            case ev.StepFailed():
                self._set(RunStatus.RUNNING)
            case ev.TimerSet(fire_at=fire_at):
                self._set(RunStatus.SLEEPING)
                self.wake_at = fire_at
            case ev.SignalAwaited(name=name, timeout_at=timeout_at):
                self._set(RunStatus.WAITING)
                self.waiting_for = name
                self.wake_at = timeout_at
            case ev.NeedsAttention(reason=reason):
                self._set(RunStatus.NEEDS_ATTENTION)
                self.outcome = reason
            case ev.RunCompleted(result=result):
                self._set(RunStatus.COMPLETED)
                self.outcome = canonical_json(result)
            case ev.RunFailed(error=error):
                self._set(RunStatus.FAILED)
                self.outcome = error.message
            case ev.RunCancelled(reason=reason):
                self._set(RunStatus.CANCELLED)
                self.outcome = reason
            case _:
                # Any other event (a step, a recovery, a fired timer) means the run is moving.
                self._set(RunStatus.RUNNING)

    def _set(self, status: RunStatus) -> None:
        self.status = status
        self.wake_at = None
        self.waiting_for = None
        self.outcome = None

    def __bool__(self) -> bool:
        return self.status is not None or bool(self.consumed_signals or self.approvals or self.usage or self.blobs)


def index_update(events: list[ev.Event]) -> IndexUpdate:
    update = IndexUpdate()
    for event in events:
        update.merge(event)
    return update
