"""The typed events of a run's journal.

A run's journal is the only place its state lives; everything else (the run index, the
timeline, the replay table) is a fold of these events. Events are immutable Pydantic models.
Their ``type`` is the class name and is stored next to the data, not inside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, JsonValue

from .encoding import canonical_json

StepKind = Literal["call", "sleep", "wait", "now", "uuid", "approval", "remember", "recall"]


class ErrorInfo(BaseModel):
    """A failure as it is recorded: enough for a person to act and for replay to re-raise."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    retryable: bool = False
    code: str | None = None


# Bases that only share fields between events; never stored themselves.
_SHARED_FIELDS = frozenset({"StepCall"})


def _holds_model(annotation: Any) -> bool:
    """Does a field's type contain a nested model (whose ``__dict__`` is not JSON)?"""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_model(arg) for arg in get_args(annotation))


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type_name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Event]]] = {}
    json_native: ClassVar[bool] = True
    """Every field holds plain JSON (no nested models), so ``__dict__`` is the JSON form."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.type_name = cls.__name__
        if cls.__name__ not in _SHARED_FIELDS:
            Event.registry[cls.__name__] = cls

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.json_native = not any(_holds_model(f.annotation) for f in cls.model_fields.values())

    def to_json(self) -> dict[str, Any]:
        """The event's data as JSON values (what is stored and hashed)."""
        if self.json_native:
            return self.__dict__
        return self.model_dump(mode="json")

    def encoded(self) -> str:
        """The event's data in canonical JSON, computed once. Raises ``ValueError`` or
        ``TypeError`` if the data is not JSON (NaN, infinities, foreign objects)."""
        private = self.__pydantic_private__
        if private is None:
            return canonical_json(self.to_json())
        data: str | None = private.get("json")
        if data is None:
            data = private["json"] = canonical_json(self.to_json())
        return data

    def __eq__(self, other: object) -> bool:
        # By type and data only: an event built by ``trusted`` (which caches its encoding)
        # equals the same event validated or decoded.
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.encoded()))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        object.__setattr__(copy, "__pydantic_private__", None)  # the cached encoding is stale
        return copy

    @classmethod
    def trusted(cls, **fields: Any) -> Self:
        """Build an event from values the engine has already checked, without validating
        them again: the hot path of every step. All fields must be given."""
        event = cls.__new__(cls)
        object.__setattr__(event, "__dict__", fields)
        object.__setattr__(event, "__pydantic_fields_set__", set(fields))
        object.__setattr__(event, "__pydantic_extra__", None)
        object.__setattr__(event, "__pydantic_private__", {"json": None})
        return event


# -- the run ---------------------------------------------------------------------------


class RunStarted(Event):
    workflow: str
    workflow_ref: str
    input: dict[str, JsonValue]
    principal: str | None = None
    tenant: str | None = None
    limits: dict[str, JsonValue] | None = None
    """The run's budget (``baton.Limits``), fixed when it starts."""


class RunRecovered(Event):
    """A worker took over a run whose previous owner died or lost its lease.

    Appending it moves the journal head, which fences off the previous owner for good.
    """

    worker: str
    previous_owner: str | None
    reason: str


class RunCompleted(Event):
    result: JsonValue


class RunFailed(Event):
    error: ErrorInfo


class RunCancelled(Event):
    reason: str


class NeedsAttention(Event):
    """The run cannot go on without a person: e.g. a non-idempotent step is in doubt."""

    step_id: int
    reason: str


# -- steps -----------------------------------------------------------------------------


class StepCall(Event):
    """What every attempt of a tool call records: which call, with what, under which key.
    Not an event of its own."""

    step_id: int
    kind: StepKind
    name: str
    args: dict[str, JsonValue]
    attempt: int = 1
    idempotency_key: str
    role: str | None = None
    """The role the tool runs under (``@tool(role=...)``), if it declares one."""


class StepStarted(StepCall):
    """A step's intent. For a non-idempotent tool it is durable before the call is made."""

    idempotent: bool


class StepCompleted(Event):
    step_id: int
    result: JsonValue


class StepRan(StepCall):
    """An idempotent call that ran and returned, in one event. Its intent needs no record of
    its own: were it lost in a crash, the call would simply be made again with the same key."""

    result: JsonValue


class StepFailed(Event):
    """An attempt failed. ``final`` means no more attempts will be made; otherwise the next
    comes ``retry_in`` seconds later. ``retry_at`` is set when that backoff is long enough to
    suspend the run: the next attempt is due then, whoever makes it."""

    step_id: int
    attempt: int
    error: ErrorInfo
    final: bool
    retry_in: float | None = None
    retry_at: float | None = None


class StepReconciled(Event):
    """An in-doubt step's tool was asked whether the call took effect."""

    step_id: int
    applied: bool
    result: JsonValue = None


class StepResolved(Event):
    """A person settled an in-doubt step: it took effect (with ``result``) or it did not."""

    step_id: int
    applied: bool
    result: JsonValue = None
    by: str
    note: str = ""


class ValueRecorded(Event):
    """A replay-safe value (``ctx.now()``, ``ctx.uuid()``) recorded on first execution. Also
    what ``ctx.remember`` wrote (the entry's id) and what ``ctx.recall`` found (the entries,
    sealed with the run's key), so that replay returns the same answer without searching."""

    step_id: int
    kind: Literal["now", "uuid", "remember", "recall"]
    value: JsonValue


class TimerSet(Event):
    step_id: int
    fire_at: float


class TimerFired(Event):
    step_id: int


class SignalAwaited(Event):
    step_id: int
    name: str
    timeout_at: float | None = None


class SignalReceived(Event):
    step_id: int
    name: str
    data: JsonValue
    signal_id: int | None = None


class Compensated(Event):
    step_id: int
    name: str
    ok: bool
    error: ErrorInfo | None = None


# -- governance ------------------------------------------------------------------------


PolicyEffect = Literal["allow", "deny", "approval"]


class PolicyDecided(Event):
    """What policy said about a tool step, before it ran, and which policies said it.

    ``effect`` is what is enforced. ``shadow_effect`` is what the policies in shadow mode
    would have decided, when that differs (they are journaled, never enforced)."""

    step_id: int
    tool: str
    args: dict[str, JsonValue]
    principal: str | None
    role: str | None
    action: str
    resource: str
    effect: PolicyEffect
    policies: list[str]
    errors: list[str] = []
    shadow_effect: PolicyEffect | None = None
    shadow_policies: list[str] = []


class ApprovalRequested(Event):
    """The step waits for a person. ``args_hash`` binds the request to the exact arguments:
    an approval never applies to a call with other arguments."""

    step_id: int
    approval_id: str
    title: str
    tool: str | None
    args: dict[str, JsonValue]
    args_hash: str
    policies: list[str]
    evidence: JsonValue = None
    requester: str | None
    tenant: str | None
    approvers: list[str]
    """Who may decide: ``role:NAME`` or ``principal:ID`` entries; one match is enough."""
    expires_at: float
    expires_after: float
    """How long the request waits (and, escalated, waits again)."""
    escalate_to: list[str] = []
    """Who may decide once the request has expired; empty: expiry denies it."""


class ApprovalGranted(Event):
    step_id: int
    approval_id: str
    by: str
    reason: str


class ApprovalDenied(Event):
    """A person said no, or (``by`` is ``None``) the request expired."""

    step_id: int
    approval_id: str
    by: str | None
    reason: str


class ApprovalEscalated(Event):
    """The request expired undecided and now waits for the escalation approvers."""

    step_id: int
    approval_id: str
    approvers: list[str]
    expires_at: float


class ApprovalWithdrawn(Event):
    """The workflow asked for the step with other arguments: the request no longer applies."""

    step_id: int
    approval_id: str
    reason: str


class ApprovalConsumed(Event):
    """The granted approval is used, in the same append as the step's start: exactly once."""

    step_id: int
    approval_id: str


APPROVAL_EVENTS = (ApprovalRequested, ApprovalGranted, ApprovalDenied, ApprovalEscalated,
                   ApprovalWithdrawn, ApprovalConsumed)


def event_class(type_name: str) -> type[Event]:
    try:
        return Event.registry[type_name]
    except KeyError:
        raise ValueError(f"unknown event type {type_name!r}") from None


TERMINAL_EVENTS = (RunCompleted, RunFailed, RunCancelled)
