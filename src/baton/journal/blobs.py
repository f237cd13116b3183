"""Large values stored once, by content hash.

An event whose data is larger than :data:`THRESHOLD` has each of its large sub-values (the
smallest subtree over the threshold, children first) replaced by a reference ``{"\\u0000blob":
"<sha256 of its canonical JSON>"}`` and stored apart in the blob table; a long list is stored
as chunks, ``{"\\u0000chunks": [references to runs of its items]}``. Repeating the same 100 KB
context on every step stores it once, and a context that grows step by step stores each part
once. Such rows carry the codec :data:`BLOB_CODEC`, which the row's hash covers, and within
them a user key that starts with NUL is escaped with one more NUL, so a reference is never
ambiguous. The hash chain covers the references; each
blob is checked against its hash when it is read back and by ``baton audit verify``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..errors import BlobMismatch
from .encoding import canonical_json

BLOB_CODEC = "json/c14n-v1+blobs"
THRESHOLD = 16 * 1024
REF = "\u0000blob"
CHUNKS = "\u0000chunks"
REFS_INLINE = 512
"""A list of chunk references longer than this is itself stored in chunks."""

Fetch = Callable[[str], str]


def blob_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def externalize(value: dict[str, Any], blobs: dict[str, str], threshold: int = THRESHOLD) -> str:
    """``value`` (an event's JSON data) as canonical JSON, its large sub-values moved into
    ``blobs``. The top-level fields stay in place, whatever their size."""
    return canonical_json({_escape(key): _shrink(item, blobs, threshold)[0] for key, item in value.items()})


def _escape(key: str) -> str:
    return "\u0000" + key if key.startswith("\u0000") else key


def _store(text: str, blobs: dict[str, str]) -> dict[str, str]:
    digest = blob_hash(text)
    blobs[digest] = text
    return {REF: digest}


def _shrink(value: Any, blobs: dict[str, str], threshold: int) -> tuple[Any, int]:
    """(the value with large parts replaced, the length of its canonical JSON)."""
    if isinstance(value, dict):
        value = {_escape(key): _shrink(item, blobs, threshold)[0] for key, item in value.items()}
    elif isinstance(value, list):
        value = [_shrink(item, blobs, threshold)[0] for item in value]
        text = canonical_json(value)
        if len(text) <= threshold:
            return value, len(text)
        return {CHUNKS: _chunked(value, blobs, threshold)}, 0
    text = canonical_json(value)
    if len(text) <= threshold:
        return value, len(text)
    return _store(text, blobs), 0


def _chunked(items: list[Any], blobs: dict[str, str], threshold: int) -> Any:
    """A long list as references to runs of its items. Chunk boundaries depend only on the
    items before them, so a list that grows at the end (a conversation) shares all but its
    last chunk with its previous version; the list of references is chunked the same way
    once it is long, so what each step adds stays small."""
    refs: list[Any] = []
    chunk: list[Any] = []
    size = 0
    for item in items:
        item_size = len(canonical_json(item)) + 1
        if chunk and size + item_size > threshold:
            refs.append(_store(canonical_json(chunk), blobs))
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    refs.append(_store(canonical_json(chunk), blobs))
    if len(canonical_json(refs)) <= REFS_INLINE:
        return refs
    return {CHUNKS: _chunked(refs, blobs, max(REFS_INLINE, threshold // 8))}


def references(value: Any) -> list[str]:
    """The blob hashes a (stored, unresolved) value refers to directly."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if len(item) == 1 and REF in item:
                found.append(item[REF])
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def resolve(value: Any, fetch: Fetch) -> Any:
    """The value with every reference replaced by what it refers to, and keys unescaped.
    ``fetch`` returns a blob's text; one that does not match its hash is refused."""
    if isinstance(value, dict):
        if len(value) == 1 and REF in value:
            digest = value[REF]
            text = fetch(digest)
            if blob_hash(text) != digest:
                raise BlobMismatch(f"the large value {digest[:12]}… does not match its hash: it was changed")
            return resolve(json.loads(text), fetch)
        if len(value) == 1 and CHUNKS in value:
            chunks = resolve(value[CHUNKS], fetch)  # a list of lists: the runs of items, in order
            return [item for chunk in chunks for item in chunk]
        return {(key[1:] if key.startswith("\u0000") else key): resolve(item, fetch) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, fetch) for item in value]
    return value
