"""The workflow's only door to the world.

Every method records what it did in the run's journal the first time, and on replay
returns the recorded answer without doing it again. In an ``async def`` workflow,
``call``, ``sleep`` and ``wait_for`` return awaitables; in a plain ``def`` workflow they
block and return the value.
"""

from __future__ import annotations

import json
import uuid as _uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import BatonError, UsageError
from ..journal import canonical_json
from ..journal import events as ev
from ..policy import parse_approvers
from ..tools import Tool
from .execution import Execution
from .stops import Abort, Suspend


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """What a person decided on a ``ctx.approval`` request. ``by`` is ``None`` when the
    request expired undecided."""

    approved: bool
    by: str | None
    reason: str

    def __bool__(self) -> bool:
        return self.approved


class Context:
    """Passed as the first argument to every workflow."""

    def __init__(self, execution: Execution, *, is_async: bool) -> None:
        self._x = execution
        self._async = is_async
        self._llm_calls = 0

    @property
    def run_id(self) -> str:
        return self._x.run_id

    @property
    def principal(self) -> str | None:
        """Who the run acts for: fixed when it started; nothing in the run can change it."""
        started = self._x.state.started
        return started.principal if started else None

    @property
    def is_replaying(self) -> bool:
        """True while the workflow is passing through steps the journal already holds."""
        return self._x.position < max(self._x.state.steps, default=0)

    def call(self, tool: Tool[Any, Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``tool`` as a durable step and return its result (or raise ``StepError``).

        The tool receives ``idempotency_key`` (stable for this run and step) if its
        signature asks for one.
        """
        if not isinstance(tool, Tool):
            raise TypeError(f"ctx.call expects a function decorated with @tool, got {tool!r}")
        plan = self._x.calls.plan(tool, args, kwargs)
        if self._async:
            return self._x.calls.run_async(plan)
        return self._x.calls.run_sync(plan)

    def sleep(self, seconds: float) -> Any:
        """A durable timer: the run may be suspended and resumed by any worker when it fires."""
        wait = self._timer(float(seconds))
        if self._async:
            return self._async_sleep(wait)
        if wait is not None:
            self._x.clock.sleep(wait[1])
            self._fire(wait[0])
        return None

    async def _async_sleep(self, wait: tuple[int, float] | None) -> None:
        if wait is not None:
            await self._x.clock.sleep_async(wait[1])
            self._fire(wait[0])

    def _timer(self, seconds: float) -> tuple[int, float] | None:
        """Returns ``None`` if the timer already fired, else (step, seconds to wait here)."""
        x = self._x
        step_id, rec = x.next_step("sleep", "sleep")
        if rec is not None and rec.fired:
            return None
        x.before_new_work(step_id)
        if rec is None:
            x.append([ev.TimerSet(step_id=step_id, fire_at=x.clock.time() + seconds)])
            rec = x.state.steps[step_id]
        assert rec.fire_at is not None
        remaining = max(0.0, rec.fire_at - x.clock.time())
        if remaining > x.settings.short_sleep:
            raise Suspend()
        return step_id, remaining

    def _fire(self, step_id: int) -> None:
        self._x.before_new_work(step_id)
        self._x.append([ev.TimerFired(step_id=step_id)])

    def wait_for(self, name: str, *, timeout: float | None = None, default: Any = None) -> Any:
        """Wait durably for the signal ``name`` (``baton signal RUN NAME --data JSON``) and
        return its data; after ``timeout`` seconds, return ``default``."""
        value = self._wait(name, timeout, default)
        if self._async:
            return _ready(value)
        return value

    def _wait(self, name: str, timeout: float | None, default: Any) -> Any:
        x = self._x
        step_id, rec = x.next_step("wait", name)
        if rec is not None and rec.completed:
            return rec.result
        if rec is not None and rec.fired:
            return default
        x.before_new_work(step_id)
        events: list[ev.Event] = []
        if rec is None:
            timeout_at = x.clock.time() + timeout if timeout is not None else None
            events.append(ev.SignalAwaited(step_id=step_id, name=name, timeout_at=timeout_at))
        else:
            timeout_at = rec.timeout_at
        for signal in x.store.pending_signals(x.run_id):
            if signal.name == name:
                data = x.sealer.open_data(json.loads(signal.data))  # sealed when it was sent
                events.append(ev.SignalReceived(step_id=step_id, name=name, data=data,
                                                signal_id=signal.signal_id))
                x.append(events)
                return data
        if timeout_at is not None and x.clock.time() >= timeout_at:
            x.append([*events, ev.TimerFired(step_id=step_id)])
            return default
        if events:
            x.append(events)
        raise Suspend()

    @contextmanager
    def evidence(self, evidence: Any) -> Iterator[None]:
        """Attach ``evidence`` (JSON) to any approval that the steps inside ask for: what a
        person deciding should see (``{"payment": "cleared", "complaint": "severity high"}``).

        >>> with ctx.evidence({"payment": payment["status"]}):   # doctest: +SKIP
        ...     ctx.call(issue_refund, order_id=order_id, amount=amount)
        """
        try:
            canonical_json(evidence)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"ctx.evidence needs JSON values (no NaN or objects): {exc}") from None
        x = self._x
        outer = x.evidence
        x.evidence = evidence
        try:
            yield
        finally:
            x.evidence = outer

    def approval(self, title: str, *, approvers: list[str] | str, evidence: Any = None,
                 expires_in: float | None = None, escalate_to: list[str] | str | None = None) -> Any:
        """Ask a person to approve ``title`` and wait durably for the answer (it may take
        days; no process waits). ``approvers`` are ``role:NAME`` or ``principal:ID`` entries
        (a bare name is a role); the run's own principal can never approve. Returns an
        :class:`ApprovalDecision`; a denial (or an expiry without escalation) is not an
        error, the workflow decides what it means."""
        decision = self._approval(title, approvers, evidence, expires_in, escalate_to)
        if self._async:
            return _ready(decision)
        return decision

    def _approval(self, title: str, approvers: list[str] | str, evidence: Any, expires_in: float | None,
                  escalate_to: list[str] | str | None) -> ApprovalDecision:
        x = self._x
        step_id, rec = x.next_step("approval", title)
        approval = rec.approval if rec is not None else None
        if approval is not None and approval.consumed:
            return ApprovalDecision(approval.status == "approved", approval.by, approval.reason)
        x.before_new_work(step_id)
        guard = x.guard
        if guard is None or not len(guard.governance.directory):
            raise Abort(BatonError("ctx.approval needs principals who can decide it: add [principals] to "
                                   "baton.toml", run_id=x.run_id, step_id=step_id))
        if approval is None:
            who = parse_approvers(",".join(approvers) if isinstance(approvers, list) else approvers,
                                  f"ctx.approval({title!r})")
            then = parse_approvers(",".join(escalate_to) if isinstance(escalate_to, list) else escalate_to or "",
                                   f"ctx.approval({title!r})")
            if not who:
                raise UsageError(f"ctx.approval({title!r}) needs approvers, e.g. approvers=\"role:manager\"")
            guard.request(step_id, title=title, tool=None, args_json={}, policies=(), approvers=who,
                          expires_after=expires_in, escalate_to=then, evidence=evidence)
            raise Suspend()
        assert rec is not None
        guard.settle_expiry(rec, approval)
        if approval.status == "approved":
            distrust = guard.untrusted_grant(approval)
            if distrust is not None:  # asked again, of people this runtime trusts
                request = approval.request
                guard.request(step_id, title=title, tool=None, args_json={}, policies=(),
                              approvers=tuple(request.approvers), expires_after=request.expires_after,
                              escalate_to=tuple(request.escalate_to), evidence=request.evidence,
                              before=[ev.ApprovalWithdrawn(step_id=step_id, approval_id=request.approval_id,
                                                           reason=distrust)])
                raise Suspend()
            x.buffer(ev.ApprovalConsumed(step_id=step_id, approval_id=approval.request.approval_id))
        return ApprovalDecision(approval.status == "approved", approval.by, approval.reason)

    def llm(self, model: Any, prompt: Any, *, system: str = "", max_tokens: int = 1024,
            temperature: float | None = None) -> Any:
        """Ask ``model`` (a ``baton.agent`` model) once, as a journaled step: replay returns the
        recorded :class:`~baton.agent.ModelResponse` without calling the model again, and a
        transient error is retried with backoff. ``prompt`` is text, or a whole
        ``ModelRequest``. For a loop in which the model chooses tools, see ``baton.agent.agent``.

        >>> answer = ctx.llm(model, f"Summarise this complaint: {text}").text   # doctest: +SKIP
        """
        from ..agent.loop import ask_model, ask_model_async
        from ..agent.messages import Message, ModelRequest

        self._llm_calls += 1  # the run's Nth ctx.llm is turn N: the same number on replay
        if isinstance(prompt, ModelRequest):
            request = prompt
        elif isinstance(prompt, str):
            request = ModelRequest(system=system, messages=(Message.user(prompt),), max_tokens=max_tokens,
                                   temperature=temperature, turn=self._llm_calls)
        else:
            raise UsageError(f"ctx.llm needs a prompt string or a ModelRequest, not {type(prompt).__name__}")
        if self._async:
            return ask_model_async(self, model, request)
        return ask_model(self, model, request)

    def now(self) -> datetime:
        """The current time, recorded once: replay returns the same instant."""
        x = self._x
        step_id, rec = x.next_step("now", "now")
        if rec is not None:
            return datetime.fromtimestamp(rec.result, UTC)
        value = x.clock.time()
        x.buffer(ev.ValueRecorded(step_id=step_id, kind="now", value=value))
        return datetime.fromtimestamp(value, UTC)

    def uuid(self) -> _uuid.UUID:
        """A random UUID, recorded once: replay returns the same one."""
        x = self._x
        step_id, rec = x.next_step("uuid", "uuid")
        if rec is not None:
            return _uuid.UUID(rec.result)
        value = _uuid.uuid4()
        x.buffer(ev.ValueRecorded(step_id=step_id, kind="uuid", value=str(value)))
        return value

    def remember(self, text: str, *, data: Any = None, namespace: str = "principal", trusted: bool = False,
                 source: str = "workflow") -> Any:
        """Write ``text`` (and JSON ``data``) to long-term memory and return the entry's id.

        ``namespace``: ``"principal"`` (the run's principal's own memory), ``"tenant"``
        (shared by the tenant's runs), or either with a shelf (``"tenant/faq"``). Text from
        a tool's output or a model is untrusted (``trusted=False``, the default); policy
        never reads memory either way. Written once, even across crashes (see
        :mod:`baton.memory`). In an ``async def`` workflow, await it.
        """
        from ..memory import steps

        entry_id = steps.remember(self._x, text, data=data, namespace=namespace, trusted=trusted, source=source)
        return _ready(entry_id) if self._async else entry_id

    def recall(self, query: str, *, limit: int = 5, namespace: str = "principal", mode: str = "text") -> Any:
        """Search long-term memory: a list of :class:`~baton.memory.MemoryEntry`, best first.

        ``mode``: ``"text"`` (full-text, any query accepted), ``"semantic"`` (by meaning:
        the runtime needs an embedder) or ``"hybrid"``. Recorded once: replay returns the
        same entries. In an ``async def`` workflow, await it.
        """
        from ..memory import steps

        found = steps.recall(self._x, query, limit=limit, namespace=namespace, mode=mode)
        return _ready(found) if self._async else found


async def _ready(value: Any) -> Any:
    return value
