"""Long-term memory: what runs learn, kept across runs, in the same database as the journal.

A workflow writes with ``ctx.remember(text, data=..., namespace=...)`` and searches with
``ctx.recall(query, namespace=..., mode=...)``. Both are durable steps: replay returns what
the first execution got, and a crash never writes an entry twice (:mod:`.steps`).

Where entries live (:mod:`.entries`): ``namespace="principal"`` (the default) is the run's
principal's own memory, ``"tenant"`` is shared by every run of the tenant, and either may
name a shelf (``"principal/preferences"``, ``"tenant/faq"``). The run's identity resolves the
name, so no workflow, and nothing a model writes, can reach another principal's or another
tenant's memory.

Provenance: every entry records who wrote it (``principal``), the run and step that did
(``run_id``, ``step_id``), when, what kind of writer (``source``: ``"workflow"``,
``"agent"``, ``"tool_output"``, ``"operator"``) and whether it is ``trusted``.

Trust: text that came from a tool's output or from a model may carry instructions planted
by whoever wrote that data, so it is stored ``trusted=False`` (the default). Mark an entry
trusted only when your own code vouches for it. **Policy never reads memory**: the facts
Cedar policies see are derived from the journal (refunds issued, approvals granted), never
from memory entries, so no memory, trusted or not, can satisfy a policy condition. (A value
a workflow passes on to a tool is judged by policy as an argument, like any other.)

Search (:mod:`.search`): ``mode="text"`` (the default) is full-text search in the database
(SQLite FTS5 ranked by bm25, PostgreSQL ``tsvector`` ranked by ``ts_rank``), any query text
accepted; ``"semantic"`` ranks by cosine similarity of embeddings, computed in Python over
the namespace's newest 2,000 entries (fine for modest sizes); ``"hybrid"`` fuses both. An
:data:`Embedder` is any ``list[str] -> list[list[float]]`` function, given to a runtime with
:func:`use_embedder`; :func:`sentence_embedder` is a real model (the ``semantic`` extra).

Erasure: an entry's text is stored in clear (it must be searchable), so erasing a person's
data must delete it: ``store.forget_run_memories(run_id)`` deletes what a run wrote, with no
copy of its words left in the search index. What a run recalled is journaled under that
run's key, and goes when its key is destroyed. Pruning a run keeps its memories.
"""

from .embeddings import sentence_embedder
from .entries import Embedder, MemoryEntry, NewMemory, SearchMode, resolve_namespace
from .search import Memories, cosine
from .steps import embedder_of, use_embedder

__all__ = [
    "Embedder",
    "Memories",
    "MemoryEntry",
    "NewMemory",
    "SearchMode",
    "cosine",
    "embedder_of",
    "resolve_namespace",
    "sentence_embedder",
    "use_embedder",
]
