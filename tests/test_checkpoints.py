"""Workers sign checkpoints on their own when they hold the audit key: periodically, and
before they exit, so that what they did is covered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from baton import Baton, Context, tool, workflow
from baton.audit import verify, write_checkpoint
from baton.audit.keys import KEY_ENV, generate, load_private, load_public
from engine_support import make_settings


@tool(idempotent=True)
def note(i: int) -> int:
    return i


@workflow
def notes(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(note, i=i)
    return n


def test_a_worker_with_the_key_signs_what_it_did_before_it_exits(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = generate(tmp_path / "keys")
    monkeypatch.setenv(KEY_ENV, str(private))
    with Baton(make_settings(tmp_path)) as baton:
        run_ids = [baton.start(notes, n=3) for _ in range(2)]
        baton.worker().run(until_idle=True)
        (checkpoint,) = baton.store.checkpoints()
        assert sorted(run_id for run_id, _, _ in checkpoint.heads) == sorted(run_ids)
        heads = baton.store.run_heads()
        assert all(heads[run_id][0] == seq for run_id, seq, _ in checkpoint.heads)
        report = verify(baton.store, public_key=load_public(str(public)))
        assert report.ok and report.checkpoints == 1 and report.signatures_checked


def test_a_worker_signs_periodically_and_skips_when_nothing_changed(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    private, _ = generate(tmp_path / "keys")
    monkeypatch.setenv(KEY_ENV, str(private))
    with Baton(make_settings(tmp_path, checkpoint_seconds=0.0)) as baton:
        baton.start(notes, n=2)
        worker = baton.worker()
        worker.run(until_idle=True)
        first = len(baton.store.checkpoints())
        worker.run(until_idle=True)  # nothing new: no empty checkpoints pile up
        assert len(baton.store.checkpoints()) == first >= 1


def test_without_the_key_workers_sign_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with Baton(make_settings(tmp_path)) as baton:
        baton.start(notes, n=1)
        baton.worker().run(until_idle=True)
        assert baton.store.checkpoints() == []


def test_verify_reads_one_moment_while_another_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint (and a new run) committed by someone else while verify is reading must not
    look like tampering: verify reads everything in one snapshot."""
    private, public = generate(tmp_path / "keys")
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = load_private(str(private))
    assert key is not None
    settings = make_settings(tmp_path)
    with Baton(settings) as baton, Baton(settings) as other:
        baton.drive(baton.start(notes, n=2))
        write_checkpoint(baton.store, key, baton.clock.time())
        read_checkpoints = baton.store.checkpoints

        def checkpoints_then_someone_writes() -> list[Any]:
            found = read_checkpoints()
            other.drive(other.start(notes, n=1))
            write_checkpoint(other.store, key, other.clock.time())
            return found

        monkeypatch.setattr(baton.store, "checkpoints", checkpoints_then_someone_writes)
        report = verify(baton.store, public_key=load_public(str(public)))
        assert report.ok, report.problems
        monkeypatch.undo()
        assert verify(baton.store, public_key=load_public(str(public))).checkpoints == 2
