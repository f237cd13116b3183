"""Tools: the only way a workflow touches the world.

``@tool`` turns a typed function into a :class:`Tool`: its arguments are validated by a
Pydantic model built from the signature before any call (bad arguments never reach the
function), its JSON Schema is available for models, and the runtime gives it a timeout,
retries with exponential backoff and jitter, a stable idempotency key, and optional
``compensate`` (undo) and ``reconcile`` ("did the call with key K take effect?") hooks.
"""

from __future__ import annotations

import functools
import inspect
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from pydantic import BaseModel, TypeAdapter

from .aio import run_coroutine
from .errors import ToolValidationError
from .sensitive.seal import hints_of
from .signatures import evaluated_signature, model_from_parameters, validate

P = ParamSpec("P")
R = TypeVar("R")

IDEMPOTENCY_KEY = "idempotency_key"


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What a ``reconcile`` hook answers: whether the call took effect, and its result."""

    applied: bool
    result: Any = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` extra attempts after the first; delays grow as ``backoff * 2**n`` up to
    ``max_backoff``, each scaled by a random factor in [0.5, 1) so that retries spread out.

    An exception is retried if it is an instance of ``retry_on`` and not of ``give_up_on``,
    and it does not carry ``retryable = False``.
    """

    retries: int = 0
    backoff: float = 0.5
    max_backoff: float = 30.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def is_retryable(self, exc: BaseException) -> bool:
        if getattr(exc, "retryable", True) is False:
            return False
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.give_up_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return float(base * (0.5 + random.random() / 2))


def _non_finite(value: Any, depth: int = 0) -> bool:
    """Is there a NaN or an infinity anywhere in ``value``?"""
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth > 100 or isinstance(value, str | int | bool) or value is None:
        return False
    if isinstance(value, dict):
        return any(_non_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_non_finite(v, depth + 1) for v in value)
    if isinstance(value, BaseModel):
        return any(_non_finite(v, depth + 1) for v in value.__dict__.values())
    return False


@functools.lru_cache(maxsize=1024)
def _accepted(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names ``fn`` accepts; ``None`` if it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


def _call_with_accepted(fn: Callable[..., Any], values: dict[str, Any]) -> Any:
    """Call ``fn`` with the subset of ``values`` its signature accepts."""
    names = _accepted(fn)
    if names is None:
        return fn(**values)
    return fn(**{k: v for k, v in values.items() if k in names})


@dataclass(eq=False)
class Tool(Generic[P, R]):
    """A function the runtime may call on a workflow's behalf. Create with :func:`tool`."""

    fn: Callable[P, R]
    name: str
    idempotent: bool = False
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensate: Callable[..., Any] | None = None
    reconcile: Callable[..., Any] | None = None
    description: str = ""
    role: str | None = None
    """The role the tool runs under: recorded on each step and shown to policy."""
    resource: str | Callable[..., tuple[str, str]] | None = None
    """What policy sees the call act on: ``"Order::{order_id}"`` (formatted with the
    arguments) or a function of the arguments returning (type, id). Default ``Tool::NAME``."""
    cost: Callable[..., float] | None = None
    """The spend of a call, from its arguments (e.g. the refund amount), for budgets and policy."""
    tokens: Callable[[Any], int] | None = None
    """The model tokens a call used, from its result, for the run's token budget."""
    sensitive: tuple[str, ...] = ()
    """Keys whose values are sensitive wherever they appear in the arguments or result,
    besides parameters and fields marked ``Annotated[..., Sensitive]``."""
    read_only: bool = False
    """The tool changes nothing (a lookup). Shown to policy; an agent does not pin its results as facts."""
    destructive: bool = False
    """The tool may destroy or overwrite something (MCP's ``destructiveHint``). Shown to policy."""
    model: str | None = None
    """Set on a model step (the agent loop's): the model it calls, for a GenAI ``chat`` span."""
    governed: bool = True
    """Policy decides each call. Model calls are not governed (they act on nothing); the run's
    step and token limits still count them."""

    def __post_init__(self) -> None:
        signature = evaluated_signature(self.fn)
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.wants_key = IDEMPOTENCY_KEY in signature.parameters
        params = [p for p in signature.parameters.values() if p.name != IDEMPOTENCY_KEY]
        self._positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.args_model = model_from_parameters(f"{self.name}_args", params)
        returns = signature.return_annotation
        self.result_adapter: TypeAdapter[Any] = TypeAdapter(
            Any if returns is inspect.Signature.empty else returns
        )
        if not self.description:
            self.description = inspect.getdoc(self.fn) or ""
        self.hints = hints_of({p.name: p.annotation for p in params}, returns, self.sensitive)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly, outside any run (handy in unit tests)."""
        return self.fn(*args, **kwargs)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the tool's arguments, as a model would be shown it."""
        schema = self.args_model.model_json_schema()
        schema["title"] = self.name
        if self.description:
            schema["description"] = self.description
        return schema

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge positional arguments into keywords, by the function's parameter names."""
        if not args:
            return kwargs
        if len(args) > len(self._positional):
            raise ToolValidationError(
                f"{self.name}() takes {len(self._positional)} positional arguments "
                f"but {len(args)} were given"
            )
        merged = dict(zip(self._positional, args, strict=False))
        for key in kwargs:
            if key in merged:
                raise ToolValidationError(f"{self.name}() got multiple values for argument {key!r}")
        merged.update(kwargs)
        return merged

    def validate(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check arguments against the signature. Returns (python values, JSON values)."""
        return validate(self.args_model, kwargs, what=f"arguments for {self.name}", error=ToolValidationError)

    def encode_result(self, value: Any) -> Any:
        """The result as JSON values. NaN and infinities raise ``ValueError`` (Pydantic would
        quietly turn them into ``null``)."""
        if _non_finite(value):
            raise ValueError(f"{self.name} returned NaN or an infinity, which JSON cannot hold")
        return self.result_adapter.dump_python(value, mode="json")

    def decode_result(self, value: Any) -> Any:
        return self.result_adapter.validate_python(value)

    def resource_of(self, values: dict[str, Any]) -> tuple[str, str]:
        """The (entity type, id) this call acts on, as policy sees it."""
        if self.resource is None:
            return ("Tool", self.name)
        if callable(self.resource):
            kind, ident = _call_with_accepted(self.resource, values)
            return str(kind), str(ident)
        kind, sep, template = self.resource.rpartition("::")
        if not sep or not kind:
            raise ValueError(f"resource of {self.name} must look like 'Order::{{order_id}}'")
        return kind, template.format(**values)

    def cost_of(self, values: dict[str, Any]) -> float:
        if self.cost is None:
            return 0.0
        value = float(_call_with_accepted(self.cost, values))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"cost of {self.name} must be a finite number of 0 or more, not {value}")
        return value

    def tokens_of(self, result: Any) -> int:
        return 0 if self.tokens is None else int(self.tokens(result))

    def run_compensation(self, args: dict[str, Any], result: Any, key: str) -> Any:
        assert self.compensate is not None
        values = {**args, "result": result, IDEMPOTENCY_KEY: f"{key}:compensate"}
        outcome = _call_with_accepted(self.compensate, values)
        if inspect.isawaitable(outcome):
            return run_coroutine(outcome)
        return outcome

    def run_reconcile(self, args: dict[str, Any], key: str) -> Reconciled:
        assert self.reconcile is not None
        outcome = _call_with_accepted(self.reconcile, {**args, IDEMPOTENCY_KEY: key})
        if inspect.isawaitable(outcome):
            outcome = run_coroutine(outcome)
        if not isinstance(outcome, Reconciled):
            raise TypeError(
                f"reconcile hook of {self.name} must return baton.Reconciled, not {type(outcome).__name__}"
            )
        return outcome


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    idempotent: bool = False,
    retries: int = 0,
    timeout: float | None = None,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    give_up_on: tuple[type[BaseException], ...] = (),
    compensate: Callable[..., Any] | None = None,
    reconcile: Callable[..., Any] | None = None,
    role: str | None = None,
    resource: str | Callable[..., tuple[str, str]] | None = None,
    cost: Callable[..., float] | None = None,
    tokens: Callable[[Any], int] | None = None,
    sensitive: Iterable[str] = (),
    read_only: bool = False,
    destructive: bool = False,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    idempotent: bool = False,
    retries: int = 0,
    timeout: float | None = None,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    give_up_on: tuple[type[BaseException], ...] = (),
    compensate: Callable[..., Any] | None = None,
    reconcile: Callable[..., Any] | None = None,
    role: str | None = None,
    resource: str | Callable[..., tuple[str, str]] | None = None,
    cost: Callable[..., float] | None = None,
    tokens: Callable[[Any], int] | None = None,
    sensitive: Iterable[str] = (),
    read_only: bool = False,
    destructive: bool = False,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Declare a tool.

    ``idempotent=True`` promises that calling twice with the same ``idempotency_key`` has
    the effect of calling once; Baton then retries an interrupted call. Without it, Baton
    records the intent before calling and never repeats an interrupted call on a guess: it
    asks ``reconcile`` or pauses the run for a person.

    For governance: ``role`` is the role the tool runs under, ``resource`` what policy sees
    it act on (``"Order::{order_id}"``), ``cost`` its spend from its arguments and
    ``tokens`` the model tokens it used, from its result. ``read_only`` and
    ``destructive`` describe what the tool does to the world; policy sees both
    (``context.tool.read_only``).

    ``sensitive`` names keys whose values are sealed wherever they appear in the arguments
    or the result (as are parameters and fields marked ``Annotated[str, Sensitive]``).

    >>> @tool(idempotent=True, retries=3, timeout=5.0)
    ... def issue_refund(order_id: str, amount: float, *, idempotency_key: str) -> dict: ...
    """

    def wrap(f: Callable[P, R]) -> Tool[P, R]:
        return Tool(
            fn=f,
            name=name or f.__name__,
            idempotent=idempotent,
            timeout=timeout,
            retry=RetryPolicy(retries, backoff, max_backoff, retry_on, give_up_on),
            compensate=compensate,
            reconcile=reconcile,
            role=role,
            resource=resource,
            cost=cost,
            tokens=tokens,
            sensitive=tuple(sensitive),
            read_only=read_only,
            destructive=destructive,
        )

    return wrap(fn) if fn is not None else wrap
