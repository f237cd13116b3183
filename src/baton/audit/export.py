"""``baton audit export``: the record as JSON lines a third party can verify without Baton.

The first line says what the file is; then one line per checkpoint, then one per event,
each run's events in order, with each large value an event refers to on a line of its own
(once, before the first event that needs it)::

    {"codec": "json/c14n-v1", "exported_at": "...", "format": 1, "kind": "baton-audit-export"}
    {"body": "...", "hash": "...", "kind": "checkpoint", "seq": 1, "signature": "..."}
    {"at": "...", "data": "<the event's canonical JSON, as a string>", "hash": "...",
     "kind": "event", "run_id": "...", "seq": 1, "type": "RunStarted"}

``docs/audit.md`` gives the procedure; ``baton audit verify --export FILE`` follows it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..journal import BLOB_CODEC, CODEC, EncodedEvent, canonical_json, format_time
from ..journal.blobs import references
from .chains import Problem, VerifyReport, chain_problem, recorded_heads, signature_bytes, verify_checkpoints
from .checkpoints import Checkpoint
from .keys import key_id, signature_valid

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from ..store import Store

FORMAT = 1


def export_lines(store: Store, run_id: str | list[str] | None, now: float,
                 key: Ed25519PrivateKey | None = None) -> Iterator[str]:
    """The export's lines; with ``key``, ending with a signed manifest of the runs it holds
    and their heads, so that a run left out of the file (or taken out of it) shows."""
    yield canonical_json({"codec": CODEC, "exported_at": format_time(now), "format": FORMAT,
                          "kind": "baton-audit-export"})
    for checkpoint in store.checkpoints():
        yield canonical_json({"body": checkpoint.body, "hash": checkpoint.hash, "kind": "checkpoint",
                              "seq": checkpoint.seq, "signature": checkpoint.signature})
    written: set[str] = set()
    heads: list[list[object]] = []
    last: EncodedEvent | None = None
    run_ids = [run_id] if isinstance(run_id, str) else run_id if run_id is not None else store.all_run_ids()
    for rid in run_ids:
        for row in store.read(rid):
            if row.codec == BLOB_CODEC:
                yield from _blob_lines(store, json.loads(row.data), written)
            line = {"at": row.at, "data": row.data, "hash": row.hash, "kind": "event", "run_id": row.run_id,
                    "seq": row.seq, "type": row.type}
            if row.codec != CODEC:
                line["codec"] = row.codec
            yield canonical_json(line)
            last = row
        if last is not None and last.run_id == rid:
            heads.append([rid, last.seq, last.hash])
    if key is not None:
        body = canonical_json({"format": FORMAT, "key": key_id(key.public_key()), "runs": heads})
        signature = base64.b64encode(key.sign(body.encode("utf-8"))).decode()
        yield canonical_json({"body": body, "kind": "manifest", "signature": signature})


def _blob_lines(store: Store, value: object, written: set[str]) -> Iterator[str]:
    """The large values an event refers to (and those they refer to), each once, before it."""
    pending = references(value)
    while pending:
        digest = pending.pop()
        if digest in written:
            continue
        written.add(digest)
        text = store.blob(digest)
        pending.extend(references(json.loads(text)))
        yield canonical_json({"data": text, "hash": digest, "kind": "blob"})


def _texts(item: dict[str, object], *names: str) -> tuple[str, ...]:
    values = tuple(item.get(name, CODEC if name == "codec" else None) for name in names)
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
    return values  # type: ignore[return-value]


def _int(item: dict[str, object], name: str) -> int:
    value = item.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number")
    return value


def verify_export(lines: Iterable[str], public_key: Ed25519PublicKey | None) -> VerifyReport:
    """Verify an export: every run's chain from its first event, every checkpoint, and every
    head a checkpoint recorded for a run the export holds."""
    checkpoints: list[Checkpoint] = []
    runs: dict[str, list[EncodedEvent]] = {}
    blobs: dict[str, str] = {}
    manifest: tuple[str, ...] | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            kind = item["kind"]
            if number == 1:
                if kind != "baton-audit-export" or item.get("format") != FORMAT:
                    raise UsageError("not a Baton audit export (format 1)")
                continue
            if kind == "checkpoint":
                checkpoints.append(Checkpoint(_int(item, "seq"), *_texts(item, "body", "hash", "signature")))
            elif kind == "event":
                run_id, type_, at, data, digest, codec = _texts(item, "run_id", "type", "at", "data", "hash", "codec")
                runs.setdefault(run_id, []).append(EncodedEvent(run_id, _int(item, "seq"), type_, at, data, digest,
                                                                codec))
            elif kind == "blob":
                digest, data = _texts(item, "hash", "data")
                blobs[digest] = data
            elif kind == "manifest":
                manifest = _texts(item, "body", "signature")
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"line {number} of the export is not a Baton audit record: {exc}") from None
    problems, sound = verify_checkpoints(checkpoints, public_key, {})
    recorded = recorded_heads(sound)
    events = 0
    for rid, rows in runs.items():
        events += len(rows)
        problem = chain_problem(rid, rows, recorded.get(rid, []), fetch=blobs.__getitem__, checked=set())
        if problem is not None:
            problems.append(problem)
    if manifest is not None:
        problems.extend(_manifest_problems(manifest, runs, public_key))
    return VerifyReport(len(runs), events, problems, len(checkpoints), public_key is not None,
                        complete=manifest is not None and public_key is not None and not problems)


def _manifest_problems(manifest: tuple[str, ...], runs: dict[str, list[EncodedEvent]],
                       public_key: Ed25519PublicKey | None) -> list[Problem]:
    """The signed list of runs must match the runs in the file, each at its last event."""
    body, signature = manifest
    try:
        content = json.loads(body)
        listed = {str(r): (int(s), str(h)) for r, s, h in content["runs"]}
    except (ValueError, TypeError, KeyError):
        return [Problem(None, 0, "the export's manifest is not one")]
    if public_key is not None and (content.get("key") != key_id(public_key) or not signature_valid(
            public_key, signature_bytes(signature), body.encode("utf-8"))):
        return [Problem(None, 0, "the export's manifest is not signed by this public key: it was forged")]
    problems = []
    for rid, (seq, head) in sorted(listed.items()):
        rows = runs.get(rid)
        if not rows:
            problems.append(Problem(rid, 1, "the export's signed manifest lists this run, but the file does not "
                                            "hold it: it was taken out"))
        elif (rows[-1].seq, rows[-1].hash) != (seq, head):
            problems.append(Problem(rid, rows[-1].seq, f"the export's signed manifest says the run ends at event "
                                                       f"{seq}: events were taken out or added"))
    for rid in sorted(set(runs) - set(listed)):
        problems.append(Problem(rid, 1, "the file holds this run, but its signed manifest does not list it"))
    return problems


__all__ = ["Problem", "export_lines", "verify_export"]
