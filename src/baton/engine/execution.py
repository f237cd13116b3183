"""Running one run until it stops: completes, fails, is cancelled, or has to wait.

An :class:`Execution` replays the run's journal into a :class:`ReplayState`, calls the
workflow function from the top, and serves each ``ctx`` call either from the journal or by
doing the work and appending what happened. It is the only writer of the run while it
holds the lease; if another worker took the run over, the next append fails on its ``seq``
and the execution stops without touching anything else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from ..budgets import Limits
from ..clock import Clock
from ..config import Governance
from ..errors import AppendConflict, BatonError, DataErased, NonDeterminismError, RunCancelled
from ..journal import IndexUpdate, RunStatus, canonical_json, encode_batch, index_update
from ..journal import events as ev
from ..journal.index import MOVING
from ..sensitive import NO_HINTS, Hints, Sealer
from ..settings import Settings
from ..store import RunRecord, Store
from ..telemetry import Telemetry
from ..tools import Tool
from .calls import Calls, error_info, idempotency_key
from .guard import Guard
from .replay import ReplayState, StepRecord
from .stops import Abort, Fenced, StoreFailed, Suspend

log = logging.getLogger("baton.engine")

Listener = Callable[[str, list[ev.Event]], None]


_NO_UPDATE = IndexUpdate()
_QUIET = Telemetry()


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where an execution left its run. ``status`` is ``None`` when it was fenced off."""

    status: RunStatus | None
    detail: str = ""


class Execution:
    """One worker's turn at one run. Not thread-safe: one execution, one thread."""

    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        clock: Clock,
        pool: ThreadPoolExecutor,
        run: RunRecord,
        events: list[ev.Event],
        listener: Listener | None = None,
        governance: Governance | None = None,
        telemetry: Telemetry | None = None,
        sealer: Sealer | None = None,
        workflow_hints: Hints = NO_HINTS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.pool = pool
        self.run_id = run.run_id
        self.listener = listener
        self.sealer = sealer or Sealer(run.run_id, None)
        """Seals what is written; without the run's key, only free text can be written."""
        self.workflow_hints = workflow_hints
        self.state = ReplayState.fold(events)
        self.head_seq = run.head_seq
        self.head_hash = run.head_hash
        self.cancel_requested = run.cancel_requested
        self.indexed_status = run.status
        self.lease_lost = False
        self.stop_requested = False
        self.pending: list[ev.Event] = []
        self.position = 0
        self.tools: dict[int, Tool[Any, Any]] = {}
        self.nondeterminism: NonDeterminismError | None = None
        self.abort: BatonError | None = None
        self.telemetry = telemetry or _QUIET
        self.calls = Calls(self)
        self.evidence: Any = None
        """What ``ctx.evidence`` attached to the approvals the workflow's next steps ask for."""
        self.guard: Guard | None = None
        if governance is not None:
            started = self.state.started
            limits = Limits.from_json(started.limits if started else None)
            self.guard = Guard(self, governance, limits, run.created_at)

    # -- the journal ----------------------------------------------------------------

    def append(self, events: list[ev.Event]) -> None:
        batch = self.pending + events if self.pending else events
        self.pending = []
        now = self.clock.time()
        blobs: dict[str, str] = {}
        try:
            # What is stored has its sensitive values sealed; the replay state keeps them open.
            stored = [self.sealer.seal(event, self.hints_of(event)) for event in batch]
            rows = encode_batch(self.run_id, self.head_seq, self.head_hash, stored, now, blobs)
        except (TypeError, ValueError, RecursionError) as exc:
            raise Abort(BatonError(f"cannot record the run's events: they are not JSON ({exc})",
                                   run_id=self.run_id)) from None
        except DataErased as exc:
            raise Abort(exc) from None
        if self.indexed_status is RunStatus.RUNNING and all(type(e) in MOVING for e in batch):
            update = _NO_UPDATE  # the common case: a step of a running run changes no index field
        else:
            update = index_update(stored)
            if update.status is RunStatus.RUNNING and self.indexed_status is RunStatus.RUNNING:
                update.status = None  # already so: leave the index row's status alone
        usage = self.guard.usage_rows(batch) if self.guard is not None and self.guard.tracks_usage else []
        if usage or blobs:
            if update is _NO_UPDATE:
                update = IndexUpdate()
            update.usage, update.blobs = usage, blobs
        try:
            self.store.append(self.run_id, self.head_seq, rows, update, now)
        except AppendConflict:
            log.warning("run %s: another worker took over; stopping without writing", self.run_id)
            raise Fenced() from None
        except Exception as exc:  # the caller of execute() gets it back
            raise StoreFailed(exc) from exc
        self.head_seq, self.head_hash = rows[-1].seq, rows[-1].hash
        if update.status is not None:
            self.indexed_status = update.status
        for event, kept in zip(batch, stored, strict=True):
            self.state.apply(self.sealer.as_recorded(event, kept))
        if self.listener is not None:
            self.listener(self.run_id, stored)

    def hints_of(self, event: ev.Event) -> Hints:
        """What the tool or workflow an event belongs to declares sensitive."""
        step_id = event.__dict__.get("step_id")
        if step_id is not None:
            tool = self.tools.get(step_id)
            return tool.hints if tool is not None else NO_HINTS
        if isinstance(event, ev.RunStarted | ev.RunCompleted):
            return self.workflow_hints
        return NO_HINTS

    def recorded_error(self, step_id: int) -> ev.ErrorInfo:
        """A step's failure as the journal holds it (its text redacted): what the workflow is
        told, live or on replay alike."""
        rec = self.state.steps.get(step_id)
        assert rec is not None and rec.error is not None
        return rec.error

    def buffer(self, event: ev.Event) -> None:
        """Keep a side-effect-free event to be written with the next append."""
        self.pending.append(event)
        self.state.apply(event)

    # -- positions and replay -------------------------------------------------------

    def next_step(self, kind: str, name: str) -> tuple[int, StepRecord | None]:
        self.position += 1
        step_id = self.position
        rec = self.state.steps.get(step_id)
        if rec is not None and (rec.kind != kind or not self.same_text(rec.name, name)):
            self.nondeterminism = NonDeterminismError(
                f"step {step_id}: the journal holds {rec.kind} {rec.name!r} but the workflow now "
                f"asks for {kind} {name!r}; the workflow code changed or is not deterministic",
                run_id=self.run_id, step_id=step_id,
            )
            raise Abort(self.nondeterminism)
        return step_id, rec

    def same_text(self, recorded: str, text: str) -> bool:
        """Is ``recorded`` (read back from the journal, where free text is stored redacted)
        what ``text`` became when it was written? An approval's title is its step's name."""
        return recorded == text or recorded == self.sealer.redact(text)

    def before_new_work(self, step_id: int) -> None:
        """Checks made only where replay ends and real work begins."""
        if self.abort is not None:
            raise Abort(self.abort)
        if self.lease_lost:
            raise Fenced()
        if self.stop_requested:  # the worker is shutting down: leave the run for another
            raise Suspend()
        if self.cancel_requested:
            raise RunCancelled("the run was cancelled", run_id=self.run_id, step_id=step_id)

    def needs_attention(self, step_id: int, reason: str) -> NoReturn:
        # Asked once: not again on every resume, nor after a takeover of the waiting run.
        asked = self.state.attention
        if asked is None or not self.same_text(asked, reason):
            self.append([ev.NeedsAttention(step_id=step_id, reason=reason)])
        raise Suspend()

    # -- finishing ------------------------------------------------------------------

    def compensate(self) -> None:
        """Undo completed steps that declared ``compensate``, newest first."""
        for step_id in sorted(self.state.steps, reverse=True):
            rec = self.state.steps[step_id]
            tool = self.tools.get(step_id)
            if rec.kind != "call" or not rec.completed or rec.compensated:
                continue
            if tool is None or tool.compensate is None:
                continue
            try:
                values, _ = tool.validate(rec.args)
                tool.run_compensation(values, tool.decode_result(rec.result),
                                      rec.idempotency_key or idempotency_key(self.run_id, step_id))
            except Exception as exc:  # noqa: BLE001 - recorded, and the rest still run
                self.append([ev.Compensated(step_id=step_id, name=tool.name, ok=False,
                                            error=error_info(exc))])
            else:
                self.append([ev.Compensated(step_id=step_id, name=tool.name, ok=True)])

    def check_all_replayed(self, failure: BaseException | None = None) -> None:
        """A workflow that ends before reaching every step its journal holds is not the
        code that made them (those steps' effects would be silently orphaned). One that
        raised on the way (an MCP server down while it replayed) says why."""
        if self.nondeterminism is not None:
            return
        later = sorted(s for s in self.state.steps if s > self.position)
        if later and failure is not None:
            rec = self.state.steps[later[0]]
            self.nondeterminism = NonDeterminismError(
                f"the workflow stopped at step {self.position} with {type(failure).__name__}: {failure}; its "
                f"journal holds more steps ({rec.kind} {rec.name!r} next). If the cause has passed, resume the "
                "run (baton resume RUN)", run_id=self.run_id, step_id=rec.step_id)
        elif later:
            rec = self.state.steps[later[0]]
            self.nondeterminism = NonDeterminismError(
                f"step {rec.step_id}: the journal holds {rec.kind} {rec.name!r} but the workflow "
                f"now ends after step {self.position}; the workflow code changed or is not "
                "deterministic",
                run_id=self.run_id, step_id=rec.step_id,
            )

    def withdraw_open(self, why: str) -> list[ev.Event]:
        """Approval requests that will never be used once the run ends: withdrawn with it,
        so no one is asked to decide them."""
        return [
            ev.ApprovalWithdrawn(step_id=rec.step_id, approval_id=rec.approval.request.approval_id, reason=why)
            for rec in self.state.steps.values()
            if rec.approval is not None and rec.approval.status in ("pending", "approved")
            and not rec.approval.consumed
        ]

    def withdraw_before(self, why: str) -> None:
        """Withdraw open requests before compensations run, so that nobody decides them
        (and fences this worker off) while the run is being undone."""
        withdrawn = self.withdraw_open(why)
        if withdrawn:
            self.append(withdrawn)

    def finish(self, result: Any = None, failure: BaseException | None = None) -> Outcome:
        if self.cancel_requested:
            self.withdraw_before("the run was cancelled")
            self.compensate()
            self.append([ev.RunCancelled(reason="cancelled on request")])
            return Outcome(RunStatus.CANCELLED)
        self.check_all_replayed(failure)
        if self.nondeterminism is not None:
            err = self.nondeterminism
            self.needs_attention(err.step_id or 0, err.message)
        if failure is not None:
            self.withdraw_before("the run failed")
            self.compensate()
            self.append([ev.RunFailed(error=error_info(failure))])
            return Outcome(RunStatus.FAILED, str(failure))
        try:
            text = canonical_json(result)
        except (TypeError, ValueError, RecursionError) as exc:
            return self.finish(failure=BatonError(f"workflow returned a value that is not JSON: {exc}"))
        if not isinstance(result, str | int | float | bool) and result is not None:
            result = json.loads(text)  # once per run: tuples (at any depth) become the lists JSON has
        self.append([*self.withdraw_open("the run completed without this step"), ev.RunCompleted(result=result)])
        return Outcome(RunStatus.COMPLETED)
