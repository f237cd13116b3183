"""Large values are stored once, by content hash: a run that resends the same big context on
every step stores it once; replay, the CLI and the audit see the full values; a changed or
missing blob is caught."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from baton import Baton, Context, RunStatus, tool, workflow
from baton.audit import verify
from baton.audit.export import export_lines, verify_export
from baton.journal import BLOB_CODEC
from baton.journal import events as ev
from baton.journal.blobs import externalize, references, resolve
from engine_support import make_settings

CONTEXT = [{"role": "user", "content": f"message {i}: " + "lorem ipsum " * 80} for i in range(100)]  # ~100 KB
SEEN: list[int] = []


@tool(idempotent=True)
def think(step: int, context: list[dict[str, str]]) -> dict[str, Any]:
    SEEN.append(len(context))
    return {"step": step, "echo": context[-1]["content"][:20]}


@workflow
def long_run(ctx: Context, steps: int) -> int:
    for i in range(steps):
        ctx.call(think, step=i, context=CONTEXT)
    return steps


def test_a_thousand_steps_resending_the_same_context_store_it_once(tmp_path: Path) -> None:
    size = len(json.dumps(CONTEXT))
    assert 90_000 < size < 130_000
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.start(long_run, steps=1000)
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        blob_bytes = baton.store.blob_bytes()
        assert blob_bytes < 1.5 * size, blob_bytes  # once, not 1,000 times (~100 MB)
        event_bytes = sum(len(r.data) for r in baton.journal(run_id))
        assert event_bytes < 1000 * 600, event_bytes  # each step refers to it by hash
        assert sum(r.codec == BLOB_CODEC for r in baton.journal(run_id)) == 1000
        # Replay reads the full value back: resuming runs no tool again and completes.
        ran = next(e for e in baton.events(run_id) if isinstance(e, ev.StepRan))
        assert ran.args["context"] == CONTEXT
        assert verify(baton.store).ok


def corrupt(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(statement)
    conn.close()


def test_a_changed_or_missing_blob_is_caught(tmp_path: Path) -> None:
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.start(long_run, steps=2)
        baton.drive(run_id)
    path = tmp_path / "b.db"
    corrupt(path, "UPDATE blobs SET data = replace(data, 'message 7', 'message 8')")
    with Baton(make_settings(tmp_path)) as baton:
        (problem,) = verify(baton.store).problems
        assert problem.run_id == run_id and "does not match its hash" in problem.what
    corrupt(path, "DELETE FROM blobs")
    with Baton(make_settings(tmp_path)) as baton:
        (problem,) = verify(baton.store).problems
        assert "is missing" in problem.what


def test_an_export_carries_the_blobs_and_verifies(tmp_path: Path) -> None:
    with Baton(make_settings(tmp_path)) as baton:
        baton.drive(baton.start(long_run, steps=3))
        lines = list(export_lines(baton.store, None, 0.0))
    blob_lines = [line for line in lines if '"kind":"blob"' in line]
    assert blob_lines and len(blob_lines) == len(set(blob_lines))  # each stored value once
    assert verify_export(lines, None).ok
    tampered = [line.replace("message 7", "message 8") if '"kind":"blob"' in line else line for line in lines]
    assert not verify_export(tampered, None).ok


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
       threshold=st.integers(min_value=2, max_value=200))
def test_externalized_values_resolve_to_themselves(value: dict[str, Any], threshold: int) -> None:
    """Whatever the data (keys starting with NUL, dicts that look like references included),
    moving large parts apart and resolving them gives the same value back."""
    value = {**value, "\u0000blob": "looks like a reference", "x": {"\u0000blob": "so does this"}}
    blobs: dict[str, str] = {}
    stored = json.loads(externalize(value, blobs, threshold))
    assert resolve(stored, blobs.__getitem__) == value
    assert set(references(stored)) <= set(blobs)


@tool(idempotent=True)
def reply(turn: int, history: list[dict[str, str]]) -> str:
    return f"reply {turn}"


@workflow
def conversation(ctx: Context, turns: int) -> int:
    history: list[dict[str, str]] = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"turn {turn}: " + "details " * 100})
        history.append({"role": "assistant", "content": ctx.call(reply, turn=turn, history=history)})
    return turns


def stored_bytes(tmp_path: Path, turns: int) -> int:
    with Baton(make_settings(tmp_path)) as baton:
        run_id = baton.start(conversation, turns=turns)
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        ran = [e for e in baton.events(run_id) if isinstance(e, ev.StepRan)]
        assert len(ran[-1].args["history"]) == 2 * turns - 1
        assert ran[-1].args["history"][0]["content"].startswith("turn 0")
        return baton.store.blob_bytes() + sum(len(r.data) for r in baton.journal(run_id))


def test_a_growing_context_costs_the_same_per_step_however_long_it_gets(tmp_path: Path) -> None:
    """Each step resends the whole conversation so far. Stored naively that is quadratic
    (twice the turns, four times the bytes); in chunks, what a step adds stays the same."""
    half, full = stored_bytes(tmp_path / "150", 150), stored_bytes(tmp_path / "300", 300)
    assert full < 2.4 * half, (half, full)
    message = len(json.dumps({"role": "user", "content": "turn 0: " + "details " * 100}))
    naive = sum(2 * t * message for t in range(300))
    assert full < naive / 10, (full, naive)
