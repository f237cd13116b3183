"""Workers sign checkpoints on their own when they hold the audit key: periodically, and
before they exit, so that what they did is covered."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton import Baton, Context, tool, workflow
from baton.audit import verify
from baton.audit.keys import KEY_ENV, generate, load_public
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
