"""Pydantic models built from function signatures, shared by tools and workflows: both
validate what they are given before anything runs, and record the validated JSON."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import BatonError


def evaluated_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with string annotations (``from __future__ import annotations``)
    evaluated, so that Pydantic sees the real types. Names that cannot be resolved from the
    function's module (types local to another function) are left as strings."""
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, AttributeError, SyntaxError, TypeError):
        return inspect.signature(fn)


def model_from_parameters(name: str, params: Iterable[inspect.Parameter]) -> type[BaseModel]:
    """A model with one field per named parameter (``*args``/``**kwargs`` are skipped)."""
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    # NaN and infinities are not JSON: refuse them here, before anything runs.
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
    return create_model(name, __config__=config, **fields)


def validate(model: type[BaseModel], data: dict[str, Any], *, what: str,
             error: type[BatonError]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check ``data`` against ``model``. Returns (Python values, JSON values); raises
    ``error`` with one message naming every bad field."""
    try:
        instance = model.__pydantic_validator__.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()
        )
        raise error(f"invalid {what}: {problems}") from None
    return dict(instance.__dict__), model.__pydantic_serializer__.to_python(instance, mode="json")
