"""Running one run until it stops: completes, fails, is cancelled, or has to wait.

An :class:`Execution` replays the run's journal into a :class:`ReplayState`, calls the
workflow function from the top, and serves each ``ctx`` call either from the journal or by
doing the work and appending what happened. It is the only writer of the run while it
holds the lease; if another worker took the run over, the next append fails on its ``seq``
and the execution stops without touching anything else.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..errors import (
    AppendConflict,
    BatonError,
    NonDeterminismError,
    RunCancelled,
    StepError,
    ToolTimeout,
    ToolValidationError,
)
from ..journal import IndexUpdate, RunStatus, canonical_json, encode_batch, index_update
from ..journal import events as ev
from ..journal.index import MOVING
from ..settings import Settings
from ..store import RunRecord, Store
from ..tools import Tool
from ..workflows import Workflow
from .replay import ReplayState, StepRecord

log = logging.getLogger("baton.engine")

Listener = Callable[[str, list[ev.Event]], None]


_NO_UPDATE = IndexUpdate()


class _Stop(BaseException):
    """Unwinds the workflow function. A ``BaseException`` so ``except Exception`` in
    workflow code cannot swallow it."""


class _Suspend(_Stop):
    pass


class _Fenced(_Stop):
    pass


class _StoreFailed(_Stop):
    """The journal could not be written. Unwinds the workflow like a crash: nothing may
    happen after a step whose record was lost, and workflow code must not be able to catch
    the failure and carry on with a hole in its journal."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Abort(_Stop):
    def __init__(self, error: BatonError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where an execution left its run. ``status`` is ``None`` when it was fenced off."""

    status: RunStatus | None
    detail: str = ""


def error_info(exc: BaseException) -> ev.ErrorInfo:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, StepError):
        return ev.ErrorInfo(type=exc.error_type, message=message, retryable=exc.retryable, code=exc.code)
    if isinstance(exc, BatonError):
        return ev.ErrorInfo(type=type(exc).__name__, message=message, retryable=exc.retryable, code=exc.code)
    return ev.ErrorInfo(type=type(exc).__name__, message=message)


def idempotency_key(run_id: str, step_id: int) -> str:
    return f"{run_id}:{step_id}"


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
        workflow: Workflow,
        events: list[ev.Event],
        owner: str,
        listener: Listener | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.pool = pool
        self.run_id = run.run_id
        self.workflow = workflow
        self.owner = owner
        self.listener = listener
        self.state = ReplayState.fold(events)
        self.head_seq = run.head_seq
        self.head_hash = run.head_hash
        self.cancel_requested = run.cancel_requested
        self.indexed_status = run.status
        self.lease_lost = False
        self.pending: list[ev.Event] = []
        self.position = 0
        self.tools: dict[int, Tool[Any, Any]] = {}
        self.nondeterminism: NonDeterminismError | None = None
        self.abort: BatonError | None = None

    # -- the journal ----------------------------------------------------------------

    def append(self, events: list[ev.Event]) -> None:
        batch = self.pending + events if self.pending else events
        self.pending = []
        now = self.clock.time()
        rows = encode_batch(self.run_id, self.head_seq, self.head_hash, batch, now)
        if self.indexed_status is RunStatus.RUNNING and all(type(e) in MOVING for e in batch):
            update = _NO_UPDATE  # the common case: a step of a running run changes no index field
        else:
            update = index_update(batch)
            if update.status is RunStatus.RUNNING and self.indexed_status is RunStatus.RUNNING:
                update.status = None  # already so: leave the index row's status alone
        try:
            self.store.append(self.run_id, self.head_seq, rows, update, now)
        except AppendConflict:
            log.warning("run %s: another worker took over; stopping without writing", self.run_id)
            raise _Fenced() from None
        except Exception as exc:  # the caller of execute() gets it back
            raise _StoreFailed(exc) from exc
        self.head_seq, self.head_hash = rows[-1].seq, rows[-1].hash
        if update.status is not None:
            self.indexed_status = update.status
        for event in batch:
            self.state.apply(event)
        if self.listener is not None:
            self.listener(self.run_id, batch)

    def buffer(self, event: ev.Event) -> None:
        """Keep a side-effect-free event to be written with the next append."""
        self.pending.append(event)
        self.state.apply(event)

    # -- positions and replay -------------------------------------------------------

    def next_step(self, kind: str, name: str) -> tuple[int, StepRecord | None]:
        self.position += 1
        step_id = self.position
        rec = self.state.steps.get(step_id)
        if rec is not None and (rec.kind != kind or rec.name != name):
            self.nondeterminism = NonDeterminismError(
                f"step {step_id}: the journal holds {rec.kind} {rec.name!r} but the workflow now "
                f"asks for {kind} {name!r}; the workflow code changed or is not deterministic",
                run_id=self.run_id, step_id=step_id,
            )
            raise _Abort(self.nondeterminism)
        return step_id, rec

    def before_new_work(self, step_id: int) -> None:
        """Checks made only where replay ends and real work begins."""
        if self.abort is not None:
            raise _Abort(self.abort)
        if self.lease_lost:
            raise _Fenced()
        if self.cancel_requested:
            raise RunCancelled("the run was cancelled", run_id=self.run_id, step_id=step_id)

    # -- tool calls -----------------------------------------------------------------

    def plan_call(self, tool: Tool[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[int, Any]:
        """Serve a ``ctx.call`` from the journal, or say how to run it.

        Returns ``(step_id, plan)`` where plan is ``("done", value)``, ``("raise", exc)`` or
        ``("run", (values, args_json, attempt))``.
        """
        step_id, rec = self.next_step("call", tool.name)
        self.tools[step_id] = tool
        if rec is not None:
            if rec.completed:
                return step_id, ("done", tool.decode_result(rec.result))
            if rec.error is not None:
                return step_id, ("raise", self.recorded_error(rec))
        self.before_new_work(step_id)
        if rec is not None:
            values, _ = tool.validate(rec.args)
            if rec.in_flight and not tool.idempotent:
                return step_id, self.settle_in_doubt(tool, rec, values)
            return step_id, ("run", (values, rec.args, rec.attempts + 1))
        try:
            values, args_json = tool.validate(tool.bind(args, kwargs))
        except ToolValidationError as exc:
            exc.run_id, exc.step_id = self.run_id, step_id
            raw = {k: repr(v) for k, v in kwargs.items()}
            self.append([
                ev.StepStarted(step_id=step_id, kind="call", name=tool.name, args=raw, attempt=0,
                               idempotency_key=idempotency_key(self.run_id, step_id),
                               idempotent=tool.idempotent),
                ev.StepFailed(step_id=step_id, attempt=0, error=error_info(exc), final=True),
            ])
            return step_id, ("raise", exc)
        return step_id, ("run", (values, args_json, 1))

    def recorded_error(self, rec: StepRecord) -> StepError:
        assert rec.error is not None
        cls = ToolValidationError if rec.error.code == ToolValidationError.code else StepError
        if rec.error.code == ToolTimeout.code:
            cls = ToolTimeout
        return cls(rec.error.message, error_type=rec.error.type, run_id=self.run_id,
                   step_id=rec.step_id, retryable=rec.error.retryable)

    def settle_in_doubt(self, tool: Tool[Any, Any], rec: StepRecord, values: dict[str, Any]) -> Any:
        """A non-idempotent call started and we do not know how it ended."""
        key = rec.idempotency_key or idempotency_key(self.run_id, rec.step_id)
        if tool.reconcile is None:
            reason = (
                f"step {rec.step_id} ({tool.name}) was interrupted after it started; it is not "
                "idempotent and has no reconcile hook, so Baton will not run it again on a guess. "
                f"Check whether it took effect (idempotency key {key}), then resolve the step."
            )
            self.needs_attention(rec.step_id, reason)
        try:
            answer = tool.run_reconcile(values, key)
            result_json = tool.encode_result(answer.result) if answer.applied else None
        except Exception as exc:  # noqa: BLE001 - any failure of the hook needs a person
            self.needs_attention(
                rec.step_id,
                f"step {rec.step_id} ({tool.name}) is in doubt and its reconcile hook failed: "
                f"{type(exc).__name__}: {exc}",
            )
        self.append([ev.StepReconciled(step_id=rec.step_id, applied=answer.applied, result=result_json)])
        if answer.applied:
            return ("done", tool.decode_result(result_json))
        return ("run", (values, rec.args, rec.attempts + 1))

    def needs_attention(self, step_id: int, reason: str) -> None:
        last = self.state.last
        if not (isinstance(last, ev.NeedsAttention) and last.reason == reason):
            self.append([ev.NeedsAttention(step_id=step_id, reason=reason)])
        raise _Suspend()

    def started(self, tool: Tool[Any, Any], step_id: int, args_json: dict[str, Any], attempt: int
                ) -> ev.StepStarted:
        # Built without validation: every field is already checked (the hot path).
        return ev.StepStarted.trusted(
            step_id=step_id, kind="call", name=tool.name, args=args_json, attempt=attempt,
            idempotency_key=f"{self.run_id}:{step_id}", idempotent=tool.idempotent,
        )

    def run_call_sync(self, tool: Tool[Any, Any], step_id: int, plan: Any) -> Any:
        what, payload = plan
        if what == "done":
            return payload
        if what == "raise":
            raise payload
        values, args_json, attempt = payload
        while True:
            start = self.started(tool, step_id, args_json, attempt)
            if not tool.idempotent:
                self.append([start])
            try:
                value = self.invoke_sync(tool, values, start.idempotency_key)
                result_json = tool.encode_result(value)
                done = ev.StepCompleted.trusted(step_id=step_id, result=result_json)
                done.encoded()  # not JSON (NaN, a foreign object)? Then the step failed.
            except Exception as exc:  # noqa: BLE001 - every tool failure is recorded
                if isinstance(exc, ToolTimeout) and not tool.idempotent:
                    # The call may still take effect: that is doubt, not failure.
                    settled = self.settle_in_doubt(tool, self.state.steps[step_id], values)
                    if settled[0] == "done":
                        return settled[1]
                delay = self.record_failure(tool, step_id, start, exc)
                self.clock.sleep(delay)
                self.before_new_work(step_id)
                attempt += 1
                continue
            self.append([start, done] if tool.idempotent else [done])
            return tool.decode_result(result_json)

    async def run_call_async(self, tool: Tool[Any, Any], step_id: int, plan: Any) -> Any:
        what, payload = plan
        if what == "done":
            return payload
        if what == "raise":
            raise payload
        values, args_json, attempt = payload
        while True:
            start = self.started(tool, step_id, args_json, attempt)
            if not tool.idempotent:
                self.append([start])
            try:
                value = await self.invoke_async(tool, values, start.idempotency_key)
                result_json = tool.encode_result(value)
                done = ev.StepCompleted.trusted(step_id=step_id, result=result_json)
                done.encoded()  # not JSON (NaN, a foreign object)? Then the step failed.
            except Exception as exc:  # noqa: BLE001 - every tool failure is recorded
                if isinstance(exc, ToolTimeout) and not tool.idempotent:
                    # The call may still take effect: that is doubt, not failure.
                    settled = self.settle_in_doubt(tool, self.state.steps[step_id], values)
                    if settled[0] == "done":
                        return settled[1]
                delay = self.record_failure(tool, step_id, start, exc)
                await self.clock.sleep_async(delay)
                self.before_new_work(step_id)
                attempt += 1
                continue
            self.append([start, done] if tool.idempotent else [done])
            return tool.decode_result(result_json)

    def record_failure(self, tool: Tool[Any, Any], step_id: int, start: ev.StepStarted,
                       exc: Exception) -> float:
        """Journal a failed attempt. Returns the delay before the next attempt, or raises."""
        rec = self.state.steps.get(step_id)
        failures = rec.failures if rec is not None else 0
        retryable = tool.retry.is_retryable(exc) and failures < tool.retry.retries
        delay = tool.retry.delay(failures + 1) if retryable else None
        if isinstance(exc, TypeError | ValueError | RecursionError) and "JSON" in str(exc):
            exc = StepError(f"{tool.name} returned a value that is not JSON: {exc}")
        info = error_info(exc).model_copy(update={"retryable": retryable})
        failed = ev.StepFailed(step_id=step_id, attempt=start.attempt, error=info,
                               final=not retryable, retry_in=delay)
        self.append([start, failed] if tool.idempotent else [failed])
        if delay is None:
            error = exc if isinstance(exc, StepError) else StepError(
                f"{tool.name} failed: {type(exc).__name__}: {exc}",
                error_type=type(exc).__name__, run_id=self.run_id, step_id=step_id,
            )
            raise error
        log.info("run %s step %d %s attempt %d failed (%s); retrying in %.2fs",
                 self.run_id, step_id, tool.name, start.attempt, type(exc).__name__, delay)
        return delay

    def invoke_sync(self, tool: Tool[Any, Any], values: dict[str, Any], key: str) -> Any:
        kwargs = {**values, "idempotency_key": key} if tool.wants_key else values
        if tool.is_async:
            return asyncio.run(self.invoke_async(tool, values, key))
        if tool.timeout is None:
            return tool.fn(**kwargs)
        future = self.pool.submit(tool.fn, **kwargs)
        try:
            return future.result(timeout=tool.timeout)
        except FutureTimeout:
            raise ToolTimeout(f"{tool.name} did not finish within {tool.timeout}s",
                              error_type="TimeoutError") from None

    async def invoke_async(self, tool: Tool[Any, Any], values: dict[str, Any], key: str) -> Any:
        kwargs = {**values, "idempotency_key": key} if tool.wants_key else values
        if tool.is_async:
            call = tool.fn(**kwargs)
        else:
            call = asyncio.get_running_loop().run_in_executor(self.pool, lambda: tool.fn(**kwargs))
        try:
            return await asyncio.wait_for(call, tool.timeout)
        except TimeoutError:
            raise ToolTimeout(f"{tool.name} did not finish within {tool.timeout}s",
                              error_type="TimeoutError") from None

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

    def check_all_replayed(self) -> None:
        """A workflow that ends before reaching every step its journal holds is not the
        code that made them (those steps' effects would be silently orphaned)."""
        if self.nondeterminism is not None:
            return
        later = sorted(s for s in self.state.steps if s > self.position)
        if later:
            rec = self.state.steps[later[0]]
            self.nondeterminism = NonDeterminismError(
                f"step {rec.step_id}: the journal holds {rec.kind} {rec.name!r} but the workflow "
                f"now ends after step {self.position}; the workflow code changed or is not "
                "deterministic",
                run_id=self.run_id, step_id=rec.step_id,
            )

    def finish(self, result: Any = None, failure: BaseException | None = None) -> Outcome:
        if self.cancel_requested:
            self.compensate()
            self.append([ev.RunCancelled(reason="cancelled on request")])
            return Outcome(RunStatus.CANCELLED)
        self.check_all_replayed()
        if self.nondeterminism is not None:
            err = self.nondeterminism
            self.needs_attention(err.step_id or 0, err.message)
        if failure is not None:
            self.compensate()
            self.append([ev.RunFailed(error=error_info(failure))])
            return Outcome(RunStatus.FAILED, str(failure))
        try:
            canonical_json(result)
        except (TypeError, ValueError, RecursionError) as exc:
            return self.finish(failure=BatonError(f"workflow returned a value that is not JSON: {exc}"))
        self.append([ev.RunCompleted(result=result)])
        return Outcome(RunStatus.COMPLETED)


def describe_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
