"""Canonical JSON and the hash chain.

Every event is stored as a canonical JSON document, and every event's hash covers its
predecessor's hash, so that any edit, deletion, insertion, reordering or truncation is
visible to whoever recomputes the chain (``baton audit verify``).

The canonical form of a stored event is the JSON object::

    {"at": ..., "data": {...}, "run_id": ..., "seq": ..., "type": ...}

with keys sorted at every level, no insignificant whitespace, UTF-8, and no NaN or
infinities. ``hash = sha256(prev_hash ‖ canonical bytes)`` where ``prev_hash`` is the
previous event's hash as 64 lowercase hex characters (64 zeros before ``seq`` 1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64
CODEC = "json/c14n-v1"

_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """Encode ``value`` canonically. Raises ``ValueError`` for NaN/infinity, ``TypeError``
    for values that are not JSON."""
    return _encoder.encode(value)


def envelope_json(run_id: str, seq: int, type_: str, at: str, data_json: str) -> str:
    """The canonical JSON of a stored event, assembled from its already-canonical ``data``.

    Equivalent to ``canonical_json({"at": at, "data": data, "run_id": run_id, "seq": seq,
    "type": type_})`` (a property test pins this), without encoding ``data`` twice.
    """
    return (
        '{"at":' + _encoder.encode(at)
        + ',"data":' + data_json
        + ',"run_id":' + _encoder.encode(run_id)
        + ',"seq":' + str(seq)
        + ',"type":' + _encoder.encode(type_)
        + "}"
    )


def chain_hash(prev_hash: str, envelope: str) -> str:
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(envelope.encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """One journal row exactly as stored: what the hash covers, plus the hash."""

    run_id: str
    seq: int
    type: str
    at: str
    data: str
    hash: str

    def envelope(self) -> str:
        return envelope_json(self.run_id, self.seq, self.type, self.at, self.data)

    def expected_hash(self, prev_hash: str) -> str:
        return chain_hash(prev_hash, self.envelope())
