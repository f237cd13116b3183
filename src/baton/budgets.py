"""Per-run limits: steps, wall-clock lifetime, spend and model tokens.

Limits are fixed when a run starts (they are written in its first event) and checked
before every tool step: a run that would exceed one fails with a reason naming it, before
the step that would exceed it. Spend comes from each tool's ``cost`` function (e.g. the
refund amount); tokens from its ``tokens`` function, known only once a call returned, so
the token limit stops the run before the next step once it is reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import UsageError


@dataclass(frozen=True, slots=True)
class Limits:
    """``None`` means no limit."""

    max_steps: int | None = None
    max_seconds: float | None = None
    max_spend: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise UsageError(f"limit {f.name} must be a number of 0 or more, not {value!r}")
            if f.name in ("max_steps", "max_tokens") and not float(value).is_integer():
                raise UsageError(f"limit {f.name} must be a whole number, not {value!r}")

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def merged(self, other: Limits | None) -> Limits:
        """These limits, with ``other``'s where it sets one."""
        if other is None:
            return self
        return Limits(**{f.name: getattr(other, f.name) if getattr(other, f.name) is not None
                         else getattr(self, f.name) for f in fields(self)})

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, source: str = "limits") -> Limits:
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"{source}: unknown limit {sorted(unknown)[0]!r} "
                             f"(expected {', '.join(sorted(known))})")
        return cls(**dict(data))


@dataclass(slots=True)
class Usage:
    """What a run has used so far, as the budget counts it."""

    steps: int = 0
    spend: float = 0.0
    tokens: int = 0


def exceeded(limits: Limits, usage: Usage, *, age: float, cost: float) -> str | None:
    """Why the next step (costing ``cost``) may not run, or ``None`` if it may."""
    if limits.max_steps is not None and usage.steps + 1 > limits.max_steps:
        return f"the run reached its limit of {limits.max_steps} steps"
    if limits.max_seconds is not None and age > limits.max_seconds:
        return f"the run is older than its limit of {limits.max_seconds:g}s ({age:.1f}s)"
    if limits.max_spend is not None and usage.spend + cost > limits.max_spend + 1e-9:
        return (f"the step would bring the run's spend to {usage.spend + cost:g}, over its limit of "
                f"{limits.max_spend:g} (spent so far: {usage.spend:g})")
    if limits.max_tokens is not None and usage.tokens >= limits.max_tokens:
        return f"the run used {usage.tokens} model tokens, its limit is {limits.max_tokens}"
    return None
