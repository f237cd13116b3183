"""``ctx.call``: serving a tool call from the journal, or making it durably.

The retry loop is written once, as a generator that yields what it needs done (call the
tool, or wait) and is sent the outcome; a sync and an async driver run it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from ..aio import run_coroutine
from ..approvals import args_hash
from ..errors import ApprovalDenied, BatonError, PolicyDenied, StepError, ToolTimeout, ToolValidationError
from ..journal import canonical_json
from ..journal import events as ev
from ..logs import in_step
from ..policy import Verdict
from ..tools import Tool
from .replay import StepRecord
from .stops import Abort, Suspend

if TYPE_CHECKING:
    from .execution import Execution


def idempotency_key(run_id: str, step_id: int) -> str:
    return f"{run_id}:{step_id}"


def error_info(exc: BaseException) -> ev.ErrorInfo:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, StepError):
        return ev.ErrorInfo(type=exc.error_type, message=message, retryable=exc.retryable, code=exc.code)
    if isinstance(exc, BatonError):
        return ev.ErrorInfo(type=type(exc).__name__, message=message, retryable=exc.retryable, code=exc.code)
    return ev.ErrorInfo(type=type(exc).__name__, message=message)


def step_error(name: str, info: ev.ErrorInfo, run_id: str, step_id: int) -> StepError:
    """The exception a workflow sees for a failed step: the same live and on replay."""
    if info.code == ToolValidationError.code:
        return ToolValidationError(info.message, error_type=info.type, run_id=run_id, step_id=step_id)
    if info.code in (PolicyDenied.code, ApprovalDenied.code):
        denied = ApprovalDenied if info.code == ApprovalDenied.code else PolicyDenied
        return denied(info.message, error_type=info.type, run_id=run_id, step_id=step_id)
    cls = ToolTimeout if info.code == ToolTimeout.code else StepError
    return cls(f"{name} failed: {info.type}: {info.message}", error_type=info.type, run_id=run_id,
               step_id=step_id, retryable=info.retryable)


@dataclass(slots=True)
class CallPlan:
    """What a ``ctx.call`` will do: return a recorded value, raise a recorded failure, or
    make attempts starting at ``attempt``."""

    tool: Tool[Any, Any]
    step_id: int
    value: Any = None
    error: StepError | None = None
    run: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    args_json: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    wait_first: float = 0.0
    """What is left of a backoff recorded before a restart."""
    approval: str | None = None
    """A granted approval, consumed with the first attempt's start."""

    def recorded(self) -> Any:
        """The outcome of a call that needs no attempt: its value, or its failure raised."""
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(frozen=True, slots=True)
class Invoke:
    values: dict[str, Any]
    key: str


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


Attempts = Generator[Invoke | Wait, Any, Any]


class Calls:
    """The tool calls of one execution."""

    def __init__(self, x: Execution) -> None:
        self.x = x

    # -- planning -------------------------------------------------------------------

    def plan(self, tool: Tool[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallPlan:
        x = self.x
        step_id, rec = x.next_step("call", tool.name)
        x.tools[step_id] = tool
        if rec is not None and rec.completed:
            return CallPlan(tool, step_id, value=self.decode_recorded(tool, rec))
        if rec is not None and rec.error is not None:
            return CallPlan(tool, step_id, error=step_error(tool.name, rec.error, x.run_id, step_id))
        x.before_new_work(step_id)
        if rec is not None and rec.attempts > 0:
            values, _ = tool.validate(rec.args)
            if rec.in_flight and not tool.idempotent:
                return self.settle_in_doubt(tool, rec, values)
            wait = 0.0 if rec.retry_at is None else max(0.0, rec.retry_at - x.clock.time())
            if wait > x.settings.retry_wait:
                raise Suspend()  # resumed early (a takeover): the next attempt is not due yet
            return CallPlan(tool, step_id, run=True, values=values, args_json=rec.args,
                            attempt=rec.attempts + 1, wait_first=wait)
        checked = self.validated(tool, step_id, args, kwargs)
        if isinstance(checked, CallPlan):
            return checked
        values, args_json = checked
        if rec is not None and rec.approval is not None:
            return self.approved(tool, rec, values, args_json)
        return self.admit(tool, step_id, values, args_json)

    def validated(self, tool: Tool[Any, Any], step_id: int, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | CallPlan:
        """The call's arguments checked against the tool's signature, or the failed step."""
        x = self.x
        try:
            return tool.validate(tool.bind(args, kwargs))
        except ToolValidationError as error:
            try:  # by parameter name where possible, so that declared-sensitive ones are sealed
                given = tool.bind(args, kwargs)
            except ToolValidationError:
                given = {**{str(i): v for i, v in enumerate(args)}, **kwargs}
            raw = {k: repr(v) for k, v in given.items()}
            x.append([
                ev.StepStarted(step_id=step_id, kind="call", name=tool.name, args=raw, attempt=0,
                               idempotency_key=idempotency_key(x.run_id, step_id), idempotent=tool.idempotent,
                               role=tool.role),
                ev.StepFailed(step_id=step_id, attempt=0, error=error_info(error), final=True),
            ])
            return CallPlan(tool, step_id, error=step_error(tool.name, x.recorded_error(step_id), x.run_id, step_id))

    def admit(self, tool: Tool[Any, Any], step_id: int, values: dict[str, Any], args_json: dict[str, Any],
              before: list[ev.Event] | None = None) -> CallPlan:
        """A new call: within the run's limits, and allowed by policy (or held for approval)?"""
        x, guard = self.x, self.x.guard
        for event in before or []:
            x.buffer(event)
        if guard is None or not guard.active:
            return CallPlan(tool, step_id, run=True, values=values, args_json=args_json)
        guard.check_budget(tool, values)
        decision = guard.decide(tool, step_id, values, args_json)
        if decision is None:
            return CallPlan(tool, step_id, run=True, values=values, args_json=args_json)
        verdict, decided = decision
        if verdict.effect == "allow":
            x.buffer(decided)  # written with the step itself: no extra commit
            return CallPlan(tool, step_id, run=True, values=values, args_json=args_json)
        if verdict.effect == "deny":
            return CallPlan(tool, step_id, error=guard.denied(tool, step_id, verdict, decided))
        self.hold(tool, step_id, verdict, decided, args_json, before=[decided])

    def hold(self, tool: Tool[Any, Any], step_id: int, verdict: Verdict, decided: ev.PolicyDecided,
             args_json: dict[str, Any], before: list[ev.Event]) -> NoReturn:
        """Ask for the approval policy wants for this call, and wait for it."""
        assert self.x.guard is not None
        self.x.guard.request(step_id, title=f"{tool.name} on {decided.resource}", tool=tool.name,
                             args_json=args_json, policies=verdict.policies, approvers=verdict.approvers,
                             expires_after=verdict.expires_after, escalate_to=verdict.escalate_to, before=before)
        raise Suspend()

    def approved(self, tool: Tool[Any, Any], rec: StepRecord, values: dict[str, Any],
                 args_json: dict[str, Any]) -> CallPlan:
        """A call that asked for approval: still waiting, denied, or granted for these
        exact arguments (other arguments withdraw the request and are decided afresh).

        A grant is checked again before it is used: the decider must be allowed to decide
        under this runtime's own principals (a decision is only as trustworthy as the
        directory of whoever wrote it), and policy is asked again, since limits and rules
        may have changed while the run waited. The approval covers the gates it was asked
        for; anything else policy now says (a denial, another gate) takes precedence."""
        x, guard, approval = self.x, self.x.guard, rec.approval
        assert approval is not None
        if guard is None:
            raise Abort(BatonError("this run waits for an approval, but this runtime has no governance "
                                   "configured (baton.toml)", run_id=x.run_id, step_id=rec.step_id))
        approval_id = approval.request.approval_id
        if args_hash(tool.name, args_json, x.sealer) != approval.request.args_hash:
            withdrawn = ev.ApprovalWithdrawn(step_id=rec.step_id, approval_id=approval_id,
                                             reason="the workflow now asks for this step with other arguments")
            return self.admit(tool, rec.step_id, values, args_json, before=[withdrawn])
        guard.settle_expiry(rec, approval)
        guard.record_wait(rec.step_id, approval)
        if approval.status == "denied":
            return CallPlan(tool, rec.step_id, error=guard.approval_denied(tool.name, rec.step_id, approval))
        distrust = guard.untrusted_grant(approval)
        if distrust is not None:
            withdrawn = ev.ApprovalWithdrawn(step_id=rec.step_id, approval_id=approval_id, reason=distrust)
            return self.admit(tool, rec.step_id, values, args_json, before=[withdrawn])
        guard.check_budget(tool, values)  # the run may have outlived its lifetime while it waited
        decision = guard.decide(tool, rec.step_id, values, args_json)
        if decision is not None:
            verdict, decided = decision
            covered = verdict.effect == "allow" or (
                verdict.effect == "approval" and set(verdict.policies) <= set(approval.request.policies))
            if not covered:
                why = ("policy now denies the step" if verdict.effect == "deny"
                       else "policy now asks for another approval")
                withdrawn = ev.ApprovalWithdrawn(step_id=rec.step_id, approval_id=approval_id,
                                                 reason=f"{why}; the approval given is not used")
                if verdict.effect == "deny":
                    x.buffer(withdrawn)
                    return CallPlan(tool, rec.step_id, error=guard.denied(tool, rec.step_id, verdict, decided))
                self.hold(tool, rec.step_id, verdict, decided, args_json, before=[withdrawn, decided])
            x.buffer(decided)  # journaled with the consumption and the step's start
        return CallPlan(tool, rec.step_id, run=True, values=values, args_json=approval.request.args,
                        approval=approval_id)

    def decode_recorded(self, tool: Tool[Any, Any], rec: StepRecord) -> Any:
        try:
            return tool.decode_result(rec.result)
        except Exception as exc:  # noqa: BLE001 - a recorded result the code can no longer read
            raise Abort(BatonError(
                f"step {rec.step_id} ({tool.name}): its recorded result no longer matches the tool's "
                f"return type ({type(exc).__name__}); the tool changed since the step ran",
                run_id=self.x.run_id, step_id=rec.step_id,
            )) from None

    def settle_in_doubt(self, tool: Tool[Any, Any], rec: StepRecord, values: dict[str, Any]) -> CallPlan:
        """A non-idempotent call started and nothing says how it ended."""
        x = self.x
        key = rec.idempotency_key or idempotency_key(x.run_id, rec.step_id)
        if x.telemetry.meter is not None:
            x.telemetry.in_doubt.add(1, {"gen_ai.tool.name": tool.name})
        if tool.reconcile is None:
            x.needs_attention(rec.step_id, (
                f"step {rec.step_id} ({tool.name}) was interrupted after it started; it is not "
                "idempotent and has no reconcile hook, so Baton will not run it again on a guess. "
                f"Check whether it took effect (idempotency key {key}), then resolve the step."
            ))
        try:
            answer = tool.run_reconcile(values, key)
            result_json = tool.encode_result(answer.result) if answer.applied else None
            canonical_json({"result": result_json})
            value = tool.decode_result(result_json) if answer.applied else None
        except Exception as exc:  # noqa: BLE001 - any failure of the hook needs a person
            x.needs_attention(rec.step_id, (
                f"step {rec.step_id} ({tool.name}) is in doubt and its reconcile hook failed: "
                f"{type(exc).__name__}: {exc}"
            ))
        x.append([ev.StepReconciled(step_id=rec.step_id, applied=answer.applied, result=result_json)])
        if answer.applied:
            return CallPlan(tool, rec.step_id, value=value)
        return CallPlan(tool, rec.step_id, run=True, values=values, args_json=rec.args,
                        attempt=rec.attempts + 1)

    # -- attempts ---------------------------------------------------------------------

    def attempts(self, plan: CallPlan) -> Attempts:
        x, tool, step_id = self.x, plan.tool, plan.step_id
        attempt = plan.attempt
        if plan.wait_first > 0:
            yield Wait(plan.wait_first)
            x.before_new_work(step_id)
        approval = plan.approval
        while True:
            start = ev.StepStarted.trusted(
                step_id=step_id, kind="call", name=tool.name, args=plan.args_json, attempt=attempt,
                idempotency_key=idempotency_key(x.run_id, step_id), idempotent=tool.idempotent,
                role=tool.role,
            )
            durable = not tool.idempotent or approval is not None
            if approval is not None:
                # Used exactly once: consumed in the append that records the start.
                x.append([ev.ApprovalConsumed(step_id=step_id, approval_id=approval), start])
                approval = None
            elif durable:
                x.append([start])  # the intent is durable before the call is made
            try:
                value = yield Invoke(plan.values, start.idempotency_key)
            except ToolTimeout as exc:
                if not tool.idempotent and exc.state != "not_started":
                    self.timed_out_in_doubt(tool, step_id, exc)
                    settled = self.settle_in_doubt(tool, x.state.steps[step_id], plan.values)
                    if not settled.run:
                        return settled.value
                failure: Exception = exc
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - every tool failure is recorded
                if getattr(exc, "in_doubt", False) and not tool.idempotent:
                    # The call may have taken effect (a connection lost mid-call): the same as a
                    # crash mid-call, reconciled or left to a person, never failed or repeated.
                    settled = self.settle_in_doubt(tool, x.state.steps[step_id], plan.values)
                    if not settled.run:
                        return settled.value
                failure = exc if isinstance(exc, Exception) else RuntimeError(
                    f"{tool.name} tried to exit the process (SystemExit {exc.code!r})")
            else:
                return self.record_success(tool, start, value)
            delay = self.record_failure(tool, start, failure, durable)
            if delay > x.settings.retry_wait:
                raise Suspend()  # the run sleeps until the next attempt is due (see the index)
            yield Wait(delay)
            x.before_new_work(step_id)
            attempt += 1

    def record_success(self, tool: Tool[Any, Any], start: ev.StepStarted, value: Any) -> Any:
        x, step_id = self.x, start.step_id
        try:
            result_json = tool.encode_result(value)
            if tool.idempotent:
                done: ev.Event = ev.StepRan.trusted(
                    step_id=step_id, kind="call", name=tool.name, args=start.args,
                    attempt=start.attempt, idempotency_key=start.idempotency_key, role=tool.role,
                    result=result_json,
                )
            else:
                done = ev.StepCompleted.trusted(step_id=step_id, result=result_json)
            done.encoded()
        except Exception as exc:  # noqa: BLE001 - the call took effect; its result cannot be kept
            info = ev.ErrorInfo(type=type(exc).__name__, retryable=False, code="result_not_json",
                                message=f"the call took effect but its result cannot be stored as JSON: {exc}")
            failed = ev.StepFailed(step_id=step_id, attempt=start.attempt, error=info, final=True)
            rec = x.state.steps.get(step_id)
            x.append([failed] if rec is not None and rec.in_flight else [start, failed])
            raise step_error(tool.name, x.recorded_error(step_id), x.run_id, step_id) from None
        x.append([done])  # idempotent: one event, one durable write for the whole step
        return tool.decode_result(result_json)

    def record_failure(self, tool: Tool[Any, Any], start: ev.StepStarted, exc: Exception,
                       start_written: bool) -> float:
        """Journal a failed attempt. Returns the delay before the next one, or raises."""
        x, step_id = self.x, start.step_id
        rec = x.state.steps.get(step_id)
        failures = rec.failures if rec is not None else 0
        retryable = tool.retry.is_retryable(exc) and failures < tool.retry.retries
        delay = tool.retry.delay(failures + 1) if retryable else None
        info = error_info(exc).model_copy(update={"retryable": retryable})
        # A backoff the worker waits out itself keeps the run running; a longer one suspends
        # it, and retry_at (which puts the run to sleep in the index) is what wakes it.
        retry_at = x.clock.time() + delay if delay is not None and delay > x.settings.retry_wait else None
        failed = ev.StepFailed(step_id=step_id, attempt=start.attempt, error=info, final=not retryable,
                               retry_in=delay, retry_at=retry_at)
        x.append([failed] if start_written else [start, failed])
        if delay is not None and x.telemetry.meter is not None:
            x.telemetry.retries.add(1, {"gen_ai.tool.name": tool.name})
        if delay is None:
            raise step_error(tool.name, x.recorded_error(step_id), x.run_id, step_id)
        return delay

    def timed_out_in_doubt(self, tool: Tool[Any, Any], step_id: int, exc: ToolTimeout) -> None:
        """A non-idempotent call that may still be running cannot be reconciled yet."""
        if exc.state == "running":
            key = idempotency_key(self.x.run_id, step_id)
            self.x.needs_attention(step_id, (
                f"step {step_id} ({tool.name}) timed out and is still running in the background; "
                "it is not idempotent, so Baton will neither retry nor reconcile it while it may "
                f"still take effect. Check whether it took effect (idempotency key {key}), then "
                "resolve the step."
            ))

    # -- drivers ----------------------------------------------------------------------

    def _span(self, plan: CallPlan) -> Any:
        x = self.x
        model = plan.tool.model
        if model is not None:  # a model call: the GenAI conventions' inference span
            provider, _, model_id = model.partition(":")
            return x.telemetry.span(f"chat {model_id or model}", {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model_id,
                "baton.run.id": x.run_id, "baton.step.id": plan.step_id, "baton.step.name": plan.tool.name,
            })
        return x.telemetry.span(f"execute_tool {plan.tool.name}", {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": plan.tool.name,
            "gen_ai.tool.call.id": idempotency_key(x.run_id, plan.step_id), "baton.run.id": x.run_id,
            "baton.step.id": plan.step_id, "baton.step.idempotent": plan.tool.idempotent,
        })

    def _measured(self, plan: CallPlan, started: float) -> None:
        telemetry = self.x.telemetry
        if telemetry.meter is not None:
            telemetry.step_duration.record(time.perf_counter() - started, {"gen_ai.tool.name": plan.tool.name})

    @contextmanager
    def _observed(self, plan: CallPlan) -> Iterator[None]:
        """The step's log context and, when telemetry is on, its span and duration."""
        with in_step(plan.step_id):
            if not self.x.telemetry.enabled:
                yield
                return
            started = time.perf_counter()
            try:
                with self._span(plan):
                    yield
            finally:
                self._measured(plan, started)

    def run_sync(self, plan: CallPlan) -> Any:
        if not plan.run:
            return plan.recorded()
        with self._observed(plan):
            return self._run_sync(plan)

    async def run_async(self, plan: CallPlan) -> Any:
        if not plan.run:
            return plan.recorded()
        with self._observed(plan):
            return await self._run_async(plan)

    def _run_sync(self, plan: CallPlan) -> Any:
        steps = self.attempts(plan)
        request = next(steps)
        while True:
            try:
                if isinstance(request, Wait):
                    self.x.clock.sleep(request.seconds)
                    request = steps.send(None)
                    continue
                try:
                    outcome = self.invoke_sync(plan.tool, request)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - handed to the retry loop
                    request = steps.throw(exc)
                else:
                    request = steps.send(outcome)
            except StopIteration as done:
                return done.value

    async def _run_async(self, plan: CallPlan) -> Any:
        steps = self.attempts(plan)
        request = next(steps)
        while True:
            try:
                if isinstance(request, Wait):
                    await self.x.clock.sleep_async(request.seconds)
                    request = steps.send(None)
                    continue
                try:
                    outcome = await self.invoke_async(plan.tool, request)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - handed to the retry loop
                    request = steps.throw(exc)
                else:
                    request = steps.send(outcome)
            except StopIteration as done:
                return done.value

    def invoke_sync(self, tool: Tool[Any, Any], request: Invoke) -> Any:
        kwargs = {**request.values, "idempotency_key": request.key} if tool.wants_key else request.values
        if tool.is_async:
            return run_coroutine(self.invoke_async(tool, request))
        if tool.timeout is None:
            return tool.fn(**kwargs)
        context = contextvars.copy_context()  # log lines from the tool keep their run and step
        future = self.x.pool.submit(lambda: context.run(tool.fn, **kwargs))
        for grace in (False, True):  # a call that finishes in a grace period has a known outcome
            try:
                return future.result(timeout=tool.timeout)
            except TimeoutError:
                if future.done():  # a TimeoutError of the tool's own (a socket's, say): its failure
                    return future.result()
            if not grace and future.cancel():
                raise ToolTimeout(f"did not start within {tool.timeout}s", error_type="TimeoutError",
                                  state="not_started")
        raise ToolTimeout(f"did not finish within {tool.timeout}s", error_type="TimeoutError",
                          state="running")

    async def invoke_async(self, tool: Tool[Any, Any], request: Invoke) -> Any:
        kwargs = {**request.values, "idempotency_key": request.key} if tool.wants_key else request.values
        if tool.is_async:
            task: asyncio.Future[Any] = asyncio.ensure_future(tool.fn(**kwargs))
        else:
            context = contextvars.copy_context()
            task = asyncio.get_running_loop().run_in_executor(self.x.pool, lambda: context.run(tool.fn, **kwargs))
        if tool.timeout is None:
            await asyncio.wait({task})
        else:
            await asyncio.wait({task}, timeout=tool.timeout)
        if task.done():
            if task.cancelled():  # cancelled from inside the tool, not by us: a failure
                raise RuntimeError(f"{tool.name} was cancelled")
            return task.result()
        task.cancel()
        # An async call is cancelled: it is over, though it may have taken effect. A sync one
        # in the thread pool cannot be cancelled and may still be running.
        raise ToolTimeout(f"did not finish within {tool.timeout}s", error_type="TimeoutError",
                          state="cancelled" if tool.is_async else "running")
