"""Long-term memory in SQL: the ``memories`` table and its full-text index, for both databases.

:class:`MemoryRows` holds the queries, written once; :class:`~baton.store.sql.SqlStore`
inherits them. What differs between the databases is in :data:`DIALECTS`: SQLite searches an
FTS5 index ranked by bm25, PostgreSQL a GIN-indexed ``tsvector`` column ranked by
``ts_rank``; both stem English words. Scores are comparable within one search only.

A person's query is never handed to either search syntax as it is: it is cut into words
(letters and digits), each quoted as a plain term, and the terms are OR-ed, so quotes,
``*``, ``-``, ``OR``, ``NEAR``, parentheses or an empty query cannot make the database
refuse it. An entry that matches more of the words ranks higher.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..journal import canonical_json
from ..memory.entries import MemoryEntry, NewMemory

_COLUMNS = ("m.id, m.text, m.data, m.namespace, m.tenant, m.principal, m.source, m.trusted, m.run_id, "
            "m.step_id, m.created_at, m.embedding")

MAX_TERMS = 32
"""Words of a query that are searched for; the rest are ignored."""
MAX_TERM = 200
"""Characters in a word; longer runs of letters are not words anyone searches for."""
_WORD = re.compile(r"\w+")


def query_terms(query: str) -> list[str]:
    """The words of ``query``, in order, each once (whatever its case), at most
    :data:`MAX_TERMS`; ``[]`` when it has none."""
    found: dict[str, str] = {}
    for word in _WORD.findall(query if isinstance(query, str) else ""):
        if len(word) <= MAX_TERM:
            found.setdefault(word.casefold(), word)
            if len(found) == MAX_TERMS:
                break
    return list(found.values())


@dataclass(frozen=True, slots=True)
class Dialect:
    search_sql: str
    """One search, with ``:match``, ``:tenant``, ``:namespace`` and ``:limit``."""
    match: Callable[[list[str]], str]
    """The terms as the search syntax's ``:match``."""
    returning: bool
    """Does an insert say its new id with ``RETURNING`` (else: the cursor's ``lastrowid``)?"""
    erasing: tuple[str, ...] = ()
    """Run before deleting entries, in the same transaction: deleted text is overwritten."""
    erased: tuple[str, ...] = ()
    """Run after deleting entries: no copy of their words stays in the search index."""
    done_erasing: tuple[str, ...] = ()


def _fts5_match(terms: list[str]) -> str:
    # A double-quoted FTS5 string is a phrase of plain words; "" stands for a quote.
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _tsquery_match(terms: list[str]) -> str:
    # Terms are letters, digits and '_' only: none of to_tsquery's operators & | ! ( ) : * ' \.
    return " | ".join(terms)


DIALECTS = {
    "sqlite": Dialect(
        search_sql=(
            f"SELECT {_COLUMNS}, -bm25(memories_fts) FROM memories_fts "
            "JOIN memories AS m ON m.id = memories_fts.rowid "
            "WHERE memories_fts MATCH :match AND m.tenant = :tenant AND m.namespace = :namespace "
            "ORDER BY bm25(memories_fts), m.id DESC LIMIT :limit"
        ),
        match=_fts5_match,
        returning=False,
        # FTS5 keeps a deleted entry's words in its index segments until they are merged.
        erasing=("PRAGMA secure_delete = ON",),
        erased=("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')",),
        done_erasing=("PRAGMA secure_delete = OFF",),
    ),
    "postgres": Dialect(
        search_sql=(
            f"SELECT {_COLUMNS}, ts_rank(m.search, q) FROM memories AS m, to_tsquery('english', :match) AS q "
            "WHERE m.search @@ q AND m.tenant = :tenant AND m.namespace = :namespace "
            "ORDER BY ts_rank(m.search, q) DESC, m.id DESC LIMIT :limit"
        ),
        match=_tsquery_match,
        returning=True,
    ),
}


def _tenant(tenant: str | None) -> str:
    return tenant or ""


def _entry(row: tuple[Any, ...]) -> MemoryEntry:
    embedding = json.loads(row[11]) if row[11] is not None else None
    return MemoryEntry(
        id=int(row[0]), text=row[1], data=json.loads(row[2]), namespace=row[3], tenant=row[4] or None,
        principal=row[5], source=row[6], trusted=bool(row[7]), run_id=row[8], step_id=row[9],
        created_at=float(row[10]), score=float(row[12]) if len(row) > 12 and row[12] is not None else None,
        embedding=tuple(embedding) if embedding is not None else None,
    )


class MemoryRows(ABC):
    """The memory half of a SQL store (see :class:`~baton.store.base.Store` for the contract)."""

    backend: str

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Any]: ...

    @abstractmethod
    def _query(self, sql: str, params: Any = ()) -> list[Any]: ...

    @property
    def _dialect(self) -> Dialect:
        return DIALECTS[self.backend]

    def remember(self, entry: NewMemory) -> int:
        params = (_tenant(entry.tenant), entry.principal, entry.namespace, entry.text, entry.data_json,
                  entry.source, int(entry.trusted), entry.run_id, entry.step_id, entry.created_at,
                  canonical_json(list(entry.embedding)) if entry.embedding is not None else None)
        sql = ("INSERT INTO memories (tenant, principal, namespace, text, data, source, trusted, run_id, step_id, "
               "created_at, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (run_id, step_id) DO NOTHING")
        returning = self._dialect.returning
        with self._tx() as conn:
            cur = conn.execute(sql + (" RETURNING id" if returning else ""), params)
            if returning:
                row = cur.fetchone()
                if row is not None:
                    return int(row[0])
            elif cur.rowcount == 1:
                return int(cur.lastrowid)
            # Written before, by this step (replayed after a crash, or by a worker that lost the run).
            row = conn.execute("SELECT id FROM memories WHERE run_id = ? AND step_id = ?",
                               (entry.run_id, entry.step_id)).fetchone()
            return int(row[0])

    def search_memory(self, tenant: str | None, namespace: str, query: str, limit: int = 10) -> list[MemoryEntry]:
        terms = query_terms(query)
        if not terms:
            return []
        dialect = self._dialect
        rows = self._query(dialect.search_sql, {"match": dialect.match(terms), "tenant": _tenant(tenant),
                                                "namespace": namespace, "limit": limit})
        return [_entry(row) for row in rows]

    def memories(self, tenant: str | None, namespace: str | None = None, *, run_id: str | None = None,
                 limit: int = 100) -> list[MemoryEntry]:
        clauses, params = ["m.tenant = ?"], [_tenant(tenant)]
        for column, value in (("m.namespace", namespace), ("m.run_id", run_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = self._query(f"SELECT {_COLUMNS} FROM memories AS m WHERE {' AND '.join(clauses)} "
                           "ORDER BY m.id DESC LIMIT ?", (*params, limit))
        return [_entry(row) for row in rows]

    def forget_memory(self, tenant: str | None, memory_id: int) -> bool:
        return self._erase("tenant = ? AND id = ?", (_tenant(tenant), memory_id)) > 0

    def forget_namespace(self, tenant: str | None, namespace: str) -> int:
        return self._erase("tenant = ? AND namespace = ?", (_tenant(tenant), namespace))

    def forget_run_memories(self, run_id: str) -> int:
        return self._erase("run_id = ?", (run_id,))

    def _erase(self, where: str, params: tuple[Any, ...]) -> int:
        dialect = self._dialect
        with self._tx() as conn:
            for statement in dialect.erasing:
                conn.execute(statement)
            try:
                deleted = int(conn.execute(f"DELETE FROM memories WHERE {where}", params).rowcount)
                if deleted:
                    for statement in dialect.erased:
                        conn.execute(statement)
            finally:
                for statement in dialect.done_erasing:
                    conn.execute(statement)
        return deleted
