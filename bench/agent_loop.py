"""The runtime's own overhead per agent turn, next to the cost of a plain step.

A turn of the agent loop is a model call (a journaled step) and the tool calls it
proposes (one here, also a step), plus the loop's own work: building the context from
the transcript, validating the proposed call, pinning facts, and encoding the request and
the response into the journal. The model here answers from a precomputed list and times
itself, so its time is subtracted: what is left is Baton's.

Run from the repository root::

    .venv/bin/python bench/agent_loop.py
    .venv/bin/python bench/agent_loop.py --turns 10,50,200 --repeat 5

Every figure is measured in the same run, on temporary SQLite databases in one folder. The
floor is a plain workflow that makes the same number of tool steps; see docs/benchmarks.md.
"""

import argparse
import datetime
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from baton import Baton, Context, RunStatus, Settings, tool, workflow
from baton.agent import AgentLimits, Message, ModelRequest, ModelResponse, TextPart, TokenUsage, ToolCall, agent

TARGET_SHARE = 0.01
"""The loop's own work per turn (beyond its two steps) should stay under 1% of a model call
that takes one second: a fast hosted model answers a short turn in about that."""
MODEL_CALL = 1.0


@tool(idempotent=True)
def noop(i: int, *, idempotency_key: str) -> dict[str, Any]:
    """Do nothing, idempotently."""
    return {"i": i, "ok": True}


@workflow
def plain_steps(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(noop, i=i)
    return n


class TimedModel:
    """Answers from a precomputed list (a call of ``noop`` per turn, then an answer) and
    adds up the time spent inside ``complete``, to be subtracted."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.spent = 0.0
        self.calls = 0
        self.replies = {n: self._reply(n) for n in range(0, turns + 1)}

    @property
    def name(self) -> str:
        return "bench:timed"

    def _reply(self, n: int) -> ModelResponse:
        if n >= self.turns:
            message = Message(role="assistant", content=(TextPart(text="done"),))
        else:
            message = Message(role="assistant", content=(TextPart(text=f"step {n}"),
                                                         ToolCall(id=f"c{n}", name="noop", args={"i": n})))
        return ModelResponse(message=message, usage=TokenUsage(input_tokens=100, output_tokens=20),
                             stop_reason="end_turn" if n >= self.turns else "tool_use", model="timed")

    def complete(self, request: ModelRequest) -> ModelResponse:
        start = time.perf_counter()
        self.calls += 1
        reply = self.replies[request.turn if request.purpose == "turn" else 0]
        if request.purpose == "summary":
            reply = ModelResponse(message=Message.user("summary of earlier steps"), model="timed")
        self.spent += time.perf_counter() - start
        return reply


def bare_commit(folder: Path, commits: int = 500) -> float:
    conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT)")
    taken = []
    for _ in range(commits):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (data) VALUES (?)", ("x" * 300,))
        conn.execute("COMMIT")
        taken.append(time.perf_counter() - start)
    return statistics.median(taken)


def measure(folder: Path, turns: int, repeat: int) -> tuple[float, float, int]:
    """(seconds per turn without the model, seconds per plain step, model calls per run)."""
    per_turn, per_step, calls = [], [], 0
    for r in range(repeat):
        with Baton(Settings(database_url=f"sqlite:///{folder / f'agent-{turns}-{r}.db'}")) as b:
            model = TimedModel(turns)
            wf = agent("bench_agent", instructions="Call noop once per turn.", model=model, tools=[noop],
                       limits=AgentLimits(max_turns=turns + 1))
            start = time.perf_counter()
            record = b.run(wf, goal="benchmark")
            elapsed = time.perf_counter() - start
            if record.status is not RunStatus.COMPLETED:
                raise SystemExit(f"the agent run ended {record.status.value}: {record.outcome}")
            calls = model.calls
            per_turn.append((elapsed - model.spent) / turns)
        with Baton(Settings(database_url=f"sqlite:///{folder / f'plain-{turns}-{r}.db'}")) as b:
            start = time.perf_counter()
            record = b.run(plain_steps, {"n": turns})
            per_step.append((time.perf_counter() - start) / max(1, turns))
    return statistics.median(per_turn), statistics.median(per_step), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", default="10,50,200", help="turns per run, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(x) for x in args.turns.split(",")]
    print(f"Baton agent loop overhead · {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · "
          f"Python {platform.python_version()} · {os.cpu_count()} CPUs · SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        commit = bare_commit(folder)
        print(f"floor: one bare SQLite commit (WAL, synchronous=FULL): {commit * 1e6:,.1f} µs\n")
        print(f"{'turns':>6}  {'model calls':>11}  {'µs/turn (no model)':>19}  {'µs/plain step':>14}  "
              f"{'turn in steps':>13}  {'loop µs/turn':>13}")
        worst = 0.0
        for turns in sizes:
            turn, step, calls = measure(folder, turns, args.repeat)
            own = max(0.0, turn - 2 * step)  # a turn is a model step and a tool step, plus the loop's work
            worst = max(worst, own)
            print(f"{turns:>6}  {calls:>11}  {turn * 1e6:>19,.1f}  {step * 1e6:>14,.1f}  {turn / step:>13.2f}  "
                  f"{own * 1e6:>13,.1f}")
    share = worst / MODEL_CALL
    verdict = "met" if share <= TARGET_SHARE else "NOT met"
    print(f"\nA turn journals two steps (the model call and the tool call it proposed); 'loop µs/turn' is the rest: "
          f"building the context, checking the call, pinning facts.\nWorst loop overhead: {worst * 1e6:,.0f} µs per "
          f"turn = {share:.2%} of a {MODEL_CALL:g} s model call (target under {TARGET_SHARE:.0%}: {verdict}).")
    sys.exit(0 if share <= TARGET_SHARE else 1)


if __name__ == "__main__":
    main()
