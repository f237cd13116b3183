"""SIGKILL at every step boundary of a scripted 20-turn agent run.

Each worker process resumes the run, makes one fresh model or tool invocation, and kills
itself (SIGKILL) at the start of the next: after the step before it was journaled. The run
is taken over again and again until it ends. It must make no model call and no tool call
twice, and end exactly like the same run left alone.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, RunStatus, Settings
from baton.journal import events as ev
from baton.workflows import load_workflow

APP = Path(__file__).parent / "agentapp" / "agents.py"
DRIVE = """
import sys
from baton import Baton
with Baton() as b:
    if sys.argv[1] == "start":
        from baton.workflows import load_workflow
        run_id = b.start(load_workflow(sys.argv[2]), goal="Record the 19 steps of the job")
        print(run_id, flush=True)
    else:
        run_id = sys.argv[1]
    b.drive(run_id)
"""


def env_for(tmp: Path, die: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "AGENT_"))}
    env["BATON_DATABASE_URL"] = f"sqlite:///{tmp / 'baton.db'}"
    env["AGENT_SERVICES_DB"] = str(tmp / "services.db")
    env["BATON_MAX_RECOVERIES"] = "3"
    if die:
        env["AGENT_DIE_AT_NEXT_CALL"] = "1"
    return env


def invocations(db: Path) -> list[tuple[str, str, str, int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT kind, name, key, pid FROM invocations ORDER BY id").fetchall()


def outline(events: list[ev.Event]) -> list[tuple[str, int | None, str | None]]:
    """The run's journal without the takeovers: what it did, in order."""
    return [(e.type_name, getattr(e, "step_id", None), getattr(e, "name", None))
            for e in events if not isinstance(e, ev.RunRecovered)]


@pytest.mark.slow
def test_sigkill_at_every_step_boundary_repeats_nothing_and_ends_like_an_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The run left alone, in this process.
    alone = tmp_path / "alone"
    alone.mkdir()
    monkeypatch.setenv("AGENT_SERVICES_DB", str(alone / "services.db"))
    monkeypatch.delenv("AGENT_DIE_AT_NEXT_CALL", raising=False)
    with Baton(Settings(database_url=f"sqlite:///{alone / 'baton.db'}")) as b:
        run_id = b.start(load_workflow(f"{APP}:long_agent"), goal="Record the 19 steps of the job")
        assert b.drive(run_id).status is RunStatus.COMPLETED
        expected_result = b.result(run_id)
        expected_outline = outline(b.events(run_id))
    expected_calls = [(kind, name, key) for kind, name, key, _ in invocations(alone / "services.db")]
    assert expected_result["turns"] == 20 and any(name == "summary" for _, name, _ in expected_calls), \
        "the run must be long enough for older turns to be summarised"

    # The same run, killed at every boundary.
    killed = tmp_path / "killed"
    killed.mkdir()
    env = env_for(killed, die=True)
    first = subprocess.run([sys.executable, "-c", DRIVE, "start", f"{APP}:long_agent"], env=env, cwd=killed,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == -9, first.stderr
    run_id = first.stdout.strip()
    kills = 1
    for _ in range(len(expected_calls) + 5):
        proc = subprocess.run([sys.executable, "-c", DRIVE, run_id], env=env, cwd=killed, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr
        kills += 1
    with Baton(Settings(database_url=f"sqlite:///{killed / 'baton.db'}")) as b:
        record = b.get_run(run_id)
        assert record.status is RunStatus.COMPLETED, record
        result = b.result(run_id)
        events = b.events(run_id)
    made = invocations(killed / "services.db")
    # One process per invocation: killed at every boundary between steps.
    assert kills == len(made) - 1 == len(expected_calls) - 1
    assert len({pid for *_, pid in made}) == len(made)
    # Nothing was asked or done twice.
    repeated = [c for c, n in Counter((kind, name, key) for kind, name, key, _ in made).items() if n > 1]
    assert repeated == []
    # And the run ended as the one left alone did, with each takeover recorded.
    assert [(kind, name) for kind, name, _, _ in made] == [(kind, name) for kind, name, _ in expected_calls]
    assert _but_receipts(result) == _but_receipts(expected_result)
    assert outline(events) == expected_outline
    assert sum(isinstance(e, ev.RunRecovered) for e in events) == kills


def _but_receipts(value: Any) -> Any:
    """Receipts are made from idempotency keys, which hold the run id: the two runs differ there."""
    if isinstance(value, dict):
        return {k: _but_receipts(v) for k, v in value.items() if k != "receipt"}
    if isinstance(value, list):
        return [_but_receipts(v) for v in value]
    return value
