"""Signed checkpoints: like signed digest files, each one holds the head (seq, hash) of every
run changed since the previous one, their Merkle root, the previous checkpoint's hash and an
Ed25519 signature over all of it.

A run's hash chain proves that nothing inside it changed; a checkpoint proves, to anyone with
the public key, that the chain reached at least that head at that time. So a journal cut
short or rewritten behind a checkpoint is caught even if the run index was rewritten with
it, and the checkpoints chain to each other, so one removed from the middle shows.

The body is canonical JSON::

    {"at": "2026-11-26T15:00:00.000000Z", "format": 1, "heads": [[run_id, seq, hash], ...],
     "key": "<key id>", "prev": "<hash of checkpoint seq-1, or 64 zeros>", "root": "<hex>",
     "seq": 7}

with, in the checkpoint ``baton runs prune`` writes, ``"pruned": [[run_id, seq, hash], ...]``:
the runs it is about to remove, each at its last head.

``hash`` is sha256 of the body's UTF-8 bytes, and ``signature`` the base64 Ed25519 signature
of the same bytes. Leaves of the Merkle tree are sha256(0x00 ‖ canonical_json([run_id, seq,
hash])), in the order of ``heads`` (sorted by run id); a node is sha256(0x01 ‖ left ‖ right),
and an odd node out is paired with itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import AppendConflict
from ..journal import GENESIS_HASH, canonical_json, format_time
from .keys import key_id

FORMAT = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    body: str
    hash: str
    signature: str

    @property
    def content(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def heads(self) -> list[tuple[str, int, str]]:
        return [(str(r), int(s), str(h)) for r, s, h in self.content.get("heads", [])]

    @property
    def pruned(self) -> list[tuple[str, int, str]]:
        """Runs removed from the database on purpose (archived) after this checkpoint, with
        the head each was removed at: signed, so a run cannot be deleted and called pruned."""
        return [(str(r), int(s), str(h)) for r, s, h in self.content.get("pruned", [])]


def leaf(run_id: str, seq: int, head_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_json([run_id, seq, head_hash]).encode()).digest()


def merkle_root(heads: list[tuple[str, int, str]]) -> str:
    level = [leaf(*head) for head in heads]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def seal(seq: int, prev: str, heads: list[tuple[str, int, str]], key: Ed25519PrivateKey, now: float,
         pruned: list[tuple[str, int, str]] | None = None) -> Checkpoint:
    content: dict[str, Any] = {
        "at": format_time(now), "format": FORMAT, "heads": [list(h) for h in heads],
        "key": key_id(key.public_key()), "prev": prev, "root": merkle_root(heads), "seq": seq,
    }
    if pruned:
        content["pruned"] = [list(p) for p in pruned]
    body = canonical_json(content)
    signature = base64.b64encode(key.sign(body.encode("utf-8"))).decode()
    return Checkpoint(seq, body, body_hash(body), signature)


def write_checkpoint(store: Any, key: Ed25519PrivateKey, now: float, *, force: bool = False,
                     pruned: list[tuple[str, int, str]] | None = None) -> Checkpoint | None:
    """Sign the heads of the runs that changed since the last checkpoint. ``None`` if none
    did (unless ``force``: an empty checkpoint still proves the time and the chain). If
    another process writes a checkpoint at the same moment, this one is tried again on top."""
    for _ in range(5):
        last = store.last_checkpoint()
        covered = store.checkpointed_heads()
        heads = sorted((run_id, seq, head) for run_id, (seq, head) in store.run_heads().items()
                       if seq > covered.get(run_id, (0, 0))[0])
        if not heads and last is not None and not force and not pruned:
            return None
        checkpoint = seal(last.seq + 1 if last else 1, last.hash if last else GENESIS_HASH, heads, key, now,
                          pruned)
        try:
            store.add_checkpoint(checkpoint, now)
        except AppendConflict:
            continue
        return checkpoint
    raise AppendConflict("other processes keep writing checkpoints; try again")
