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
import faulthandler
import hashlib
import io
import json
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
# A new SQLite file commits more slowly until its WAL has filled once (1000 pages) and is
# reused from the start: appends that grow the file make fsync write metadata too. Both the
# floor file and each fresh Baton database are written this much before anything is timed,
# so that both are measured in the steady state of a database in use.
WARMUP_COMMITS = 1500
WARMUP_STEPS = 600
BASELINE_RUNS = 3  # at least this many 0-step runs per measurement; their median is subtracted


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


class Floor:
    """Bare commits on a file of its own: ``BEGIN IMMEDIATE; INSERT ~300 B; COMMIT``.

    Storage latency drifts on shared machines, so the floor is sampled in short bursts
    next to each measurement rather than once at the start: every row of the results is
    compared with the commits timed around it, and the headline figure is the median of all.
    """

    ROW = "x" * 300

    def __init__(self, folder: str, synchronous: str, name: str = "floor") -> None:
        self.synchronous = synchronous
        self.conn = sqlite3.connect(Path(folder) / f"{name}-{synchronous.lower()}.db",
                                    isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        self.samples: list[float] = []
        self.fresh = self.sample(WARMUP_COMMITS, keep=False)  # see WARMUP_COMMITS

    def sample(self, commits: int, *, keep: bool = True) -> list[float]:
        conn, taken = self.conn, []
        for _ in range(commits):
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (data) VALUES (?)", (self.ROW,))
            conn.execute("COMMIT")
            taken.append(time.perf_counter() - start)
        if keep:
            self.samples.extend(taken)
        return taken

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def close(self) -> None:
        self.conn.close()


class MinimalJournal(Floor):
    """The least a hash-chained journal can cost per step from Python: each commit is one
    event row in Baton's events table, its data canonical JSON and its hash chained onto
    the previous one, and nothing else (no validation, no replay table, no workflow).
    Measured to show how much of a step's cost is inherent rather than Baton's own."""

    def __init__(self, folder: str, synchronous: str) -> None:
        self.prev = "0" * 64
        self.seq = 0
        self.encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        super().__init__(folder, synchronous, name="minimal-journal")

    def sample(self, commits: int, *, keep: bool = True) -> list[float]:
        conn, taken = self.conn, []
        if self.seq == 0:
            conn.execute("CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, "
                         "at TEXT NOT NULL, data TEXT NOT NULL, hash TEXT NOT NULL, "
                         "PRIMARY KEY (run_id, seq)) WITHOUT ROWID")
        for _ in range(commits):
            start = time.perf_counter()
            self.seq += 1
            data = self.encoder.encode({"args": {"i": self.seq}, "name": "noop", "result": self.seq,
                                        "step_id": self.seq, "idempotency_key": f"r:{self.seq}"})
            digest = hashlib.sha256((self.prev + data).encode()).hexdigest()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                         ("1a217b4b490a5b0d1e178", self.seq, "StepCompleted", "2026-11-26T12:00:00.000000Z",
                          data, digest))
            conn.execute("COMMIT")
            self.prev = digest
            taken.append(time.perf_counter() - start)
        if keep:
            self.samples.extend(taken)
        return taken


# -- 2-5. per-step cost ---------------------------------------------------------------


def step_cost(root: str, durability: Durability, wf: Any, n: int, min_steps: int
              ) -> tuple[float, float]:
    """(median seconds of an n-step run, median seconds of a 0-step run), on a fresh Baton.

    Short runs are repeated, alternating with 0-step runs, until about ``min_steps`` steps
    have been timed, so that N=10 is as well sampled as N=1000 and both see the same
    amount of journal growth and WAL checkpointing.
    """
    pairs = max(1, -(-min_steps // n))
    runs: list[float] = []
    bases: list[float] = []
    with tempfile.TemporaryDirectory(dir=root) as folder:
        baton = make_baton(folder, durability)
        try:
            run_and_check(baton, wf, WARMUP_STEPS)  # see WARMUP_COMMITS
            for _ in range(pairs):
                bases.append(run_and_check(baton, wf, 0))
                runs.append(run_and_check(baton, wf, n))
            while len(bases) < BASELINE_RUNS:
                bases.append(run_and_check(baton, wf, 0))
        finally:
            baton.close()
    return statistics.median(runs), statistics.median(bases)


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
            run_and_check(baton, idempotent_steps, WARMUP_STEPS)
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
    parser.add_argument("--min-steps", type=int, default=1000,
                        help="repeat short runs within a measurement until this many steps "
                             "were timed (default: 1000)")
    parser.add_argument("--commits", type=int, default=100,
                        help="bare commits per burst of floor samples; a burst is taken before "
                             "each repeat of each row (default: 100)")
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
    if args.commits < 1 or args.min_steps < 1:
        parser.error("--commits and --min-steps must be >= 1")
    args.steps = ",".join(map(str, args.step_counts))
    return args


def header(root: str, durability: Durability, args: argparse.Namespace) -> None:
    print("Baton step overhead")
    print("=" * 78)
    print(f"date        {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    uname = platform.uname()
    print(f"machine     {cpu_model()}, {os.cpu_count()} CPUs, {uname.system} {uname.release} "
          f"{uname.machine}")
    print(f"python      {platform.python_version()} ({platform.python_implementation()}), "
          f"SQLite {sqlite3.sqlite_version}")
    print(f"databases   {root} ({filesystem(root)}), WAL, Baton durability={durability}")
    print(f"settings    steps={args.steps} repeat={args.repeat} min-steps={args.min_steps} "
          f"commits={args.commits} (medians reported)")
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faulthandler.enable()  # a crash in the engine's threads still shows where it was
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    durability: Durability = args.durability
    counts: list[int] = args.step_counts
    root = os.path.realpath(args.dir or tempfile.gettempdir())
    burst: int = args.commits
    began = time.perf_counter()
    header(root, durability, args)

    with tempfile.TemporaryDirectory(dir=root) as floor_dir:
        # 1. The floor. Always the fsync'd commit; with durability=normal also the unsynced
        # one, which is then the floor the ratios use (like is compared with like).
        full = Floor(floor_dir, "FULL")
        normal = Floor(floor_dir, "NORMAL") if durability == "normal" else None
        floor = normal or full
        floors = [full] if normal is None else [full, normal]
        minimal = MinimalJournal(floor_dir, floor.synchronous)
        try:
            start_full = statistics.median(full.fresh)
            per_step, row_floor = measure_steps(root, durability, counts, args, floors, floor)
            resume, resume_base = measure_resume(root, durability, counts[-1], args.repeat)
            for f in floors:
                f.sample(burst * 5)
            for _ in range(5):  # interleaved with the floor, so both see the same disk
                minimal.sample(burst)
                floor.sample(burst)
        finally:
            for f in [*floors, minimal]:
                f.close()

    large, small = counts[-1], counts[0]
    print("1. Floor: one bare SQLite commit (WAL, BEGIN IMMEDIATE; INSERT ~300 B; COMMIT)")
    for f in floors:
        print(f"   synchronous={f.synchronous:<7} {us(f.median):>9} µs  median of {len(f.samples)} "
              f"commits spread over the run (p10 {us(quantile(f.samples, 0.1))}, "
              f"p90 {us(quantile(f.samples, 0.9))})")
    print(f"   synchronous=FULL, first {WARMUP_COMMITS} commits on a new file (WAL growing, "
          f"not used): {us(start_full)} µs")
    print(f"   ratios use synchronous={floor.synchronous} commits timed around each row")
    print(f"   reference: a minimal hash-chained journal step (one canonical-JSON event, sha256, "
          f"one row, commit): {us(minimal.median)} µs = {minimal.median / floor.median:.2f} bare commits")
    print()

    print("2-4. Per-step cost of ctx.call on a no-op tool: (run(N) - run(0)) / N")
    print("     run(N), run(0): median wall time of baton.run() with N and 0 steps")
    head = (f"   {'tool':<24} {'N':>5} {'run(N) ms':>10} {'run(0) ms':>10} {'µs/step':>9} "
            f"{'floor µs':>9} {'× commit':>9} {'target':>7}")
    print(head)
    print("   " + "-" * (len(head) - 3))
    for kind in KINDS:
        for n in counts:
            total, base, cost = per_step[kind.key, n]
            target = f"< {kind.target}" if kind.target is not None else "-"
            print(f"   {kind.label:<24} {n:>5} {total * 1e3:>10.2f} {base * 1e3:>10.2f} "
                  f"{us(cost):>9} {us(row_floor[kind.key, n]):>9} "
                  f"{cost / row_floor[kind.key, n]:>9.2f} {target:>7}")
        print()

    growth: dict[str, float] = {}
    print(f"5. Growth: µs/step at N={large} over µs/step at N={small} (should be ~1)")
    for kind in KINDS:
        growth[kind.key] = per_step[kind.key, large][2] / per_step[kind.key, small][2]
        print(f"   {kind.label:<24} {growth[kind.key]:>6.2f}")
    print()

    print(f"6. Resume: a fresh Baton replays {large} completed steps, takes a signal, completes")
    print(f"   drive() with {large:>5} replayed steps  {resume * 1e3:>9.2f} ms")
    print(f"   drive() with     0 replayed steps  {resume_base * 1e3:>9.2f} ms")
    print(f"   per replayed step (total / N)      {us(resume / large):>9} µs")
    print(f"   per replayed step (marginal)       {us((resume - resume_base) / large):>9} µs")
    print()

    if not args.no_profile:
        print(f"Profile: one {large}-step idempotent run under cProfile, top 15 functions by own time")
        print("-" * 78)
        print(profile(root, durability, large, 15).rstrip())
        print()

    print(f"Targets (N={large}; ratios against synchronous={floor.synchronous} bare commits)")
    checks: list[tuple[str, bool]] = []
    for kind in KINDS:
        if kind.target is not None:
            ratio = per_step[kind.key, large][2] / row_floor[kind.key, large]
            checks.append((f"{kind.label} step = {ratio:.2f} bare commits (target < {kind.target})",
                           ratio < kind.target))
    for kind in KINDS:
        checks.append((f"{kind.label} growth N={small}->{large} = {growth[kind.key]:.2f} "
                       f"(target <= {GROWTH_TARGET})", growth[kind.key] <= GROWTH_TARGET))
    for text, ok in checks:
        print(f"   {'PASS' if ok else 'FAIL'}  {text}")
    extra = per_step["timeout", large][2] - per_step["idempotent", large][2]
    print(f"   info  timeout=5.0 step = "
          f"{per_step['timeout', large][2] / row_floor['timeout', large]:.2f} bare commits "
          f"({us(extra)} µs more than without a timeout)")
    print(f"   info  resume of {large} steps = {resume * 1e3:.1f} ms "
          f"({us(resume / large)} µs per replayed step)")
    print()
    print(f"finished in {time.perf_counter() - began:.1f} s")
    return 0  # benchmarks never fail the build; read the PASS/FAIL lines


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_steps(root: str, durability: Durability, counts: list[int], args: argparse.Namespace,
                  floors: list[Floor], floor: Floor
                  ) -> tuple[dict[tuple[str, int], tuple[float, float, float]],
                             dict[tuple[str, int], float]]:
    """Per (kind, N): (median run(N) s, median run(0) s, median s/step), and the floor
    (median of the commits timed just before each repeat and after the last)."""
    per_step: dict[tuple[str, int], tuple[float, float, float]] = {}
    row_floor: dict[tuple[str, int], float] = {}
    for kind in KINDS:
        for n in counts:
            totals: list[float] = []
            bases: list[float] = []
            costs: list[float] = []
            around: list[float] = []
            for _ in range(args.repeat):
                for f in floors:
                    taken = f.sample(args.commits)
                    if f is floor:
                        around += taken
                total, base = step_cost(root, durability, kind.wf, n, args.min_steps)
                totals.append(total)
                bases.append(base)
                costs.append((total - base) / n)
            for f in floors:
                taken = f.sample(args.commits)
                if f is floor:
                    around += taken
            per_step[kind.key, n] = (statistics.median(totals), statistics.median(bases),
                                     statistics.median(costs))
            row_floor[kind.key, n] = statistics.median(around)
    return per_step, row_floor


def measure_resume(root: str, durability: Durability, n: int, repeat: int) -> tuple[float, float]:
    """Median seconds to resume an n-step journal, and a 0-step one."""
    resumes = [resume_cost(root, durability, n) for _ in range(repeat)]
    bases = [resume_cost(root, durability, 0) for _ in range(repeat)]
    return statistics.median(resumes), statistics.median(bases)


if __name__ == "__main__":
    sys.exit(main())
