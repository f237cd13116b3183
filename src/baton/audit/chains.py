"""Checking that the record was not edited: every run's hash chain; that the chain still
reaches the head the run index recorded (which catches a truncated tail); and the signed
checkpoints, which catch what a rewrite of both a journal and its index would hide."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..journal import BLOB_CODEC, GENESIS_HASH, EncodedEvent, chain_break
from ..journal.blobs import Fetch, blob_hash, references
from .checkpoints import Checkpoint, body_hash, merkle_root
from .keys import key_id, signature_valid

if TYPE_CHECKING:
    from ..store import Store


@dataclass(frozen=True, slots=True)
class Problem:
    """Where the record is wrong: a run's event, or (``run_id`` is ``None``) a checkpoint."""

    run_id: str | None
    seq: int
    what: str

    def __str__(self) -> str:
        if self.run_id is None:
            return f"checkpoint {self.seq}: {self.what}"
        return f"run {self.run_id}, event {self.seq}: {self.what}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    runs: int
    events: int
    problems: list[Problem]
    checkpoints: int = 0
    signatures_checked: bool = False
    complete: bool | None = None
    """For an export: does a manifest signed with the key say the file holds every run it
    should? ``None`` for a database."""

    @property
    def ok(self) -> bool:
        return not self.problems


Recorded = tuple[int, int, str]
"""(checkpoint, seq, hash): a head a signed checkpoint recorded for a run."""


def verify_run(store: Store, run_id: str, recorded: list[Recorded] | None = None,
               checked: set[str] | None = None) -> tuple[int, Problem | None]:
    """Recompute one run's chain. Returns (events checked, first problem or None).

    Besides the chain itself, the journal must still reach the run's anchor (the head the
    index recorded at the run's last status change or lease release) with the same hash,
    and every head a signed checkpoint ``recorded``: that catches events removed from the
    end. The anchor is read before the events, so a run being appended to while it is
    audited is not mistaken for a damaged one.
    """
    before = store.get_run(run_id)
    rows = store.read(run_id)
    anchor = (before.anchor_seq, before.anchor_hash) if before is not None and before.anchor_seq > 0 else None
    return len(rows), chain_problem(run_id, rows, recorded or [], anchor, store.blob, checked)


def blob_problem(run_id: str, rows: Sequence[EncodedEvent], fetch: Fetch, checked: set[str]) -> Problem | None:
    """Every large value the rows refer to must be there and match its hash (the chain
    covers the references, so this is what covers the values). ``checked`` is shared across
    runs: a value repeated everywhere is read once."""
    for row in rows:
        if row.codec != BLOB_CODEC:
            continue
        try:
            pending = references(json.loads(row.data))
        except ValueError:
            return Problem(run_id, row.seq, "its data is not JSON")
        while pending:
            digest = pending.pop()
            if digest in checked:
                continue
            try:
                text = fetch(digest)
            except KeyError:
                return Problem(run_id, row.seq, f"the large value {digest[:12]}… it refers to is missing: it was "
                                                "removed")
            if blob_hash(text) != digest:
                return Problem(run_id, row.seq, f"the large value {digest[:12]}… it refers to does not match its "
                                                "hash: it was changed")
            checked.add(digest)
            pending.extend(references(json.loads(text)))
    return None


def chain_problem(run_id: str, rows: Sequence[EncodedEvent], recorded: list[Recorded],
                  anchor: tuple[int, str] | None = None, fetch: Fetch | None = None,
                  checked: set[str] | None = None) -> Problem | None:
    """The first problem with one run's journal: its chain, the large values its rows refer
    to, then the heads that must still be in it (the index's anchor, and each head a
    checkpoint recorded)."""
    broken = chain_break(rows)
    if broken is not None:
        expected, row = broken.expected_seq, broken.row
        if broken.misplaced:
            what = "missing" if row.seq > expected else "out of order or duplicated"
            return Problem(run_id, expected, f"event {expected} is {what}")
        return Problem(run_id, row.seq, f"{row.type} does not match its hash: the event or one before it was changed")
    if fetch is not None:
        missing = blob_problem(run_id, rows, fetch, set() if checked is None else checked)
        if missing is not None:
            return missing
    # Unbroken, so rows[i] holds seq i + 1.
    last = rows[-1].seq if rows else 0
    if anchor is not None:
        anchor_seq, anchor_hash = anchor
        if last < anchor_seq:
            return Problem(run_id, last + 1, f"the journal ends at event {last} but the run was anchored at event "
                                             f"{anchor_seq}: events were removed from the end")
        if rows[anchor_seq - 1].hash != anchor_hash:
            return Problem(run_id, anchor_seq,
                           f"event {anchor_seq} is not the one the run was anchored at: the journal was rewritten")
    for checkpoint, seq, head in recorded:
        if seq > last:
            return Problem(run_id, last + 1, f"the journal ends at event {last} but signed checkpoint {checkpoint} "
                                             f"recorded event {seq}: events were removed from the end")
        if rows[seq - 1].hash != head:
            return Problem(run_id, seq,
                           f"event {seq} is not the one signed checkpoint {checkpoint} recorded: the journal was "
                           "rewritten")
    return None


def verify(store: Store, run_id: str | None = None, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Verify every run (or one) and every checkpoint. With ``public_key``, checkpoint
    signatures are checked too; without it, only their hashes and links. Everything is read
    in one snapshot, so a database in use is not mistaken for a damaged one."""
    with store.snapshot():
        return _verify(store, run_id, public_key)


def _verify(store: Store, run_id: str | None, public_key: Ed25519PublicKey | None) -> VerifyReport:
    checkpoints = store.checkpoints()
    references = {rid: checkpoint for rid, (_, checkpoint) in store.checkpointed_heads().items()}
    problems, sound = verify_checkpoints(checkpoints, public_key, references)
    recorded = recorded_heads(sound)
    run_ids = [run_id] if run_id else store.all_run_ids()
    if run_id is None:
        known = set(run_ids)
        signed_pruned = {rid: (seq, head) for checkpoint in sound for rid, seq, head in checkpoint.pruned}
        for rid in sorted(set(recorded) - known):
            first = recorded[rid][0][0]
            last_checkpoint, last_seq, last_hash = recorded[rid][-1]
            if rid in signed_pruned:
                seq, head = signed_pruned[rid]
                if (seq, head) != (last_seq, last_hash):
                    problems.append(Problem(rid, seq, f"the run was pruned at event {seq}, but signed checkpoint "
                                                      f"{last_checkpoint} recorded event {last_seq}"))
                continue  # archived: its file verifies it (baton audit verify --export)
            problems.append(Problem(rid, 1, f"the run is gone, but signed checkpoint {first} recorded it"))
        for rid, (lowest, _) in sorted(store.event_bounds().items()):
            if rid not in known:
                problems.append(Problem(rid, lowest, "events of a run the index does not know: they were inserted"))
            elif lowest < 1:
                problems.append(Problem(rid, lowest, f"event {lowest} cannot exist (a journal starts at event 1): "
                                                     "it was inserted"))
    total = 0
    checked: set[str] = set()
    for rid in run_ids:
        count, problem = verify_run(store, rid, recorded.get(rid), checked)
        total += count
        if problem is not None:
            problems.append(problem)
    return VerifyReport(len(run_ids), total, problems, len(checkpoints), public_key is not None)


def recorded_heads(checkpoints: list[Checkpoint]) -> dict[str, list[Recorded]]:
    """The heads sound checkpoints recorded, by run."""
    recorded: dict[str, list[Recorded]] = {}
    for checkpoint in checkpoints:
        for rid, seq, head in checkpoint.heads:
            recorded.setdefault(rid, []).append((checkpoint.seq, seq, head))
    return recorded


def signature_bytes(text: str) -> bytes:
    """The signature's bytes, from its one canonical base64 spelling only: a variant that
    decodes the same (other padding bits, line breaks) is an edit too."""
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return b""
    return raw if base64.b64encode(raw).decode() == text else b""


def _problem(checkpoint: Checkpoint, prev: str, public_key: Ed25519PublicKey | None) -> str | None:
    if body_hash(checkpoint.body) != checkpoint.hash:
        return "its content does not match its hash: it was changed after it was signed"
    try:
        content = checkpoint.content
        heads = checkpoint.heads
    except (ValueError, TypeError, KeyError, AttributeError):
        return "its content is not a checkpoint"
    n = checkpoint.seq
    if content.get("seq") != n:
        return f"its content says it is checkpoint {content.get('seq')}"
    if content.get("prev") != prev:
        return f"it does not follow checkpoint {n - 1}: a checkpoint was removed or replaced"
    if any(seq < 1 for _, seq, _ in heads):
        return "it records an event before the start of a journal"
    try:
        pruned = checkpoint.pruned
    except (ValueError, TypeError):
        return "its list of pruned runs is not one"
    if any(seq < 1 for _, seq, _ in pruned):
        return "it records a pruned run before the start of its journal"
    if merkle_root(heads) != content.get("root"):
        return "its heads do not match its Merkle root"
    if public_key is not None:
        if content.get("key") != key_id(public_key):
            return f"it was signed with key {content.get('key')}, not with this public key ({key_id(public_key)})"
        if not signature_valid(public_key, signature_bytes(checkpoint.signature), checkpoint.body.encode("utf-8")):
            return "its signature does not verify with the public key: it was forged"
    return None


def verify_checkpoints(checkpoints: list[Checkpoint], public_key: Ed25519PublicKey | None,
                       references: dict[str, int]) -> tuple[list[Problem], list[Checkpoint]]:
    """The first problem with the checkpoints themselves (a missing, changed, reordered or
    forged one), and the checkpoints before it, whose heads can be trusted. The run index says
    which checkpoint last covered each run, so the latest checkpoints cannot be removed
    unnoticed either (short of rewriting that index too)."""
    prev, expected = GENESIS_HASH, 1
    for index, checkpoint in enumerate(checkpoints):
        if checkpoint.seq != expected:
            return [Problem(None, expected, f"checkpoint {expected} is missing: it was removed")], checkpoints[:index]
        what = _problem(checkpoint, prev, public_key)
        if what is not None:
            return [Problem(None, checkpoint.seq, what)], checkpoints[:index]
        prev, expected = checkpoint.hash, expected + 1
    last = expected - 1
    for rid, referenced in sorted(references.items(), key=lambda item: -item[1]):
        if referenced > last:
            return [Problem(None, referenced, f"it recorded run {rid} but is missing: the latest checkpoints "
                                              "were removed")], checkpoints
    return [], checkpoints
