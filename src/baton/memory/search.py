"""Writing and finding entries: full-text search in the database, semantic ranking in Python.

Semantic search ranks a namespace's newest :attr:`Memories.candidates` entries (2,000 by
default) by cosine similarity to the query, computed here in plain Python: fine for the
notes and facts of one principal or tenant (a few thousand entries, a few milliseconds),
not a vector database. Entries stored without an embedding (written before an embedder was
configured, or with another one) are embedded at search time, and not stored.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, get_args

from ..errors import UsageError
from .entries import (
    Embedder,
    MemoryEntry,
    NewMemory,
    SearchMode,
    check_limit,
    check_source,
    check_text,
    check_vectors,
    encode_data,
)

if TYPE_CHECKING:
    from ..store import Store

RRF_K = 60
"""Reciprocal rank fusion's constant: a hybrid score is the sum of 1/(60 + rank) over both
rankings, so an entry near the top of either ranks high (Cormack et al., 2009)."""


def cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Cosine similarity; 0 when either vector is all zeros."""
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norms if norms else 0.0


def check_mode(mode: Any) -> SearchMode:
    if mode not in get_args(SearchMode):
        raise UsageError(f"memory search mode {mode!r} is not one of {', '.join(get_args(SearchMode))}")
    result: SearchMode = mode
    return result


class Memories:
    """Long-term memory: the store's entries, and the embedder that gives them vectors.

    Used by ``ctx.remember``/``ctx.recall`` inside runs, and directly for what happens
    outside them (an operator seeding facts, a console listing or erasing entries). Here
    ``namespace`` is the stored name (``"principal:alice"``, ``"tenant/faq"``: see
    :func:`~baton.memory.resolve_namespace`).

    >>> memories = Memories(baton.store)                                      # doctest: +SKIP
    >>> memories.add("Refunds over $500 need a manager", tenant="acme", namespace="tenant",
    ...              source="operator", trusted=True)                         # doctest: +SKIP
    """

    def __init__(self, store: Store, embedder: Embedder | None = None, *, candidates: int = 2000) -> None:
        self.store = store
        self.embedder = embedder
        self.candidates = candidates

    def embed(self, texts: list[str]) -> list[tuple[float, ...]]:
        if self.embedder is None:
            raise UsageError("semantic memory search needs an embedder: baton.memory.use_embedder(runtime, "
                             "embedder), e.g. baton.memory.sentence_embedder()")
        return check_vectors(self.embedder(texts), len(texts)) if texts else []

    def add(self, text: str, *, tenant: str | None, namespace: str, data: Any = None, principal: str | None = None,
            source: str = "operator", trusted: bool = False, created_at: float | None = None,
            run_id: str | None = None, step_id: int | None = None) -> int:
        """Store an entry (with its embedding, if there is an embedder) and return its id.
        With ``run_id`` and ``step_id``, storing it again returns the first one's id."""
        entry = self.entry(text, tenant=tenant, namespace=namespace, data=data, principal=principal, source=source,
                           trusted=trusted, created_at=time.time() if created_at is None else created_at,
                           run_id=run_id, step_id=step_id)
        return self.store.remember(entry)

    def entry(self, text: str, *, tenant: str | None, namespace: str, data: Any, principal: str | None, source: str,
              trusted: bool, created_at: float, run_id: str | None, step_id: int | None) -> NewMemory:
        """The entry to store, checked, with its embedding."""
        check_text(text)
        if not isinstance(trusted, bool):
            raise UsageError(f"trusted must be True or False, not {trusted!r}")
        encoded = encode_data(data)
        embedding = self.embed([text])[0] if self.embedder is not None else None
        return NewMemory(tenant=tenant, namespace=namespace, text=text, data_json=encoded, source=check_source(source),
                         trusted=trusted, created_at=created_at, principal=principal, run_id=run_id,
                         step_id=step_id, embedding=embedding)

    def search(self, query: str, *, tenant: str | None, namespace: str, limit: int = 5,
               mode: SearchMode = "text") -> list[MemoryEntry]:
        """The entries that best match ``query``, best first, each with its ``score``.

        ``text``: full-text, by the words of the query (any text is accepted; one with no
        words finds nothing). ``semantic``: by meaning, with the embedder. ``hybrid``: both
        rankings fused, so that an entry high in either comes first.
        """
        if not isinstance(query, str):
            raise UsageError(f"a memory search's query must be a string, not {query!r:.60}")
        check_limit(limit)
        mode = check_mode(mode)
        if mode == "text":
            found = self.store.search_memory(tenant, namespace, query, limit)
            return [replace(entry, embedding=None) for entry in found]
        semantic = self._semantic(query, tenant, namespace)
        if mode == "semantic":
            return [replace(entry, score=score, embedding=None) for entry, score in semantic[:limit]]
        text = self.store.search_memory(tenant, namespace, query, self.candidates)
        fused: dict[int, tuple[MemoryEntry, float]] = {}
        for ranking in (text, [entry for entry, _ in semantic]):
            for rank, entry in enumerate(ranking, start=1):
                _, score = fused.get(entry.id, (entry, 0.0))
                fused[entry.id] = (entry, score + 1.0 / (RRF_K + rank))
        best = sorted(fused.values(), key=lambda pair: (-pair[1], -pair[0].id))[:limit]
        return [replace(entry, score=score, embedding=None) for entry, score in best]

    def _semantic(self, query: str, tenant: str | None, namespace: str) -> list[tuple[MemoryEntry, float]]:
        """The namespace's candidates with their similarity to ``query``, best first."""
        if not query.strip():
            return []
        vector = self.embed([check_text(query, "a semantic query")])[0]
        candidates = self.store.memories(tenant, namespace, limit=self.candidates)
        stale = [i for i, entry in enumerate(candidates)
                 if entry.embedding is None or len(entry.embedding) != len(vector)]
        for i, fresh in zip(stale, self.embed([candidates[i].text for i in stale]), strict=True):
            candidates[i] = replace(candidates[i], embedding=fresh)
        scored = [(entry, cosine(vector, entry.embedding)) for entry in candidates if entry.embedding is not None]
        scored.sort(key=lambda pair: (-pair[1], -pair[0].id))
        return scored

    def recent(self, *, tenant: str | None, namespace: str | None = None, run_id: str | None = None,
             limit: int = 100) -> list[MemoryEntry]:
        """A tenant's entries, newest first (in ``namespace``, or written by ``run_id``)."""
        return [replace(entry, embedding=None)
                for entry in self.store.memories(tenant, namespace, run_id=run_id, limit=limit)]

    def forget(self, memory_id: int, *, tenant: str | None) -> bool:
        """Delete one entry of the tenant's; ``False`` if it has none with that id."""
        return self.store.forget_memory(tenant, memory_id)

    def forget_namespace(self, namespace: str, *, tenant: str | None) -> int:
        return self.store.forget_namespace(tenant, namespace)

    def forget_run(self, run_id: str) -> int:
        """Delete what a run remembered (part of erasing a person's data)."""
        return self.store.forget_run_memories(run_id)
