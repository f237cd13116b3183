"""The replay table: a run's journal folded into what each step position already holds.

The workflow function runs again from the top on every resume; each ``ctx`` call looks
up its position here and either returns what is recorded or does the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..journal import events as ev


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
    compensated: bool = False

    @property
    def done(self) -> bool:
        return self.completed or self.error is not None or self.fired


_PROGRESS = (
    ev.StepCompleted, ev.StepFailed, ev.TimerFired, ev.SignalReceived,
    ev.StepResolved, ev.ValueRecorded, ev.Compensated,
)


@dataclass(slots=True)
class ReplayState:
    started: ev.RunStarted | None = None
    steps: dict[int, StepRecord] = field(default_factory=dict)
    terminal: ev.Event | None = None
    last: ev.Event | None = None
    recoveries_since_progress: int = 0

    @classmethod
    def fold(cls, events: list[ev.Event]) -> ReplayState:
        state = cls()
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: ev.Event) -> None:
        self.last = event
        steps = self.steps
        match event:
            case ev.RunStarted():
                self.started = event
            case ev.StepStarted(step_id=sid):
                rec = steps.get(sid)
                if rec is None:
                    rec = steps[sid] = StepRecord(sid, event.kind, event.name)
                rec.args = event.args
                rec.idempotency_key = event.idempotency_key
                rec.attempts = event.attempt
                rec.in_flight = event.attempt > 0
            case ev.StepCompleted(step_id=sid):
                rec = steps[sid]
                rec.completed, rec.result, rec.in_flight = True, event.result, False
            case ev.StepFailed(step_id=sid):
                rec = steps[sid]
                rec.in_flight = False
                rec.failures += 1
                if event.final:
                    rec.error = event.error
            case ev.StepReconciled(step_id=sid) | ev.StepResolved(step_id=sid):
                rec = steps[sid]
                rec.in_flight = False
                if event.applied:
                    rec.completed, rec.result = True, event.result
            case ev.ValueRecorded(step_id=sid):
                steps[sid] = StepRecord(sid, event.kind, event.kind, completed=True, result=event.value)
            case ev.TimerSet(step_id=sid):
                steps[sid] = StepRecord(sid, "sleep", "sleep", fire_at=event.fire_at)
            case ev.SignalAwaited(step_id=sid):
                steps[sid] = StepRecord(sid, "wait", event.name, timeout_at=event.timeout_at)
            case ev.SignalReceived(step_id=sid):
                rec = steps.get(sid) or steps.setdefault(sid, StepRecord(sid, "wait", event.name))
                rec.completed, rec.result = True, event.data
            case ev.TimerFired(step_id=sid):
                steps[sid].fired = True
            case ev.Compensated(step_id=sid):
                steps[sid].compensated = True
            case ev.RunCompleted() | ev.RunFailed() | ev.RunCancelled():
                self.terminal = event
            case _:
                pass
        if isinstance(event, ev.RunRecovered):
            self.recoveries_since_progress += 1
        elif isinstance(event, _PROGRESS):
            self.recoveries_since_progress = 0
