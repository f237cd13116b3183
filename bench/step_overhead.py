"""Per-step overhead of Baton's engine, measured against the cost of one bare SQLite commit.

Run from the repository root::

    .venv/bin/python bench/step_overhead.py
    .venv/bin/python bench/step_overhead.py --steps 10,100,1000 --repeat 5 --durability normal

Every figure is measured in the same run, on temporary databases (SQLite, WAL mode) in the
same directory, so that the ratios compare like with like. See docs/benchmarks.md.
"""

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from baton import Baton, Context, RunStatus, Settings, tool, workflow

Durability = Literal["full", "normal"]

# Targets, in bare commits per step (largest N).
IDEMPOTENT_TARGET = 1.5
NON_IDEMPOTENT_TARGET = 2.5
GROWTH_TARGET = 1.25  # µs/step at the largest N over µs/step at the smallest N
BASELINE_RUNS = 3  # 0-step runs per measurement; their median is subtracted


# -- tools and workflows --------------------------------------------------------------


@tool(idempotent=True)
def noop(i: int, *, idempotency_key: str) -> int:
    return i


@tool
def noop_intent(i: int, *, idempotency_key: str) -> int:
    return i


@tool(idempotent=True, timeout=5.0)
def noop_threaded(i: int, *, idempotency_key: str) -> int:
    return i


@workflow
def idempotent_steps(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(noop, i)
    return n


@workflow
def non_idempotent_steps(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(noop_intent, i)
    return n


@workflow
def threaded_steps(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(noop_threaded, i)
    return n


@workflow
def steps_then_wait(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(noop, i)
    ctx.wait_for("go")
    return n


@dataclass(frozen=True)
class Kind:
    key: str
    label: str
    wf: Any
    target: float | None


KINDS = [
    Kind("idempotent", "idempotent", idempotent_steps, IDEMPOTENT_TARGET),
    Kind("non_idempotent", "non-idempotent", non_idempotent_steps, NON_IDEMPOTENT_TARGET),
    Kind("timeout", "idempotent, timeout=5.0", threaded_steps, None),
]


# -- helpers --------------------------------------------------------------------------


def make_baton(folder: str, durability: Durability) -> Baton:
    db = Path(folder) / "baton.db"
    return Baton(Settings(database_url=f"sqlite:///{db}", durability=durability))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_and_check(baton: Baton, wf: Any, n: int, expect: RunStatus = RunStatus.COMPLETED) -> float:
    elapsed, record = timed(lambda: baton.run(wf, {"n": n}))
    if record.status is not expect:
        raise SystemExit(f"{wf.name}(n={n}) ended {record.status.value}, expected {expect.value}: "
                         f"{record.outcome}")
    return float(elapsed)


def cpu_model() -> str:
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (Linux only; '?' elsewhere)."""
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if path.startswith(mount) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    except (OSError, IndexError):
        pass
    return fstype


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


# -- 1. the floor ---------------------------------------------------------------------


def bare_commit(root: str, synchronous: str, commits: int) -> float:
    """Median seconds of ``BEGIN IMMEDIATE; INSERT one ~300-byte row; COMMIT``."""
    row = "x" * 300
    with tempfile.TemporaryDirectory(dir=root) as folder:
        conn = sqlite3.connect(Path(folder) / "floor.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
            samples: list[float] = []
            for i in range(commits + commits // 10):
                start = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (data) VALUES (?)", (row,))
                conn.execute("COMMIT")
                if i >= commits // 10:  # the first tenth warms up the file and the WAL
                    samples.append(time.perf_counter() - start)
        finally:
            conn.close()
    return statistics.median(samples)


# -- 2-5. per-step cost ---------------------------------------------------------------


def step_cost(root: str, durability: Durability, wf: Any, n: int) -> tuple[float, float]:
    """(seconds for the n-step run, median seconds of a 0-step run), on a fresh Baton."""
    with tempfile.TemporaryDirectory(dir=root) as folder:
        baton = make_baton(folder, durability)
        try:
            run_and_check(baton, wf, 1)  # warm up: connection, threads, lease keeper
            base = statistics.median(run_and_check(baton, wf, 0) for _ in range(BASELINE_RUNS))
            total = run_and_check(baton, wf, n)
        finally:
            baton.close()
    return total, base


# -- 6. resume ------------------------------------------------------------------------


def resume_cost(root: str, durability: Durability, n: int) -> float:
    """Seconds for a fresh Baton to replay ``n`` completed steps and finish the run."""
    with tempfile.TemporaryDirectory(dir=root) as folder:
        first = make_baton(folder, durability)
        try:
            record = first.run(steps_then_wait, {"n": n})
            if record.status is not RunStatus.WAITING:
                raise SystemExit(f"expected the run to wait, it is {record.status.value}")
            run_id = record.run_id
        finally:
            first.close()
        fresh = make_baton(folder, durability)
        try:
            fresh.register(steps_then_wait)
            fresh.signal(run_id, "go", True)
            elapsed, record = timed(lambda: fresh.drive(run_id))
            if record.status is not RunStatus.COMPLETED:
                raise SystemExit(f"resumed run ended {record.status.value}: {record.outcome}")
        finally:
            fresh.close()
    return float(elapsed)


# -- profile --------------------------------------------------------------------------


def profile(root: str, durability: Durability, n: int, top: int) -> str:
    with tempfile.TemporaryDirectory(dir=root) as folder:
        baton = make_baton(folder, durability)
        try:
            run_and_check(baton, idempotent_steps, 1)
            profiler = cProfile.Profile()
            profiler.enable()
            record = baton.run(idempotent_steps, {"n": n})
            profiler.disable()
            assert record.status is RunStatus.COMPLETED
        finally:
            baton.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    text = out.getvalue()
    # Keep the table, drop pstats' preamble about the (absent) stats file.
    start = text.find("   ncalls")
    header = next((line.strip() for line in text.splitlines() if "function calls" in line), "")
    return header + "\n" + (text[start:] if start >= 0 else text)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", default="10,100,1000",
                        help="comma-separated step counts N (default: 10,100,1000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="repeats per measurement; the median is reported (default: 3)")
    parser.add_argument("--durability", choices=["full", "normal"], default="full",
                        help="Baton's durability setting (default: full)")
    parser.add_argument("--commits", type=int, default=500,
                        help="bare commits timed for the floor (default: 500)")
    parser.add_argument("--dir", default=None,
                        help="where to create the temporary databases (default: the system temp dir)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    args = parser.parse_args(argv)
    try:
        args.step_counts = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--steps must be comma-separated integers, not {args.steps!r}")
    if not args.step_counts or args.step_counts[0] < 1:
        parser.error("--steps needs at least one count, each >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    durability: Durability = args.durability
    counts: list[int] = args.step_counts
    root = os.path.realpath(args.dir or tempfile.gettempdir())
    began = time.perf_counter()

    print("Baton step overhead")
    print("=" * 78)
    print(f"date        {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    uname = platform.uname()
    print(f"machine     {cpu_model()}, {os.cpu_count()} CPUs, {uname.system} {uname.release} "
          f"{uname.machine}")
    print(f"python      {platform.python_version()} ({platform.python_implementation()}), "
          f"SQLite {sqlite3.sqlite_version}")
    print(f"databases   {root} ({filesystem(root)}), WAL, Baton durability={durability}")
    print(f"settings    steps={','.join(map(str, counts))} repeat={args.repeat} "
          f"(medians reported)")
    print()

    # 1. The floor. Always the fsync'd commit; with durability=normal, also the unsynced one,
    # which is then the matching floor for the ratios.
    floor_full = bare_commit(root, "FULL", args.commits)
    floor_normal = bare_commit(root, "NORMAL", args.commits) if durability == "normal" else None
    floor = floor_normal if floor_normal is not None else floor_full
    floor_name = "synchronous=NORMAL" if floor_normal is not None else "synchronous=FULL"
    print("1. Floor: one bare SQLite commit (WAL, BEGIN IMMEDIATE; INSERT ~300 B; COMMIT)")
    print(f"   synchronous=FULL    {us(floor_full):>10} µs  (median of {args.commits})")
    if floor_normal is not None:
        print(f"   synchronous=NORMAL  {us(floor_normal):>10} µs  (median of {args.commits})")
    print(f"   ratios below are against {floor_name}")
    print()

    # 2-4. Per-step cost.
    per_step: dict[tuple[str, int], float] = {}
    print("2-4. Per-step cost of ctx.call on a no-op tool: (run(N) - run(0)) / N")
    head = (f"   {'tool':<24} {'N':>6} {'run(N) ms':>11} {'run(0) ms':>10} {'µs/step':>10} "
            f"{'× commit':>9} {'target':>8}")
    print(head)
    print("   " + "-" * (len(head) - 3))
    for kind in KINDS:
        for n in counts:
            totals: list[float] = []
            bases: list[float] = []
            costs: list[float] = []
            for _ in range(args.repeat):
                total, base = step_cost(root, durability, kind.wf, n)
                totals.append(total)
                bases.append(base)
                costs.append((total - base) / n)
            cost = statistics.median(costs)
            per_step[kind.key, n] = cost
            target = f"< {kind.target}" if kind.target is not None else "-"
            print(f"   {kind.label:<24} {n:>6} {statistics.median(totals) * 1e3:>11.2f} "
                  f"{statistics.median(bases) * 1e3:>10.2f} {us(cost):>10} {cost / floor:>9.2f} "
                  f"{target:>8}")
        print()

    # 5. Growth with run length.
    small, large = counts[0], counts[-1]
    growth: dict[str, float] = {}
    print(f"5. Growth: µs/step at N={large} over µs/step at N={small} (should be ~1)")
    for kind in KINDS:
        growth[kind.key] = per_step[kind.key, large] / per_step[kind.key, small]
        print(f"   {kind.label:<24} {growth[kind.key]:>6.2f}")
    print()

    # 6. Resume.
    resumes = [resume_cost(root, durability, large) for _ in range(args.repeat)]
    resume_base = [resume_cost(root, durability, 0) for _ in range(args.repeat)]
    resume = statistics.median(resumes)
    base = statistics.median(resume_base)
    print(f"6. Resume: a fresh Baton replays {large} completed steps, consumes a signal, completes")
    print(f"   drive() with {large:>5} replayed steps  {resume * 1e3:>9.2f} ms")
    print(f"   drive() with     0 replayed steps  {base * 1e3:>9.2f} ms")
    print(f"   per replayed step (total / N)      {us(resume / large):>9} µs")
    print(f"   per replayed step (marginal)       {us((resume - base) / large):>9} µs")
    print()

    # Profile.
    if not args.no_profile:
        print(f"Profile: one {large}-step idempotent run, top 15 functions by own time")
        print("-" * 78)
        print(profile(root, durability, large, 15).rstrip())
        print()

    # Verdicts.
    print(f"Targets (at N={large}, ratios against {floor_name})")
    checks: list[tuple[str, bool]] = []
    for kind in KINDS:
        if kind.target is None:
            continue
        ratio = per_step[kind.key, large] / floor
        checks.append((f"{kind.label} step = {ratio:.2f} bare commits (target < {kind.target})",
                       ratio < kind.target))
    for kind in KINDS:
        checks.append((f"{kind.label} growth {small}->{large} = {growth[kind.key]:.2f} "
                       f"(target <= {GROWTH_TARGET})", growth[kind.key] <= GROWTH_TARGET))
    for text, ok in checks:
        print(f"   {'PASS' if ok else 'FAIL'}  {text}")
    print(f"   info  timeout=5.0 step = {per_step['timeout', large] / floor:.2f} bare commits, "
          f"{us(per_step['timeout', large] - per_step['idempotent', large])} µs more than "
          "without a timeout")
    print(f"   info  resume of {large} steps = {resume * 1e3:.1f} ms "
          f"({us(resume / large)} µs per replayed step)")
    print()
    print(f"finished in {time.perf_counter() - began:.1f} s")
    return 0  # benchmarks never fail the build; read the PASS/FAIL lines


if __name__ == "__main__":
    sys.exit(main())
