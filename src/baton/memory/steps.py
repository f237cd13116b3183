"""``ctx.remember`` and ``ctx.recall`` as durable steps.

``remember`` writes the entry keyed by the run and step, then journals its id (with the next
append, like ``ctx.now``). A crash in between loses only the journal record: the step runs
again on resume, its insert finds the row it wrote and returns that id, so nothing is
written twice. ``recall`` searches, then journals what it found, sealed with the run's data
key (recalled text may hold anything a person said): replay returns the same entries without
searching, even if memory has changed since.

On replay the step's arguments are checked against a fingerprint (a keyed hash) recorded
with it: a workflow that now remembers other text, or asks another question, at the same
position is reported as non-deterministic rather than handed a stale answer.

The agent loop writes memory through the same functions, with ``source="agent"`` or
``"tool_output"`` and ``trusted=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..engine.stops import Abort, StoreFailed
from ..errors import DataErased, NonDeterminismError, StoreError, UsageError
from ..journal import events as ev
from ..sensitive.seal import Sealer, masked
from .entries import Embedder, MemoryEntry, check_limit, check_source, check_text, encode_data, resolve_namespace
from .search import Memories, check_mode

if TYPE_CHECKING:
    from ..engine.execution import Execution
    from ..runtime import Baton
    from ..store import Store

MAX_RECALL = 100
"""Entries one ``ctx.recall`` may return: they are all journaled."""

_EMBEDDERS: WeakKeyDictionary[object, Embedder] = WeakKeyDictionary()


def use_embedder(runtime: Baton | Store, embedder: Embedder | None) -> None:
    """Give a runtime (or a store) an embedder: from now on its runs store entries with
    their embeddings and may ``ctx.recall(..., mode="semantic")``. ``None`` takes it away.

    >>> use_embedder(baton, sentence_embedder())   # doctest: +SKIP
    """
    store = getattr(runtime, "store", runtime)
    if embedder is None:
        _EMBEDDERS.pop(store, None)
    else:
        _EMBEDDERS[store] = embedder


def embedder_of(store: object) -> Embedder | None:
    return _EMBEDDERS.get(store)


def _memories(x: Execution) -> Memories:
    return Memories(x.store, embedder_of(x.store))


def _identity(x: Execution) -> tuple[str | None, str | None]:
    started = x.state.started
    return (started.principal, started.tenant) if started is not None else (None, None)


def _check_replay(x: Execution, step_id: int, recorded: Any, fingerprint: str, what: str) -> None:
    if not isinstance(recorded, dict) or recorded.get("fingerprint") != fingerprint:
        x.nondeterminism = NonDeterminismError(
            f"step {step_id}: the journal holds a ctx.{what} with other arguments than the workflow now passes; "
            "the workflow code changed or is not deterministic", run_id=x.run_id, step_id=step_id)
        raise Abort(x.nondeterminism)


def remember(x: Execution, text: str, *, data: Any = None, namespace: str = "principal", trusted: bool = False,
             source: str = "workflow") -> int:
    """Write an entry for the run's principal (or tenant) and return its id; see
    :meth:`baton.Context.remember`."""
    step_id, rec = x.next_step("remember", "remember")
    principal, tenant = _identity(x)
    stored_namespace = resolve_namespace(namespace, principal)
    check_text(text)
    check_source(source)
    if not isinstance(trusted, bool):
        raise UsageError(f"ctx.remember(trusted=...) must be True or False, not {trusted!r}")
    encoded = encode_data(data)
    fingerprint = x.sealer.fingerprint([namespace, text, encoded, source, trusted])
    if rec is not None:
        _check_replay(x, step_id, rec.result, fingerprint, "remember")
        return int(rec.result["id"])
    x.before_new_work(step_id)
    memories = _memories(x)
    # Memory is shared across runs and searched as text, so it cannot be sealed with this
    # run's key: what is sensitive in the run (detected, or declared) is masked instead.
    text = x.sealer.redact(text)
    data = masked(x.sealer.seal_data(data)) if data is not None else None
    entry = memories.entry(text, tenant=tenant, namespace=stored_namespace, data=data, principal=principal,
                           source=source, trusted=trusted, created_at=x.clock.time(), run_id=x.run_id,
                           step_id=step_id)
    try:
        entry_id = x.store.remember(entry)
    except Exception as exc:  # like a crash: the step is redone on resume, writing nothing twice
        raise StoreFailed(exc) from exc
    x.buffer(ev.ValueRecorded(step_id=step_id, kind="remember",
                              value={"id": entry_id, "namespace": stored_namespace, "fingerprint": fingerprint}))
    return entry_id


def recall(x: Execution, query: str, *, limit: int = 5, namespace: str = "principal",
           mode: str = "text") -> list[MemoryEntry]:
    """Search the run's principal's (or tenant's) memory; see :meth:`baton.Context.recall`."""
    step_id, rec = x.next_step("recall", "recall")
    principal, tenant = _identity(x)
    stored_namespace = resolve_namespace(namespace, principal)
    if not isinstance(query, str):
        raise UsageError(f"ctx.recall needs a query string, not {query!r:.60}")
    if check_limit(limit) > MAX_RECALL:
        raise UsageError(f"ctx.recall returns at most {MAX_RECALL} entries, not {limit}")
    search_mode = check_mode(mode)
    fingerprint = x.sealer.fingerprint([namespace, query, limit, mode])
    if rec is not None:
        _check_replay(x, step_id, rec.result, fingerprint, "recall")
        return _entries(x.sealer, rec.result["entries"])
    x.before_new_work(step_id)
    memories = _memories(x)
    try:
        found = memories.search(query, tenant=tenant, namespace=stored_namespace, limit=limit, mode=search_mode)
    except StoreError as exc:  # like a crash: the step is redone on resume (an embedder's error is the workflow's)
        raise StoreFailed(exc) from exc
    value = [entry.to_json() for entry in found]
    try:
        sealed = x.sealer.seal_value(value, "memory")
    except DataErased as exc:
        raise Abort(exc) from None
    x.buffer(ev.ValueRecorded(step_id=step_id, kind="recall", value={"fingerprint": fingerprint,
                                                                     "entries": sealed}))
    return [MemoryEntry.from_json(item) for item in value]


def _entries(sealer: Sealer, recorded: Any) -> list[MemoryEntry]:
    return [MemoryEntry.from_json(item) for item in sealer.open_data(recorded)]
