"""What a memory entry is, where it lives (its namespace), and what may be written.

Namespaces: a workflow names a scope, and the run's identity decides what it means, so no
run can read or write another principal's memory by naming it:

=========================  ===================================  ============================
asked for                  stored as                            seen by
=========================  ===================================  ============================
``"principal"``            ``"principal:<the run's principal>"``  runs for the same principal
``"principal/notes"``      ``"principal:<principal>/notes"``    the same, a separate shelf
``"tenant"``               ``"tenant"``                         every run of the tenant
``"tenant/faq"``           ``"tenant/faq"``                     the same, a separate shelf
=========================  ===================================  ============================

Every entry also carries its tenant (``""`` for runs without one), and every search is
confined to one tenant: the namespace never crosses tenants.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import UsageError
from ..journal import canonical_json

Embedder = Callable[[list[str]], list[list[float]]]
"""Turns texts into vectors, one per text, all of the same length (a sentence model, or any
function: ``baton.memory.sentence_embedder()`` is one)."""

SearchMode = Literal["text", "semantic", "hybrid"]

_SCOPE = re.compile(r"^(principal|tenant)(?:/([A-Za-z0-9_.-]{1,64}))?$")
_SOURCE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TEXT = 64 * 1024
"""Characters in one entry: memory holds notes and facts, not documents."""


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One remembered thing, with where it came from.

    ``trusted`` is ``False`` for anything written from a tool's output or by a model (the
    default): such text may carry instructions planted by whoever wrote the data. ``score``
    is set on search results (higher is better; comparable only within one search).
    """

    id: int
    text: str
    data: Any
    namespace: str
    tenant: str | None
    principal: str | None
    source: str
    trusted: bool
    run_id: str | None
    step_id: int | None
    created_at: float
    score: float | None = None
    embedding: tuple[float, ...] | None = field(default=None, repr=False)
    """Kept for semantic search; never part of what a search returns to a workflow."""

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON (without its embedding): how a recall is journaled."""
        return {"id": self.id, "text": self.text, "data": self.data, "namespace": self.namespace,
                "tenant": self.tenant, "principal": self.principal, "source": self.source,
                "trusted": self.trusted, "run_id": self.run_id, "step_id": self.step_id,
                "created_at": self.created_at, "score": self.score}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MemoryEntry:
        return cls(**value)


@dataclass(frozen=True, slots=True)
class NewMemory:
    """An entry to store. ``run_id``/``step_id`` are set when a run writes it (then the pair
    is unique: writing it again is a no-op), ``None`` when it is written from outside."""

    tenant: str | None
    namespace: str
    text: str
    data_json: str
    """``data`` as canonical JSON."""
    source: str
    trusted: bool
    created_at: float
    principal: str | None = None
    run_id: str | None = None
    step_id: int | None = None
    embedding: tuple[float, ...] | None = None


def resolve_namespace(scope: str, principal: str | None) -> str:
    """The stored namespace for ``scope`` as asked by a run acting for ``principal``.

    >>> resolve_namespace("principal/notes", "alice")
    'principal:alice/notes'
    >>> resolve_namespace("tenant", "alice")
    'tenant'
    """
    match = _SCOPE.match(scope) if isinstance(scope, str) else None
    if match is None:
        raise UsageError(f"memory namespace {scope!r} is not one of 'principal', 'tenant', 'principal/NAME' or "
                         "'tenant/NAME' (NAME: up to 64 letters, digits, '_', '.', '-')")
    kind, shelf = match[1], match[2]
    if kind == "tenant":
        return scope
    if not principal:
        raise UsageError(f"memory namespace {scope!r} belongs to the run's principal, and this run has none: start it "
                         "with principal=..., or use namespace='tenant'")
    # A principal's id may hold "/": escaped, so that "principal/notes" of alice is never
    # "principal" of a principal named "alice/notes".
    return f"principal:{principal.replace('%', '%25').replace('/', '%2F')}" + (f"/{shelf}" if shelf else "")


def check_text(text: Any, what: str = "memory text") -> str:
    """``text`` if both databases can store and index it, else a :class:`UsageError`."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{what} must be a non-empty string, not {text!r:.60}")
    if len(text) > MAX_TEXT:
        raise UsageError(f"{what} is {len(text)} characters long; the limit is {MAX_TEXT}")
    if "\x00" in text:
        raise UsageError(f"{what} contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode("utf-8")
    except UnicodeError:
        raise UsageError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return text


def check_source(source: Any) -> str:
    if not isinstance(source, str) or not _SOURCE.match(source):
        raise UsageError(f"memory source {source!r:.60} must be a short name such as 'workflow', 'agent' or "
                         "'tool_output'")
    return source


def encode_data(data: Any) -> str:
    """``data`` as canonical JSON, or a :class:`UsageError` saying why it cannot be stored."""
    try:
        text = canonical_json(data)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"memory data must be JSON (no NaN, infinities or objects): {exc}") from None
    return text


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise UsageError(f"a memory search's limit must be a whole number from 1 to 1000, not {limit!r}")
    return limit


def check_vectors(vectors: Any, count: int) -> list[tuple[float, ...]]:
    """What an embedder returned, checked: one finite vector per text, all of one length."""
    if not isinstance(vectors, list | tuple) or len(vectors) != count:
        raise UsageError(f"the embedder returned {len(vectors) if isinstance(vectors, list | tuple) else vectors!r} "
                         f"vectors for {count} texts")
    out = [tuple(float(v) for v in vector) for vector in vectors]
    if out and (len({len(v) for v in out}) != 1 or not out[0]):
        raise UsageError("the embedder returned vectors of different (or zero) lengths")
    if any(not math.isfinite(v) for vector in out for v in vector):
        raise UsageError("the embedder returned a vector with NaN or infinite values")
    return out
