"""How fast ``baton audit verify`` checks a record, in events per second on one core.

Run from the repository root::

    .venv/bin/python bench/audit_verify.py                  # 100 runs x 1,000 events
    .venv/bin/python bench/audit_verify.py --runs 20 --events 5000

Builds a database of real journals (written through Baton's own encoding, fast: rows are
inserted directly rather than by running workflows), signs a checkpoint over it, and times
``verify`` with the public key: every hash recomputed, every checkpoint checked. The floor in
the same run is sha256 alone over the same envelopes, in Python. Target: over 100,000 events
per second.

Then the storage a growing context costs: a conversation whose every step resends the whole
history so far, run for N and 2N turns; flat means the second N turns cost what the first N
did (a ratio near 1), quadratic means three times as much. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from baton import Baton, Context, Settings, SqliteStore, tool, workflow
from baton.audit import verify, write_checkpoint
from baton.audit.keys import generate, load_private, load_public
from baton.journal import GENESIS_HASH, encode_batch, index_update
from baton.journal import events as ev
from baton.store import NewRun

TARGET = 100_000


@tool(idempotent=True)
def reply(turn: int, history: list[dict[str, str]]) -> str:
    return f"reply {turn}"


@workflow
def conversation(ctx: Context, turns: int) -> int:
    history: list[dict[str, str]] = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"turn {turn}: " + "the customer says " * 40})
        history.append({"role": "assistant", "content": ctx.call(reply, turn=turn, history=history)})
    return turns


def stored(folder: Path, turns: int) -> int:
    with Baton(Settings(database_url=f"sqlite:///{folder / f'growth-{turns}.db'}", durability="normal")) as baton:
        run_id = baton.start(conversation, turns=turns)
        baton.drive(run_id)
        return baton.store.blob_bytes() + sum(len(r.data) for r in baton.journal(run_id))


def build(store: SqliteStore, runs: int, events: int) -> int:
    now = time.time()
    for r in range(runs):
        run_id = f"run-{r:06d}"
        started = ev.RunStarted(workflow="bench", workflow_ref="bench:bench", input={"n": r})
        rows = encode_batch(run_id, 0, GENESIS_HASH, [started], now)
        store.create_run(NewRun(run_id, "bench", "bench:bench", now), rows, index_update([started]))
        head_seq, head_hash = rows[-1].seq, rows[-1].hash
        batch = [ev.StepRan(step_id=i, kind="call", name="lookup", args={"order_id": str(i), "amount": 12.5},
                            attempt=1, idempotency_key=f"{run_id}:{i}", result={"ok": True, "i": i})
                 for i in range(1, events)]
        for start in range(0, len(batch), 500):
            chunk = encode_batch(run_id, head_seq, head_hash, batch[start:start + 500], now)
            store.append(run_id, head_seq, chunk, index_update([]), now)
            head_seq, head_hash = chunk[-1].seq, chunk[-1].hash
    return runs * events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=250, help="turns of the growing conversation (then twice)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=".") as folder:
        root = Path(folder)
        store = SqliteStore(root / "audit.db", durability="normal")
        total = build(store, args.runs, args.events)
        private, public = generate(root / "keys")
        key = load_private(str(private))
        assert key is not None
        write_checkpoint(store, key, time.time())
        store.close()

        store = SqliteStore(root / "audit.db", migrate=False)  # a fresh connection, as an auditor's
        t0 = time.perf_counter()
        report = verify(store, public_key=load_public(str(public)))
        seconds = time.perf_counter() - t0
        assert report.ok and report.events == total, report.problems[:3]
        envelopes = [row.envelope() for row in store.read("run-000000")]
        t1 = time.perf_counter()
        for _ in range(max(1, total // len(envelopes))):
            prev = GENESIS_HASH
            for envelope in envelopes:
                prev = hashlib.sha256((prev + envelope).encode()).hexdigest()
        floor = (time.perf_counter() - t1) / (max(1, total // len(envelopes)) * len(envelopes))
        store.close()
        first, both = stored(root, args.turns), stored(root, 2 * args.turns)

    rate = total / seconds
    print("Baton audit verification")
    print("=" * 78)
    print(f"date        {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    uname = platform.uname()
    print(f"machine     {uname.machine}, {os.cpu_count()} CPUs, {uname.system} {uname.release}; "
          f"python {platform.python_version()}")
    print(f"record      {args.runs} runs x {args.events} events = {total:,} events, 1 signed checkpoint")
    print()
    print(f"verify (chains, anchors, checkpoint, signature)   {seconds:6.2f} s   {rate:>10,.0f} events/s")
    print(f"floor: sha256 of the same envelopes alone          {floor * total:6.2f} s   {1 / floor:>10,.0f} events/s")
    print()
    print(f"{'PASS' if rate > TARGET else 'FAIL'} over {TARGET:,} events per second "
          f"({rate * floor:.2f}x the sha256 floor's rate)")
    later = both - first
    print()
    print(f"growing context: {args.turns} turns store {first / 1024:,.0f} KiB ({first / args.turns / 1024:.1f} KiB "
          f"per turn); the next {args.turns} store {later / 1024:,.0f} KiB ({later / args.turns / 1024:.1f} KiB "
          "per turn)")
    print(f"{'PASS' if later < 1.5 * first else 'FAIL'} flat growth: the second half costs {later / first:.2f}x "
          "the first (quadratic would be ~3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
