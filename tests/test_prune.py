"""``baton runs prune``: finished runs go to an archive that verifies on its own, and leave the
database, which still verifies; nothing is removed without a signed checkpoint and a verified
archive."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baton import Baton, Context, RunNotFound, RunStatus, UsageError, tool, workflow
from baton.audit import verify, write_checkpoint
from baton.audit.export import verify_export
from baton.audit.keys import generate, load_private, load_public
from baton.retention import prune
from baton.testing import FakeClock
from engine_support import make_settings

DAY = 86400.0
BOOK = "Once upon a time… " * 2000  # a large value, stored apart


@tool(idempotent=True)
def read(text: str) -> int:
    return len(text)


@workflow
def story(ctx: Context, book: str, wait: bool = False) -> int:
    length: int = ctx.call(read, text=book)
    if wait:
        ctx.wait_for("go")
    return length


def test_finished_runs_are_archived_and_removed_and_both_still_verify(tmp_path: Path) -> None:
    private, public = generate(tmp_path / "keys")
    key = load_private(str(private))
    clock = FakeClock()
    archive = tmp_path / "archive.jsonl"
    with Baton(make_settings(tmp_path), clock=clock) as baton:
        old = [baton.start(story, book=BOOK + str(i)) for i in range(3)]
        shared = baton.start(story, book=BOOK)
        for run_id in [*old, shared]:
            baton.drive(run_id)
        waiting = baton.start(story, book=BOOK, wait=True)  # not finished: kept
        assert baton.drive(waiting).status is RunStatus.WAITING
        clock.advance(10 * DAY)
        recent = baton.start(story, book="short")  # finished after the cutoff: kept
        baton.drive(recent)
        blobs_before = baton.store.blob_bytes()
        events_before = sum(baton.get_run(run_id).head_seq for run_id in [*old, shared])

        report = prune(baton, clock.time() - DAY, archive, key)

        assert (report.runs, report.archive) == (4, archive)
        assert report.events == events_before
        assert sorted(baton.store.all_run_ids()) == sorted([waiting, recent])
        with pytest.raises(RunNotFound, match="archived to"):
            baton.get_run(baton.resolve_run_id(old[0]))
        # The waiting run still refers to BOOK: that value stays, the others go.
        assert 0 < baton.store.blob_bytes() < blobs_before
        assert baton.drive(waiting).status is RunStatus.WAITING
        baton.signal(waiting, "go")
        assert baton.drive(waiting).status is RunStatus.COMPLETED
        assert verify(baton.store, public_key=load_public(str(public))).ok

    checked = subprocess.run([sys.executable, "-m", "baton", "audit", "verify", "--export", str(archive),
                              "--public-key", str(public)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "4 runs" in checked.stdout, checked.stdout + checked.stderr


def test_the_last_days_runs_stay_for_the_policies_that_count_them(tmp_path: Path) -> None:
    private, _ = generate(tmp_path / "keys")
    clock = FakeClock()
    with Baton(make_settings(tmp_path), clock=clock) as baton:
        run_id = baton.start(story, book="short")
        baton.drive(run_id)
        clock.advance(DAY / 2)
        report = prune(baton, clock.time(), tmp_path / "a.jsonl", load_private(str(private)))
        assert report.runs == 0 and baton.store.all_run_ids() == [run_id]


def test_an_unwritable_archive_removes_nothing_and_says_why(tmp_path: Path) -> None:
    private, _ = generate(tmp_path / "keys")
    clock = FakeClock()
    (tmp_path / "taken").write_text("a file, not a folder")
    with Baton(make_settings(tmp_path), clock=clock) as baton:
        run_id = baton.start(story, book="short")
        baton.drive(run_id)
        clock.advance(2 * DAY)
        with pytest.raises(UsageError, match="cannot write the archive"):
            prune(baton, clock.time(), tmp_path / "taken" / "a.jsonl", load_private(str(private)))
        assert baton.store.all_run_ids() == [run_id]


def test_nothing_is_removed_without_the_key(tmp_path: Path) -> None:
    clock = FakeClock()
    with Baton(make_settings(tmp_path), clock=clock) as baton:
        run_id = baton.start(story, book="short")
        baton.drive(run_id)
        clock.advance(2 * DAY)
        with pytest.raises(UsageError, match="audit key"):
            prune(baton, clock.time(), tmp_path / "a.jsonl", None)
        assert baton.store.all_run_ids() == [run_id]
        assert not (tmp_path / "a.jsonl").exists()


def test_a_run_deleted_and_passed_off_as_pruned_is_reported(tmp_path: Path) -> None:
    """Only runs a signed checkpoint says were pruned may be gone: a row in pruned_runs,
    which anyone with the file can write, is not enough."""
    private, public = generate(tmp_path / "keys")
    clock = FakeClock()
    with Baton(make_settings(tmp_path), clock=clock) as baton:
        run_id = baton.start(story, book="short")
        baton.drive(run_id)
        write_checkpoint(baton.store, load_private(str(private)), clock.time())
        head = baton.get_run(run_id)
    conn = sqlite3.connect(tmp_path / "b.db")
    with conn:
        for table in ("events", "tool_usage", "runs"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        conn.execute("INSERT INTO pruned_runs VALUES (?, ?, ?, 'nowhere.jsonl', 0)",
                     (run_id, head.head_seq, head.head_hash))
    conn.close()
    with Baton(make_settings(tmp_path)) as baton:
        (problem,) = verify(baton.store, public_key=load_public(str(public))).problems
        assert problem.run_id == run_id and "the run is gone" in problem.what


def test_the_command_line_prunes_by_date(tmp_path: Path) -> None:
    private, _ = generate(tmp_path / "keys")
    with Baton(make_settings(tmp_path), clock=FakeClock(time.time() - 3 * DAY)) as baton:
        baton.drive(baton.start(story, book="short"))  # finished three days ago
    env = {"BATON_DATABASE_URL": make_settings(tmp_path).database_url, "BATON_AUDIT_KEY": str(private),
           "COLUMNS": "200"}
    bad = subprocess.run([sys.executable, "-m", "baton", "runs", "prune", "--finished-before", "yesterday"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--finished-before must be a date" in bad.stderr
    none = subprocess.run([sys.executable, "-m", "baton", "runs", "prune", "--finished-before", "2000-01-01"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and "no runs finished before" in none.stdout
    done = subprocess.run([sys.executable, "-m", "baton", "runs", "prune", "--finished-before", "2999-01-01",
                           "--archive", str(tmp_path / "old.jsonl")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "archived 1 runs" in done.stdout, done.stderr
    assert (tmp_path / "old.jsonl").exists()


def test_a_run_taken_out_of_an_archive_is_caught_by_its_signed_manifest(tmp_path: Path) -> None:
    private, public = generate(tmp_path / "keys")
    clock = FakeClock()
    archive = tmp_path / "archive.jsonl"
    with Baton(make_settings(tmp_path), clock=clock) as baton:
        run_ids = [baton.start(story, book=f"short {i}") for i in range(2)]
        for run_id in run_ids:
            baton.drive(run_id)
        clock.advance(2 * DAY)
        prune(baton, clock.time(), archive, load_private(str(private)))
    lines = archive.read_text().splitlines()
    assert '"kind":"manifest"' in lines[-1]
    key = load_public(str(public))
    assert verify_export(lines, key).complete
    without = [line for line in lines if f'"run_id":"{run_ids[0]}"' not in line]
    report = verify_export(without, key)
    assert not report.ok and any(p.run_id == run_ids[0] and "taken out" in p.what for p in report.problems)
    assert not verify_export(lines, None).complete  # a manifest only counts once its signature is checked
