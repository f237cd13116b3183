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

import functools
import hashlib
import json
from typing import Any, NamedTuple

GENESIS_HASH = "0" * 64
CODEC = "json/c14n-v1"

_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _reference(value: Any) -> str:
    return _encoder.encode(value)


def _fast_encoder() -> Any:
    """The stdlib's C encoder, built once instead of on every call (``JSONEncoder.encode``
    builds it each time: a few µs per event). Its constructor is private API, so it is used
    only if it produces exactly what the reference encoder does on a probe."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        # No circular-reference markers: a shared markers dict keeps stale entries after an
        # error. Cyclic values cannot come out of Pydantic's JSON dumps; a cyclic workflow
        # result fails with RecursionError instead.
        encode = make(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
        probe = {"b": [1, 2.5, None, True, "é\n\u2028"], "a": {"z": -0.0, "y": 1e300}}
        if "".join(encode(probe, 0)) != _reference(probe):
            return None
        try:
            encode(float("nan"), 0)
        except ValueError:
            return encode
    except Exception:  # noqa: BLE001 - any surprise means: use the reference encoder
        return None
    return None


_c_encode = _fast_encoder()


def canonical_json(value: Any) -> str:
    """Encode ``value`` canonically. Raises ``ValueError`` for NaN/infinity, ``TypeError``
    for values that are not JSON, ``RecursionError`` for cyclic ones."""
    if _c_encode is not None and type(value) is dict:
        return "".join(_c_encode(value, 0))
    return _encoder.encode(value)


@functools.lru_cache(maxsize=4096)
def json_string(text: str) -> str:
    """A string as canonical JSON; cached, as run ids and type names recur on every event."""
    return _encoder.encode(text)


def envelope_parts(run_id: str, at: str) -> tuple[str, str]:
    """The envelope around ``data`` and ``seq``, the same for every event of one append."""
    return '{"at":' + json_string(at) + ',"data":', ',"run_id":' + json_string(run_id) + ',"seq":'


def envelope_json(run_id: str, seq: int, type_: str, at: str, data_json: str,
                  parts: tuple[str, str] | None = None, codec: str = CODEC) -> str:
    """The canonical JSON of a stored event, assembled from its already-canonical ``data``.

    Equivalent to ``canonical_json({"at": at, "data": data, "run_id": run_id, "seq": seq,
    "type": type_})`` (a property test pins this), without encoding ``data`` twice.
    ``parts`` are :func:`envelope_parts` computed once for a batch. A row in another codec
    than the default has ``"codec"`` in its envelope too, so its hash covers how to read it.
    """
    head, middle = parts or envelope_parts(run_id, at)
    if codec != CODEC:
        head = head.replace(',"data":', f',"codec":{json_string(codec)},"data":', 1)
    return f"{head}{data_json}{middle}{seq},\"type\":{json_string(type_)}}}"


def chain_hash(prev_hash: str, envelope: str) -> str:
    return hashlib.sha256((prev_hash + envelope).encode("utf-8")).hexdigest()


class EncodedEvent(NamedTuple):
    """One journal row exactly as stored: what the hash covers, plus the hash."""

    run_id: str
    seq: int
    type: str
    at: str
    data: str
    hash: str
    codec: str = CODEC

    def envelope(self) -> str:
        return envelope_json(self.run_id, self.seq, self.type, self.at, self.data, codec=self.codec)

    def expected_hash(self, prev_hash: str) -> str:
        return chain_hash(prev_hash, self.envelope())
