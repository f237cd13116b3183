"""The journal: a run's append-only, hash-chained sequence of typed events."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import StoreError
from .blobs import BLOB_CODEC, THRESHOLD, Fetch, externalize, resolve
from .encoding import (
    CODEC,
    GENESIS_HASH,
    EncodedEvent,
    canonical_json,
    chain_hash,
    envelope_json,
    envelope_parts,
)
from .events import Event, event_class
from .index import IndexUpdate, RunStatus, index_update

__all__ = [
    "BLOB_CODEC",
    "CODEC",
    "GENESIS_HASH",
    "EncodedEvent",
    "Event",
    "IndexUpdate",
    "RunStatus",
    "canonical_json",
    "decode",
    "encode_batch",
    "format_time",
    "index_update",
]


_second_cache: tuple[int, str] = (-1, "")


def format_time(epoch_seconds: float) -> str:
    """Timestamps in the journal: UTC ISO 8601 with microseconds, e.g. ``2026-11-26T11:44:14.123456Z``."""
    global _second_cache
    second = int(epoch_seconds)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    micros = round((epoch_seconds - second) * 1_000_000)
    if micros >= 1_000_000:  # rounding reached the next second
        return format_time(float(second + 1))
    return f"{prefix}.{micros:06d}Z"


def encode_batch(
    run_id: str,
    head_seq: int,
    head_hash: str,
    events: Iterable[Event],
    at: float,
    blobs: dict[str, str] | None = None,
) -> list[EncodedEvent]:
    """Give ``events`` the sequence numbers after ``head_seq`` and chain their hashes. With
    ``blobs``, an event larger than the blob threshold has its large values moved into it
    (to be stored once, by hash) and is written in the blob codec."""
    stamp = format_time(at)
    parts = envelope_parts(run_id, stamp)
    rows: list[EncodedEvent] = []
    seq, prev = head_seq, head_hash
    for event in events:
        seq += 1
        data = event.encoded()
        type_name = event.type_name
        if blobs is not None and len(data) > THRESHOLD:
            data = externalize(event.to_json(), blobs)
            digest = chain_hash(prev, envelope_json(run_id, seq, type_name, stamp, data, parts, BLOB_CODEC))
            rows.append(EncodedEvent(run_id, seq, type_name, stamp, data, digest, BLOB_CODEC))
        else:
            digest = chain_hash(prev, envelope_json(run_id, seq, type_name, stamp, data, parts))
            rows.append(EncodedEvent(run_id, seq, type_name, stamp, data, digest))
        prev = digest
    return rows


def decode(row: EncodedEvent, fetch: Fetch | None = None) -> Event:
    """The typed event of a journal row. A row this version of Baton cannot read (written by
    a newer version, or damaged) is a :class:`~baton.errors.StoreError` that says so.
    ``fetch`` reads blobs (``store.blob``), for rows whose large values are stored apart."""
    try:
        if row.codec == BLOB_CODEC:
            if fetch is None:
                raise ValueError("its large values are stored apart; read it with its store's blobs")
            return event_class(row.type).model_validate(resolve(json.loads(row.data), fetch))
        if row.codec != CODEC:
            raise ValueError(f"unknown codec {row.codec!r}")
        return event_class(row.type).model_validate_json(row.data)
    except (ValueError, KeyError) as exc:  # an unknown type, or fields this version does not know
        detail = str(exc).splitlines()[0]
        raise StoreError(
            f"run {row.run_id}, event {row.seq} ({row.type}) cannot be read by this version of Baton "
            f"({detail}): it was written by a newer version, or damaged; `baton audit verify` tells which",
            run_id=row.run_id,
        ) from None


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where a journal stops being the chain it claims to be."""

    row: EncodedEvent
    expected_seq: int
    misplaced: bool
    """The row is not at the position it should be (missing, duplicated, out of order);
    otherwise its hash does not match its content and its predecessor."""


def chain_break(rows: Sequence[EncodedEvent], prev_hash: str = GENESIS_HASH) -> ChainBreak | None:
    """The first row whose position or hash is wrong, or ``None``. From the genesis hash the
    chain must start at ``seq`` 1; after a given ``prev_hash``, at the first row's ``seq``."""
    expected_seq = rows[0].seq if rows and prev_hash != GENESIS_HASH else 1
    for row in rows:
        if row.seq != expected_seq:
            return ChainBreak(row, expected_seq, misplaced=True)
        if row.hash != row.expected_hash(prev_hash):
            return ChainBreak(row, expected_seq, misplaced=False)
        prev_hash = row.hash
        expected_seq += 1
    return None


def verify_chain(rows: Sequence[EncodedEvent], prev_hash: str = GENESIS_HASH) -> int | None:
    """Return the ``seq`` of the first row whose hash or position is wrong, or ``None``."""
    found = chain_break(rows, prev_hash)
    return None if found is None else found.row.seq
