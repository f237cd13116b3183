"""Tampering with a real database file, as someone with write access to it would: every kind
of edit to the journals and to the signed checkpoints must be reported by ``baton audit
verify``, naming the run and event (or the checkpoint) where the record stops being true.

One database is built per module with real runs, three signed checkpoints and events written
after the last of them; each test edits its own copy with ``sqlite3``, never through Baton.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import event, given, settings
from hypothesis import strategies as st

from baton import Baton, Context, SqliteStore, tool, workflow
from baton.audit import Checkpoint, Problem, VerifyReport, merkle_root, verify, verify_run, write_checkpoint
from baton.audit.checkpoints import body_hash
from baton.audit.keys import generate, key_id, load_private, load_public
from baton.errors import AppendConflict
from baton.journal import GENESIS_HASH, EncodedEvent, canonical_json
from engine_support import make_settings

# -- the runs -----------------------------------------------------------------------------


@tool(idempotent=True)
def look_up(order_id: str, n: int) -> dict[str, Any]:
    return {"order_id": order_id, "n": n, "note": "ok ✓"}


@workflow
def follow_up(ctx: Context, order_id: str, calls: int, wait: bool = False) -> int:
    """``calls`` + 2 events; with ``wait``, it stops after ``calls`` + 2 (waiting for "go")
    and ends with 3 more once the signal comes."""
    total = 0
    for i in range(calls):
        total += int(ctx.call(look_up, order_id, i)["n"])
    if wait:
        ctx.wait_for("go")
        total += int(ctx.call(look_up, order_id, 99)["n"])
    return total


def start_runs(baton: Baton, specs: list[tuple[str, int, bool]]) -> None:
    for run_id, calls, wait in specs:
        baton.run(follow_up, {"order_id": f"o-{run_id}", "calls": calls, "wait": wait}, run_id=run_id)


def finish(baton: Baton, run_id: str) -> None:
    baton.signal(run_id, "go", 1)
    assert baton.drive(run_id).status.terminal


def sign(baton: Baton, key: Ed25519PrivateKey) -> Checkpoint:
    checkpoint = write_checkpoint(baton.store, key, baton.clock.time())
    assert checkpoint is not None
    return checkpoint


@dataclass(frozen=True)
class Keys:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    public_path: Path
    other: Ed25519PrivateKey  # someone else's key pair
    other_public_path: Path


@dataclass(frozen=True)
class Origin:
    path: Path  # the untouched database: copy it, never edit it
    keys: Keys
    lengths: dict[str, int]  # events per run
    heads: list[dict[str, int]]  # per checkpoint: the head seq it recorded for each run
    dump: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def make_keys(folder: Path) -> Keys:
    private, public = generate(folder / "ours")
    other, other_public = generate(folder / "theirs")
    mine, theirs = load_private(str(private)), load_private(str(other))
    assert mine is not None and theirs is not None
    return Keys(mine, load_public(str(public)), public, theirs, other_public)


def dump(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Everything in the events and checkpoints tables, in a stable order."""
    conn = sqlite3.connect(path)
    try:
        events = conn.execute("SELECT run_id, seq, type, at, codec, data, hash FROM events "
                              "ORDER BY run_id, seq").fetchall()
        checkpoints = conn.execute("SELECT seq, created_at, body, hash, signature FROM checkpoints "
                                   "ORDER BY seq").fetchall()
    finally:
        conn.close()
    return events, checkpoints


def describe(path: Path, keys: Keys) -> Origin:
    events, checkpoints = dump(path)
    lengths: dict[str, int] = {}
    for run_id, seq, *_ in events:
        lengths[run_id] = max(lengths.get(run_id, 0), seq)
    heads = [{r: s for r, s, _ in Checkpoint(seq, body, h, sig).heads} for seq, _, body, h, sig in checkpoints]
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return Origin(path, keys, lengths, heads, (events, checkpoints))


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """Seven runs and three checkpoints:

    * checkpoint 1 records run-a (waiting) to run-e;
    * run-a then finishes and run-f runs: checkpoint 2 records them;
    * run-g runs: checkpoint 3 records it;
    * run-d then finishes: its last three events come after every checkpoint.
    """
    folder = tmp_path_factory.mktemp("tamper")
    keys = make_keys(folder)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("BATON_AUDIT_KEY", raising=False)
        with Baton(make_settings(folder)) as baton:
            start_runs(baton, [("run-a", 3, True), ("run-b", 4, False), ("run-c", 2, False),
                               ("run-d", 2, True), ("run-e", 5, False)])
            sign(baton, keys.private)
            finish(baton, "run-a")
            start_runs(baton, [("run-f", 3, False)])
            sign(baton, keys.private)
            start_runs(baton, [("run-g", 1, False)])
            sign(baton, keys.private)
            finish(baton, "run-d")
    built = describe(folder / "b.db", keys)
    assert built.lengths == {"run-a": 8, "run-b": 6, "run-c": 4, "run-d": 7, "run-e": 7, "run-f": 5, "run-g": 3}
    assert built.heads == [{"run-a": 5, "run-b": 6, "run-c": 4, "run-d": 4, "run-e": 7},
                           {"run-a": 8, "run-f": 5}, {"run-g": 3}]
    yield built


@pytest.fixture
def db(origin: Origin, tmp_path: Path) -> Path:
    copy = tmp_path / "tampered.db"
    shutil.copyfile(origin.path, copy)
    return copy


@pytest.fixture
def keys(origin: Origin) -> Keys:
    return origin.keys


# -- editing the file --------------------------------------------------------------------


def sql(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            for statement, params in statements:
                conn.execute(statement, params)
    finally:
        conn.close()


def journal(path: Path, run_id: str) -> list[EncodedEvent]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT run_id, seq, type, at, data, hash FROM events WHERE run_id = ? ORDER BY seq",
                            (run_id,)).fetchall()
    finally:
        conn.close()
    return [EncodedEvent(*row) for row in rows]


def stored_checkpoint(path: Path, seq: int) -> Checkpoint:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT seq, body, hash, signature FROM checkpoints WHERE seq = ?", (seq,)).fetchone()
    finally:
        conn.close()
    return Checkpoint(*row)


def flip(text: str, i: int) -> str:
    """``text`` with its ``i``-th character replaced by another one."""
    return text[:i] + ("x" if text[i] != "x" else "y") + text[i + 1:]


def edit_event(path: Path, run_id: str, seq: int, field: str) -> None:
    (row,) = [r for r in journal(path, run_id) if r.seq == seq]
    old = getattr(row, field)
    sql(path, (f"UPDATE events SET {field} = ? WHERE run_id = ? AND seq = ?", (flip(old, len(old) // 2), run_id, seq)))


def swap(path: Path, run_id: str, i: int, j: int) -> None:
    where = "WHERE run_id = ? AND seq = ?"
    sql(path, (f"UPDATE events SET seq = -1000 {where}", (run_id, i)),
        (f"UPDATE events SET seq = ? {where}", (i, run_id, j)),
        (f"UPDATE events SET seq = ? {where}", (j, run_id, -1000)))


def write_rows(path: Path, rows: list[EncodedEvent]) -> None:
    sql(path, *[("INSERT OR REPLACE INTO events (run_id, seq, type, at, data, hash, codec) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(row)) for row in rows])


def chained(rows: list[EncodedEvent], prev: str) -> list[EncodedEvent]:
    """``rows`` with every hash recomputed from ``prev``, as someone who knows the scheme would."""
    out = []
    for row in rows:
        row = row._replace(hash=row.expected_hash(prev))
        out.append(row)
        prev = row.hash
    return out


def insert_event(path: Path, run_id: str, k: int, *, rechain: bool = False) -> None:
    """Slip a made-up event in at ``k``, moving the later ones up by one. Its hash is chained
    correctly onto event ``k - 1``; with ``rechain``, so are all the later ones."""
    rows = journal(path, run_id)
    forged = rows[k - 1]._replace(type="StepRan", data='{"result":{"refunded":1000000}}')
    prev = rows[k - 2].hash if k > 1 else GENESIS_HASH
    forged = forged._replace(hash=forged.expected_hash(prev))
    later = [r._replace(seq=r.seq + 1) for r in rows[k - 1:]]
    if rechain:
        later = chained(later, forged.hash)
    sql(path, ("DELETE FROM events WHERE run_id = ? AND seq >= ?", (run_id, k)))
    write_rows(path, [forged, *later])


def truncate(path: Path, run_id: str, keep: int, *, rewrite_anchor: bool) -> None:
    """Cut the journal down to its first ``keep`` events; with ``rewrite_anchor``, also point
    the run index's anchor at the new tail so that the index agrees with the cut journal."""
    rows = journal(path, run_id)
    sql(path, ("DELETE FROM events WHERE run_id = ? AND seq > ?", (run_id, keep)))
    if rewrite_anchor:
        tail = rows[keep - 1].hash if keep else GENESIS_HASH
        sql(path, ("UPDATE runs SET anchor_seq = ?, anchor_hash = ? WHERE run_id = ?", (keep, tail, run_id)))


def reseal(content: dict[str, Any], key: Ed25519PrivateKey) -> tuple[str, str, str]:
    body = canonical_json(content)
    return body, body_hash(body), base64.b64encode(key.sign(body.encode("utf-8"))).decode()


def forge_checkpoint(path: Path, seq: int, key: Ed25519PrivateKey, *, key_name: str | None = None,
                     heads: list[tuple[str, int, str]] | None = None, prev: str | None = None,
                     root: bool = True) -> str:
    """Rewrite checkpoint ``seq`` (its heads and, unless not ``root``, their Merkle root; its
    link to the one before) and sign it with ``key``, claiming ``key_name`` as the key id
    (default: the real signer's, unchanged). Returns the forged checkpoint's hash."""
    content = stored_checkpoint(path, seq).content
    if heads is not None:
        content["heads"] = [list(h) for h in heads]
        if root:
            content["root"] = merkle_root(heads)
    if prev is not None:
        content["prev"] = prev
    if key_name is not None:
        content["key"] = key_name
    body, digest, signature = reseal(content, key)
    sql(path, ("UPDATE checkpoints SET body = ?, hash = ?, signature = ? WHERE seq = ?",
               (body, digest, signature, seq)),
        *[("UPDATE checkpoint_heads SET seq = ?, hash = ? WHERE run_id = ?", (s, h, r)) for r, s, h in heads or []])
    return digest


# -- checking it -------------------------------------------------------------------------


def audit(path: Path, public_key: Ed25519PublicKey | None) -> VerifyReport:
    store = SqliteStore(path)
    try:
        return verify(store, public_key=public_key)
    finally:
        store.close()


def where(report: VerifyReport) -> list[tuple[str | None, int]]:
    return [(p.run_id, p.seq) for p in report.problems]


def only_problem(report: VerifyReport, run_id: str | None, seq: int, *words: str) -> Problem:
    """The report names exactly one problem, at ``run_id`` (``None``: a checkpoint) and ``seq``."""
    assert where(report) == [(run_id, seq)], [str(p) for p in report.problems]
    (problem,) = report.problems
    for word in words:
        assert word in problem.what, str(problem)
    return problem


def baton_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``baton`` on a copy of ``path``, in another folder, as an auditor who received the file."""
    folder = Path(tempfile.mkdtemp(dir=path.parent))
    copy = folder / "received.db"
    shutil.copyfile(path, copy)
    env = {**os.environ, "BATON_DATABASE_URL": f"sqlite:///{copy}", "COLUMNS": "400"}
    for name in ("BATON_AUDIT_KEY", "BATON_CONFIG"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "baton", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)


def assert_cli_reports(path: Path, problem: Problem, public_key: Path) -> None:
    proc = baton_cli(path, "audit", "verify", "--public-key", str(public_key))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"✗ tampering detected: {problem}"], proc.stderr
    assert "intact" not in proc.stdout


# -- an untouched record -----------------------------------------------------------------


def test_an_untouched_database_verifies_with_and_without_the_key(db: Path, keys: Keys, origin: Origin) -> None:
    signed = audit(db, keys.public)
    assert signed.ok and signed.signatures_checked
    assert (signed.runs, signed.events, signed.checkpoints) == (7, sum(origin.lengths.values()), 3)
    unsigned = audit(db, None)
    assert unsigned.ok and not unsigned.signatures_checked and unsigned.checkpoints == 3

    proc = baton_cli(db, "audit", "verify", "--public-key", str(keys.public_path))
    assert proc.returncode == 0, proc.stderr
    assert "7 runs, 40 events verified" in proc.stdout
    assert "3 signed checkpoints intact; signatures verified with the public key" in proc.stdout
    proc = baton_cli(db, "audit", "verify")
    assert proc.returncode == 0, proc.stderr
    assert "signatures not checked: pass --public-key FILE" in proc.stdout
    assert proc.stderr == ""


# -- the journals ------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "run_id", "seq"), [
    ("data", "run-b", 1),  # the first event
    ("data", "run-e", 4),  # one in the middle
    ("data", "run-c", 4),  # the last one
    ("data", "run-d", 6),  # one written after every checkpoint
    ("at", "run-a", 7),
    ("type", "run-f", 2),
    ("hash", "run-g", 2),
])
def test_an_edited_event_is_reported_where_it_was_edited(db: Path, keys: Keys, field: str, run_id: str,
                                                         seq: int) -> None:
    edit_event(db, run_id, seq, field)
    only_problem(audit(db, keys.public), run_id, seq, "does not match its hash")


def test_an_edited_event_is_reported_by_the_command_line(db: Path, keys: Keys) -> None:
    edit_event(db, "run-e", 4, "data")
    problem = only_problem(audit(db, keys.public), "run-e", 4)
    assert str(problem).startswith("run run-e, event 4: StepRan does not match its hash")
    assert_cli_reports(db, problem, keys.public_path)


@pytest.mark.parametrize(("run_id", "seq"), [("run-b", 3), ("run-a", 6), ("run-c", 1)])
def test_a_deleted_event_is_reported_as_missing(db: Path, keys: Keys, run_id: str, seq: int) -> None:
    sql(db, ("DELETE FROM events WHERE run_id = ? AND seq = ?", (run_id, seq)))
    only_problem(audit(db, keys.public), run_id, seq, f"event {seq} is missing")


def test_an_inserted_event_with_a_plausible_hash_breaks_the_chain_after_it(db: Path, keys: Keys) -> None:
    insert_event(db, "run-b", 3)
    assert len(journal(db, "run-b")) == 7
    only_problem(audit(db, keys.public), "run-b", 4, "does not match its hash")


@pytest.mark.parametrize(("rewrite_anchor", "words"), [
    (False, "not the one the run was anchored at"),
    (True, "not the one signed checkpoint 1 recorded"),
])
def test_an_inserted_event_with_the_chain_recomputed_is_caught_at_the_recorded_head(
        db: Path, keys: Keys, rewrite_anchor: bool, words: str) -> None:
    insert_event(db, "run-b", 3, rechain=True)
    if rewrite_anchor:
        sql(db, ("UPDATE runs SET anchor_hash = (SELECT hash FROM events WHERE run_id = 'run-b' AND seq = 7), "
                 "anchor_seq = 7 WHERE run_id = 'run-b'", ()))
    only_problem(audit(db, keys.public), "run-b", 6, words)


@pytest.mark.parametrize(("run_id", "i", "j"), [("run-e", 2, 5), ("run-a", 6, 7), ("run-d", 5, 6), ("run-c", 1, 4)])
def test_reordered_events_are_reported_at_the_first_one_moved(db: Path, keys: Keys, run_id: str, i: int,
                                                              j: int) -> None:
    swap(db, run_id, i, j)
    assert [r.seq for r in journal(db, run_id)] == list(range(1, len(journal(db, run_id)) + 1))
    only_problem(audit(db, keys.public), run_id, i, "does not match its hash")


@pytest.mark.parametrize(("keep", "checkpoint", "recorded"), [(6, 2, 8), (3, 1, 5), (0, 1, 5)])
def test_a_tail_cut_behind_a_checkpoint_is_caught_by_it_even_with_the_anchor_rewritten(
        db: Path, keys: Keys, tmp_path: Path, keep: int, checkpoint: int, recorded: int) -> None:
    truncate(db, "run-a", keep, rewrite_anchor=True)
    problem = only_problem(audit(db, keys.public), "run-a", keep + 1,
                           f"the journal ends at event {keep} but signed checkpoint {checkpoint} "
                           f"recorded event {recorded}")
    # The chain and the rewritten anchor alone see nothing wrong: the checkpoint is what tells.
    store = SqliteStore(db)
    try:
        assert verify_run(store, "run-a") == (keep, None)
    finally:
        store.close()
    bare = tmp_path / "without-checkpoints.db"
    shutil.copyfile(db, bare)
    sql(bare, ("DELETE FROM checkpoints", ()), ("DELETE FROM checkpoint_heads", ()))
    assert audit(bare, keys.public).ok
    if keep == 6:
        assert_cli_reports(db, problem, keys.public_path)


def test_a_tail_cut_without_rewriting_the_anchor_is_caught_by_the_anchor(db: Path, keys: Keys) -> None:
    truncate(db, "run-a", 6, rewrite_anchor=False)
    only_problem(audit(db, keys.public), "run-a", 7, "the run was anchored at event 8")


def test_events_after_the_last_checkpoint_rest_on_the_anchor_alone(db: Path, keys: Keys) -> None:
    """run-d's last three events came after every checkpoint (which recorded it at event 4).
    Cutting them is caught by the anchor; cutting them and rewriting the anchor too is a
    consistent, shorter record that nothing signed contradicts: the limit of checkpoints."""
    truncate(db, "run-d", 5, rewrite_anchor=False)
    only_problem(audit(db, keys.public), "run-d", 6, "anchored at event 7")
    truncate(db, "run-d", 5, rewrite_anchor=True)
    assert audit(db, keys.public).ok
    truncate(db, "run-d", 3, rewrite_anchor=True)  # now behind the checkpoint: caught
    only_problem(audit(db, keys.public), "run-d", 4, "signed checkpoint 1 recorded event 4")


@pytest.mark.parametrize(("run_id", "checkpoint"), [("run-b", 1), ("run-f", 2), ("run-g", 3)])
def test_a_deleted_run_that_a_checkpoint_recorded_is_reported(db: Path, keys: Keys, run_id: str,
                                                              checkpoint: int) -> None:
    sql(db, ("DELETE FROM events WHERE run_id = ?", (run_id,)), ("DELETE FROM runs WHERE run_id = ?", (run_id,)))
    report = audit(db, keys.public)
    only_problem(report, run_id, 1, f"the run is gone, but signed checkpoint {checkpoint} recorded it")
    assert report.runs == 6


# -- the checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(("removed", "seq", "words"), [
    ([1], 1, "checkpoint 1 is missing: it was removed"),
    ([2], 2, "checkpoint 2 is missing: it was removed"),
    ([3], 3, "it recorded run run-g but is missing"),
    ([2, 3], 3, "it recorded run run-g but is missing"),
])
def test_a_removed_checkpoint_is_reported(db: Path, keys: Keys, removed: list[int], seq: int, words: str) -> None:
    sql(db, *[("DELETE FROM checkpoints WHERE seq = ?", (n,)) for n in removed])
    problem = only_problem(audit(db, keys.public), None, seq, words)
    assert str(problem).startswith(f"checkpoint {seq}: ")
    only_problem(audit(db, None), None, seq, words)  # no key needed for that
    if removed == [2]:
        assert_cli_reports(db, problem, keys.public_path)


@pytest.mark.parametrize("column", ["body", "hash"])
def test_a_changed_checkpoint_is_reported_by_its_hash(db: Path, keys: Keys, column: str) -> None:
    old = stored_checkpoint(db, 2)
    at = old.body.index('"at":"') + 8  # a digit of the year: the heads are left as they were
    new = flip(old.body, at) if column == "body" else flip(old.hash, 10)
    sql(db, (f"UPDATE checkpoints SET {column} = ? WHERE seq = 2", (new,)))
    for key in (keys.public, None):
        only_problem(audit(db, key), None, 2, "does not match its hash: it was changed after it was signed")


def test_a_changed_signature_is_reported_with_the_key_only(db: Path, keys: Keys) -> None:
    old = stored_checkpoint(db, 2).signature
    sql(db, ("UPDATE checkpoints SET signature = ? WHERE seq = 2", (flip(old, 0),)))
    only_problem(audit(db, keys.public), None, 2, "does not verify with the public key: it was forged")
    assert audit(db, None).ok


def forge_last(db: Path, keys: Keys, key_name: str | None) -> None:
    """Cut run-g (recorded only by checkpoint 3) to two events, and make the index and
    checkpoint 3 agree with the cut: re-hashed and re-signed, with someone else's key."""
    truncate(db, "run-g", 2, rewrite_anchor=True)
    tail = journal(db, "run-g")[-1]
    forge_checkpoint(db, 3, keys.other, key_name=key_name, heads=[("run-g", 2, tail.hash)])


def forge_from_the_middle(db: Path, keys: Keys, key_name: str | None) -> None:
    """Cut run-f (recorded by checkpoint 2) to three events; re-sign checkpoint 2 with the cut
    head and checkpoint 3 with its link to the new checkpoint 2."""
    truncate(db, "run-f", 3, rewrite_anchor=True)
    tail = journal(db, "run-f")[-1]
    a = journal(db, "run-a")[-1]
    digest = forge_checkpoint(db, 2, keys.other, key_name=key_name,
                              heads=[("run-a", a.seq, a.hash), ("run-f", 3, tail.hash)])
    forge_checkpoint(db, 3, keys.other, key_name=key_name, prev=digest)


@pytest.mark.parametrize(("forge", "seq"), [(forge_last, 3), (forge_from_the_middle, 2)])
@pytest.mark.parametrize("claims_our_key", [False, True])
def test_a_checkpoint_re_signed_with_another_key_is_caught_only_with_the_public_key(
        db: Path, keys: Keys, forge: Callable[[Path, Keys, str | None], None], seq: int, claims_our_key: bool) -> None:
    forge(db, keys, None if claims_our_key else key_id(keys.other.public_key()))
    unsigned = audit(db, None)
    assert unsigned.ok and not unsigned.signatures_checked and unsigned.checkpoints == 3
    words = ("its signature does not verify with the public key: it was forged" if claims_our_key else
             f"it was signed with key {key_id(keys.other.public_key())}, not with this public key "
             f"({key_id(keys.public)})")
    problem = only_problem(audit(db, keys.public), None, seq, words)
    if forge is forge_last and not claims_our_key:
        proc = baton_cli(db, "audit", "verify")
        assert proc.returncode == 0, proc.stderr
        assert "3 signed checkpoints intact; signatures not checked" in proc.stdout
        assert_cli_reports(db, problem, keys.public_path)


def test_without_the_key_a_rewritten_checkpoint_must_still_match_its_root(db: Path, keys: Keys) -> None:
    truncate(db, "run-g", 2, rewrite_anchor=True)
    tail = journal(db, "run-g")[-1]
    forge_checkpoint(db, 3, keys.other, heads=[("run-g", 2, tail.hash)], root=False)
    for key in (None, keys.public):
        only_problem(audit(db, key), None, 3, "its heads do not match its Merkle root")


def test_without_the_key_a_rewritten_checkpoint_must_still_be_linked_from_the_next(db: Path, keys: Keys) -> None:
    truncate(db, "run-f", 3, rewrite_anchor=True)
    tail, a = journal(db, "run-f")[-1], journal(db, "run-a")[-1]
    forge_checkpoint(db, 2, keys.other, heads=[("run-a", a.seq, a.hash), ("run-f", 3, tail.hash)])
    only_problem(audit(db, None), None, 3, "it does not follow checkpoint 2: a checkpoint was removed or replaced")
    only_problem(audit(db, keys.public), None, 2, "its signature does not verify")


def test_checkpoints_verified_with_the_wrong_public_key_are_reported(db: Path, keys: Keys) -> None:
    other = keys.other.public_key()
    problem = only_problem(audit(db, other), None, 1, f"it was signed with key {key_id(keys.public)}, "
                                                      f"not with this public key ({key_id(other)})")
    assert_cli_reports(db, problem, keys.other_public_path)


# -- edits in the corners: unparseable bodies, respelled signatures, stray rows -----------


@pytest.mark.parametrize("edit", ["not JSON", "a head's seq made negative"])
def test_a_checkpoint_body_that_no_longer_parses_is_reported(db: Path, keys: Keys, edit: str) -> None:
    old = stored_checkpoint(db, 2).body
    new = "x" + old[1:] if edit == "not JSON" else old.replace('["run-a",8,', '["run-a",-9,')
    assert new != old
    sql(db, ("UPDATE checkpoints SET body = ? WHERE seq = 2", (new,)))
    only_problem(audit(db, keys.public), None, 2, "does not match its hash")


def test_a_changed_head_in_a_checkpoint_does_not_accuse_the_journal(db: Path, keys: Keys) -> None:
    old = stored_checkpoint(db, 2).body
    head = journal(db, "run-f")[-1].hash
    sql(db, ("UPDATE checkpoints SET body = ? WHERE seq = 2", (old.replace(head, flip(head, 0)),)))
    only_problem(audit(db, keys.public), None, 2, "does not match its hash")


def test_any_change_to_a_signature_is_reported(db: Path, keys: Keys, origin: Origin) -> None:
    old = stored_checkpoint(db, 1).signature
    assert len(old) == 88 and old.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    new = old[:85] + alphabet[alphabet.index(old[85]) ^ 1] + "=="
    assert new != old
    sql(db, ("UPDATE checkpoints SET signature = ? WHERE seq = 1", (new,)))
    assert dump(db)[1] != origin.dump[1]
    assert not audit(db, keys.public).ok


@pytest.mark.parametrize("place", ["seq 0", "seq -1", "a run the index does not hold"])
def test_event_rows_outside_every_journal_are_reported(db: Path, keys: Keys, place: str) -> None:
    rows = journal(db, "run-c")
    if place == "a run the index does not hold":
        extra = [r._replace(run_id="run-z") for r in rows]
    else:
        extra = [rows[1]._replace(seq=int(place.removeprefix("seq ")))]
    write_rows(db, extra)
    assert len(dump(db)[0]) == 40 + len(extra)
    assert not audit(db, keys.public).ok


# -- any change at all -------------------------------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """Twelve runs of 3 to 8 events (two of them longer, continued after checkpoint 1), all
    of it covered by checkpoints 1 and 2."""
    folder = tmp_path_factory.mktemp("many")
    keys = make_keys(folder)
    specs = [(f"h{i:02d}", 1 + (i * 5) % 6, i in (0, 3)) for i in range(12)]
    with pytest.MonkeyPatch.context() as env:
        env.delenv("BATON_AUDIT_KEY", raising=False)
        with Baton(make_settings(folder)) as baton:
            start_runs(baton, specs[:8])
            sign(baton, keys.private)
            finish(baton, "h00")
            finish(baton, "h03")
            start_runs(baton, specs[8:])
            sign(baton, keys.private)
    built = describe(folder / "b.db", keys)
    assert len(built.lengths) == 12 and len(built.heads) == 2
    assert all(3 <= n <= 8 for r, n in built.lengths.items() if r not in ("h00", "h03"))
    for run_id, n in built.lengths.items():  # every event is behind a checkpoint
        assert max(h.get(run_id, 0) for h in built.heads) == n
    assert audit(built.path, keys.public).ok
    yield built


def one_char_edited(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(min_value=0, max_value=len(text) - 1))
    return text[:i] + draw(st.characters(codec="utf-8")) + text[i + 1:]



EVENT_FIELDS = ("data", "at", "type", "hash")


def mutate(draw: st.DrawFn, conn: sqlite3.Connection, origin: Origin) -> tuple[str | None, int]:
    """Apply one random edit; return where the report must name a problem: (run, seq), or
    (None, checkpoint seq)."""
    kind = draw(st.sampled_from(["edit event", "delete event", "duplicate event", "swap events", "truncate",
                                 "delete checkpoint", "edit checkpoint"]))
    event(kind)
    run_id = draw(st.sampled_from(sorted(origin.lengths)))
    last = origin.lengths[run_id]
    seq = draw(st.integers(min_value=1, max_value=last))
    at = (run_id, seq)
    if kind == "edit event":
        field = draw(st.sampled_from(EVENT_FIELDS))
        (old,) = conn.execute(f"SELECT {field} FROM events WHERE run_id = ? AND seq = ?", at).fetchone()
        conn.execute(f"UPDATE events SET {field} = ? WHERE run_id = ? AND seq = ?",
                     (one_char_edited(draw, old), *at))
        return at
    if kind == "delete event":
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq = ?", at)
        return at
    if kind == "duplicate event":
        new_seq = last + draw(st.integers(min_value=1, max_value=3))
        conn.execute("INSERT INTO events (run_id, seq, type, at, codec, data, hash) SELECT run_id, ?, type, at, "
                     "codec, data, hash FROM events WHERE run_id = ? AND seq = ?", (new_seq, *at))
        return run_id, last + 1
    if kind == "swap events":
        other = draw(st.integers(min_value=1, max_value=last).filter(lambda s: s != seq))
        i, j = sorted((seq, other))
        for old, new in ((i, -1000), (j, i), (-1000, j)):
            conn.execute("UPDATE events SET seq = ? WHERE run_id = ? AND seq = ?", (new, run_id, old))
        return run_id, i
    if kind == "truncate":
        keep = seq - 1
        rows = conn.execute("SELECT hash FROM events WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        conn.execute("DELETE FROM events WHERE run_id = ? AND seq > ?", (run_id, keep))
        if draw(st.booleans()):
            conn.execute("UPDATE runs SET anchor_seq = ?, anchor_hash = ? WHERE run_id = ?",
                         (keep, rows[keep - 1][0] if keep else GENESIS_HASH, run_id))
        return run_id, keep + 1
    checkpoint = draw(st.integers(min_value=1, max_value=len(origin.heads)))
    if kind == "delete checkpoint":
        conn.execute("DELETE FROM checkpoints WHERE seq = ?", (checkpoint,))
        return None, checkpoint
    field = draw(st.sampled_from(["body", "hash", "signature"]))
    (old,) = conn.execute(f"SELECT {field} FROM checkpoints WHERE seq = ?", (checkpoint,)).fetchone()
    new = one_char_edited(draw, old)
    conn.execute(f"UPDATE checkpoints SET {field} = ? WHERE seq = ?", (new, checkpoint))
    return None, checkpoint


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_change_to_the_events_or_checkpoints_is_reported(many: Origin, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "copy.db"
        shutil.copyfile(many.path, path)
        conn = sqlite3.connect(path)
        try:
            with conn:
                expected = mutate(data.draw, conn, many)
        finally:
            conn.close()
        changed = dump(path) != many.dump
        report = audit(path, many.keys.public)
    event("changed" if changed else "unchanged")
    if not changed:  # e.g. a character replaced by itself: nothing to report, and nothing is
        assert report.ok, [str(p) for p in report.problems]
        return
    assert expected in where(report), (expected, [str(p) for p in report.problems])


# -- checkpoints written at the same moment ----------------------------------------------


class Racing:
    """A store whose first ``last_checkpoint`` waits for the other writer's: both then seal
    the same next seq from the same previous checkpoint, as two processes at once would."""

    def __init__(self, inner: SqliteStore, barrier: threading.Barrier, adds: list[int]) -> None:
        self.inner, self.barrier, self.adds, self.waited = inner, barrier, adds, False

    def last_checkpoint(self) -> Checkpoint | None:
        found = self.inner.last_checkpoint()
        if not self.waited:
            self.waited = True
            self.barrier.wait(timeout=10)
        return found

    def add_checkpoint(self, checkpoint: Checkpoint, now: float) -> None:
        self.adds.append(checkpoint.seq)
        self.inner.add_checkpoint(checkpoint, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def race(path: Path, key: Ed25519PrivateKey, *, force: bool) -> tuple[list[Checkpoint | None], list[int]]:
    barrier, adds = threading.Barrier(2), []
    results: list[Checkpoint | None] = []
    errors: list[BaseException] = []
    stores = [SqliteStore(path), SqliteStore(path)]

    def write(store: SqliteStore) -> None:
        try:
            results.append(write_checkpoint(Racing(store, barrier, adds), key, 1_800_000_000.0, force=force))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for store in stores:
        store.close()
    assert not errors, errors
    return results, adds


@pytest.mark.parametrize("force", [True, False])
def test_checkpoints_written_at_once_do_not_fork(tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch,
                                                 force: bool) -> None:
    monkeypatch.delenv("BATON_AUDIT_KEY", raising=False)
    with Baton(make_settings(tmp_path)) as baton:
        start_runs(baton, [("r1", 2, False), ("r2", 1, False)])
        sign(baton, keys.private)
        start_runs(baton, [("r3", 3, False)])
    path = tmp_path / "b.db"

    results, adds = race(path, keys.private, force=force)

    assert adds[:2] == [2, 2]  # both sealed checkpoint 2; one of them lost and tried again
    written = sorted((c for c in results if c is not None), key=lambda c: c.seq)
    if force:
        assert adds == [2, 2, 3]
        assert [c.seq for c in written] == [2, 3]
        assert written[1].content["prev"] == written[0].hash
        assert [c.heads for c in written][1] == []  # the later one found nothing new to record
    else:
        assert adds == [2, 2] and results.count(None) == 1
        assert [c.seq for c in written] == [2]
    assert [r for r, _, _ in written[0].heads] == ["r3"]
    conn = sqlite3.connect(path)
    try:
        stored = [json.loads(body)["seq"] for (body,) in conn.execute("SELECT body FROM checkpoints ORDER BY seq")]
    finally:
        conn.close()
    assert stored == list(range(1, len(written) + 2))
    report = audit(path, keys.public)
    assert report.ok and report.checkpoints == len(written) + 1, [str(p) for p in report.problems]
    with pytest.raises(AppendConflict):  # and a stale writer cannot slip in a second checkpoint 2
        store = SqliteStore(path)
        try:
            store.add_checkpoint(written[0], 1_800_000_001.0)
        finally:
            store.close()
