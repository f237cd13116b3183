"""Throughput of Baton's workers: runs per second and step latency with 1, 2 and 4 worker
processes, on PostgreSQL and on SQLite, against each database's own bare-commit rate.

Run from the repository root::

    .venv/bin/python bench/throughput.py                     # ~80 s on a quiet machine
    .venv/bin/python bench/throughput.py --runs 300 --workers 1,2,4 --skip-postgres
    .venv/bin/python bench/throughput.py --postgres postgresql://user@host:5432/postgres

For each row, N runs of a workflow making ``--steps`` (10) calls to an idempotent no-op tool
are recorded (``Baton.start``) on a new, empty database, then K worker processes are launched
at once; the time from their launch to the last run's completion (as the journal records it)
is what counts. Runs/s is N / that time (process start-up included; the time to the first
append is shown, and the rate after it); the step latency is measured inside, as the gaps
between a run's consecutive journal appends. The workers are ``baton worker --until-idle
--concurrency 1 --quiet``, as shipped.

The floor, measured in the same run on the same server or directory: a bare commit
(``INSERT`` of one ~300-byte row, ``COMMIT``; psycopg for PostgreSQL, the stdlib ``sqlite3``
in WAL mode with ``synchronous=FULL`` for SQLite) from one connection, and the commit rate of
K connections in parallel (PostgreSQL commits them in groups; SQLite has one writer). CPU is
measured for the workers, the PostgreSQL server's processes, the kernel's threads, any other
process and the whole machine, so that the table shows which of them is the limit and whether
the machine was shared. Last, the queries a worker makes around each run are timed on a
database holding the warm-up's runs and on one holding a whole row's: they should not grow
with the history.

PostgreSQL: databases ``baton_bench_<random>[_<n>]`` are created on the server of
``--postgres`` (default ``$BATON_BENCH_POSTGRES``, else postgresql://postgres@127.0.0.1:5432/
postgres) and dropped at the end. SQLite: temporary files in ``--dir``. Targets: 4 workers do
at least 3x the runs/s of one, and a step on PostgreSQL costs less than 1.5 bare PostgreSQL
commits.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import platform
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from baton import Baton, Context, RunStatus, Settings, tool, workflow

SCALE_TARGET = 3.0  # runs/s with 4 workers over runs/s with 1
PG_STEP_TARGET = 1.5  # a step on PostgreSQL, in bare PostgreSQL commits
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
ROW = "x" * 300
WARMUP_RUNS = 40  # driven in-process before anything is timed (warms the database and its WAL)
SQLITE_WARMUP_COMMITS = 1500  # see bench/step_overhead.py: a new SQLite file commits slower at first
BURST = 200  # bare commits timed from one connection before each row, and at the end
TIMEOUT = 300.0  # seconds a row may take before its workers are killed and the script fails
OTHER_LOAD = 0.2  # cores busy outside the benchmark above which a row is flagged
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- the workflow the workers run (they load this file by path; main() does not run there) ---


@tool(idempotent=True)
def bench_noop(i: int, *, idempotency_key: str) -> int:
    return i


@workflow
def throughput_steps(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.call(bench_noop, i)
    return n


# -- the databases under test -------------------------------------------------------------


class Committer(Protocol):
    def commit(self) -> None: ...
    def close(self) -> None: ...


class Database(Protocol):
    label: str
    url: str  # Baton's database for the current row (see fresh())
    server_process: str | None  # the name (comm) of the server's processes, if it has any

    def describe(self) -> list[str]: ...
    def fresh(self) -> str: ...
    def committer(self) -> Committer: ...
    def journal(self, run_ids: list[str]) -> dict[str, list[tuple[int, str, float]]]: ...
    def statuses(self, run_ids: list[str]) -> Counter[str]: ...
    def transactions(self) -> int | None: ...
    def close(self) -> None: ...


def epoch(at: str) -> float:
    return datetime.datetime.fromisoformat(at).timestamp()


def group_journal(rows: list[tuple[str, int, str, str]]) -> dict[str, list[tuple[int, str, float]]]:
    out: dict[str, list[tuple[int, str, float]]] = {}
    for run_id, seq, kind, at in rows:
        out.setdefault(run_id, []).append((int(seq), kind, epoch(at)))
    for events in out.values():
        events.sort()
    return out


class Postgres:
    """Databases of their own on the server at ``admin_url``: one for the floor's table, and a
    new one for each row (so that every row starts from the same, empty history); all created
    here and dropped by close()."""

    label = "PostgreSQL"
    server_process: str | None = "postgres"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        from baton.store.postgres import redacted_url

        self.psycopg = psycopg
        self.admin_url = admin_url
        self.admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        self.prefix = f"baton_bench_{secrets.token_hex(4)}"
        self.created: list[str] = []
        self.conn: Any = None  # to the current row's database
        try:
            self.home_url = self._create(self.prefix)
            with psycopg.connect(self.home_url, autocommit=True) as conn:
                conn.execute("CREATE TABLE bench_floor (id BIGSERIAL PRIMARY KEY, data TEXT NOT NULL)")
        except BaseException:
            self.close()
            raise
        self.location = redacted_url(self.home_url)
        self.name = self.url = ""
        self.version = str(self.admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        host = urlsplit(admin_url).hostname or "localhost"
        if host not in ("localhost", "127.0.0.1", "::1") and not host.startswith("/"):
            self.server_process = None  # not on this machine: its CPU cannot be seen from here

    def _create(self, name: str) -> str:
        self.admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return urlunsplit(urlsplit(self.admin_url)._replace(path="/" + name))

    def _drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.remove(name)

    def fresh(self) -> str:
        """A new, empty Baton database for the next row (the previous one is dropped)."""
        from baton.store.postgres import PostgresStore

        if self.conn is not None:
            self.conn.close()
            self._drop(self.name)
        self.name = f"{self.prefix}_{len(self.created)}"
        self.url = self._create(self.name)
        PostgresStore(self.url).close()  # its constructor brings the schema up to date
        self.conn = self.psycopg.connect(self.url, autocommit=True)
        return self.url

    def setting(self, name: str) -> str:
        return str(self.admin.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]

    def describe(self) -> list[str]:
        settings = " ".join(f"{n}={self.setting(n)}" for n in
                            ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay", "shared_buffers"))
        return [f"PostgreSQL {self.version}, {self.location} (and a new database for each row)",
                f"  server: {settings}"]

    def committer(self) -> Committer:
        db = self

        class PgCommitter:
            def __init__(self) -> None:
                self.conn = db.psycopg.connect(db.home_url)  # a transaction per commit(): BEGIN; INSERT; COMMIT

            def commit(self) -> None:
                self.conn.execute("INSERT INTO bench_floor (data) VALUES (%s)", (ROW,))
                self.conn.commit()

            def close(self) -> None:
                self.conn.close()

        return PgCommitter()

    def journal(self, run_ids: list[str]) -> dict[str, list[tuple[int, str, float]]]:
        rows = self.conn.execute("SELECT run_id, seq, type, at FROM events WHERE run_id = ANY(%s)",
                                 (run_ids,)).fetchall()
        return group_journal(rows)

    def statuses(self, run_ids: list[str]) -> Counter[str]:
        rows = self.conn.execute("SELECT status, count(*) FROM runs WHERE run_id = ANY(%s) GROUP BY status",
                                 (run_ids,)).fetchall()
        return Counter({status: int(count) for status, count in rows})

    def transactions(self) -> int:
        """Transactions committed in this database so far (every statement outside a
        transaction counts as one, reads included), as the server's statistics say."""
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                                (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        for name in list(self.created):
            self._drop(name)
        self.admin.close()


class Sqlite:
    """Baton's database and the floor's, as files in a temporary directory."""

    label = "SQLite"
    server_process: str | None = None

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.rows = 0
        self.path = Path(folder) / "baton-0.db"
        self.url = f"sqlite:///{self.path}"
        self.floor_path = Path(folder) / "floor.db"
        with self._floor_conn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        self.conn: sqlite3.Connection | None = None  # opened once Baton has created the file

    @contextmanager
    def _floor_conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.floor_path, isolation_level=None, timeout=30.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            yield conn
        finally:
            conn.close()

    def describe(self) -> list[str]:
        return [f"SQLite {sqlite3.sqlite_version}, {self.folder} ({filesystem(self.folder)}), WAL, "
                "synchronous=FULL (Baton durability=full), a new file for each row"]

    def fresh(self) -> str:
        """A new Baton database file for the next row (the previous one is deleted)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for leftover in Path(self.folder).glob(f"{self.path.name}*"):
            leftover.unlink()
        self.rows += 1
        self.path = Path(self.folder) / f"baton-{self.rows}.db"
        self.url = f"sqlite:///{self.path}"
        return self.url

    def committer(self) -> Committer:
        db = self

        class SqliteCommitter:
            def __init__(self) -> None:
                self.conn = sqlite3.connect(db.floor_path, isolation_level=None, timeout=30.0,
                                            check_same_thread=False)
                self.conn.execute("PRAGMA synchronous = FULL")

            def commit(self) -> None:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
                self.conn.execute("COMMIT")

            def close(self) -> None:
                self.conn.close()

        return SqliteCommitter()

    def _reader(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(self.path, timeout=30.0)
        return self.conn

    def journal(self, run_ids: list[str]) -> dict[str, list[tuple[int, str, float]]]:
        rows = self._reader().execute(
            "SELECT run_id, seq, type, at FROM events WHERE run_id IN (SELECT value FROM json_each(?))",
            (json.dumps(run_ids),)).fetchall()
        return group_journal(rows)

    def statuses(self, run_ids: list[str]) -> Counter[str]:
        rows = self._reader().execute(
            "SELECT status, count(*) FROM runs WHERE run_id IN (SELECT value FROM json_each(?)) GROUP BY status",
            (json.dumps(run_ids),)).fetchall()
        return Counter({status: int(count) for status, count in rows})

    def transactions(self) -> None:
        return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# -- the floor ----------------------------------------------------------------------------


def commit_latencies(db: Database, count: int) -> list[float]:
    """Seconds per bare commit, ``count`` of them back to back from one connection."""
    committer = db.committer()
    taken = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            committer.commit()
            taken.append(time.perf_counter() - start)
    finally:
        committer.close()
    return taken


def commit_rate(db: Database, connections: int, seconds: float) -> float:
    """Bare commits per second from ``connections`` connections committing at once (one thread
    each; the drivers let go of the GIL while they wait for the database)."""
    committers = [db.committer() for _ in range(connections)]
    counts = [0] * connections
    barrier = threading.Barrier(connections + 1)
    stop = threading.Event()

    def loop(index: int) -> None:
        barrier.wait()
        committer = committers[index]
        while not stop.is_set():
            committer.commit()
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for committer in committers:
        committer.close()
    return sum(counts) / elapsed


# -- CPU ----------------------------------------------------------------------------------


def machine_jiffies() -> int:
    """Busy CPU time of the whole machine so far (user, nice, system, irq, softirq), in ticks."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0
    values = [int(v) for v in fields]
    return values[0] + values[1] + values[2] + sum(values[5:7])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ProcessCPU(threading.Thread):
    """CPU time of every process on the machine, sampled from /proc every ``interval`` seconds,
    so that what the database server (its backends come and go), the kernel's threads (e.g. the
    filesystem journal) and anything else running here spent during a row can be told apart.
    What a process spends after its last sample (at most ``interval``) is missed."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.base: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.names: dict[int, tuple[str, int]] = {}  # pid -> (comm, ppid)
        self._scan(first=True)

    def _scan(self, first: bool = False) -> None:
        try:
            pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            return
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
            except OSError:
                continue
            close = stat.rindex(")")
            fields = stat[close + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            if self.names.get(pid, ("", -1))[1] != int(fields[1]) or pid not in self.base:
                # a pid seen for the first time (or reused): it counts from its start, unless
                # it was there before the row began
                self.names[pid] = (stat[stat.index("(") + 1 : close], int(fields[1]))
                self.base[pid] = ticks if first else 0
            self.last[pid] = ticks

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._scan()

    def finish(self) -> dict[int, tuple[str, int, float]]:
        """Stop; per pid, (comm, ppid, CPU seconds since this object was made)."""
        self.stop_event.set()
        if self.is_alive():
            self.join()
        self._scan()
        return {pid: (*self.names[pid], (self.last[pid] - self.base[pid]) / CLK_TCK)
                for pid in self.last if self.last[pid] > self.base[pid]}


@dataclass
class CPU:
    """CPU seconds during a row, by who spent them."""

    workers: float  # the worker processes (exact: their rusage once reaped)
    server: float | None  # the PostgreSQL server's processes, if they run on this machine
    script: float  # this process (the sampler's reads of /proc included)
    kernel: float  # kernel threads (e.g. the filesystem's journal, I/O workers)
    others: dict[str, float]  # any other process, by name
    machine: float  # the whole machine: user, nice, system, irq and softirq time

    @property
    def other(self) -> float:
        return sum(self.others.values())

    @property
    def unattributed(self) -> float:
        """Interrupts and soft interrupts (e.g. loopback networking), and samples missed."""
        return self.machine - self.workers - (self.server or 0.0) - self.script - self.kernel - self.other


def attribute(samples: dict[int, tuple[str, int, float]], workers: float, worker_pids: set[int],
              server_process: str | None, script: float, machine: float) -> CPU:
    server = 0.0 if server_process else None
    kernel = 0.0
    others: Counter[str] = Counter()
    me = os.getpid()
    for pid, (comm, ppid, seconds) in samples.items():
        if pid == me or pid in worker_pids:
            continue
        if server_process and comm == server_process:
            server = (server or 0.0) + seconds
        elif pid == 2 or ppid == 2:
            kernel += seconds
        else:
            others[comm] += seconds
    return CPU(workers, server, script, kernel, dict(others), machine)


# -- one configuration --------------------------------------------------------------------


@dataclass
class Row:
    db: str
    mode: str
    workers: int
    runs: int
    steps: int
    wall: float  # launch -> the last run's completion, seconds
    startup: float  # launch -> the first append any worker made
    window: float  # launch -> the last worker process gone (the CPU window)
    gaps: list[float]  # seconds between consecutive appends of a run (its steps and completion)
    run_spans: list[float]  # first step -> completion, per run
    floor_samples: list[float]  # bare commits timed just before this row
    cpu: CPU
    transactions: int | None  # the database's committed transactions during the row
    notes: list[str] = field(default_factory=list)

    @property
    def floor(self) -> float:
        return statistics.median(self.floor_samples)

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.wall

    @property
    def steps_per_s(self) -> float:
        return self.runs * self.steps / self.wall

    @property
    def step_p50(self) -> float:
        return statistics.median(self.gaps)

    @property
    def step_p90(self) -> float:
        return quantile(self.gaps, 0.9)

    @property
    def steady_runs_per_s(self) -> float:
        """Runs/s once the first worker had started (its first append to the last completion)."""
        return self.runs / (self.wall - self.startup)

    def cores(self, seconds: float) -> float:
        return seconds / self.window


def worker_command() -> list[str]:
    exe = Path(sys.executable).with_name("baton")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "baton"]
    return [*base, "worker", "--until-idle", "--concurrency", "1", "--quiet"]


def worker_env(url: str) -> dict[str, str]:
    """This process's environment without the caller's ``BATON_`` settings, pointed at ``url``,
    with the master key this process uses (set in main)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env["BATON_DATABASE_URL"] = url
    env["BATON_DURABILITY"] = "full"
    env["BATON_MASTER_KEY"] = os.environ["BATON_MASTER_KEY"]
    return env


@dataclass
class Launched:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]


def launch(count: int, command: list[str], env: dict[str, str], workdir: Path, tag: str) -> Launched:
    procs, logs = [], []
    for i in range(count):
        log = workdir / f"{tag}-{i}.log"
        with log.open("wb") as err:
            procs.append(subprocess.Popen(command, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err))
        logs.append(log)
    return Launched(procs, logs)


def wait_all(launched: Launched, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc in launched.procs:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise SystemExit(f"workers still running after {timeout:.0f} s; killed") from None
    finally:
        for proc in launched.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def log_tail(launched: Launched, lines: int = 12) -> str:
    text = "\n".join(log.read_text(errors="replace") for log in launched.logs if log.stat().st_size)
    return "\n".join(text.strip().splitlines()[-lines:])


def measure(db: Database, run_ids: list[str], mode: str, workers: int, steps: int, workdir: Path) -> Row:
    """Launch ``workers`` worker processes on the runs recorded (and nothing else running on
    the database), wait for them to exit, and read what they did from the journal."""
    runs = len(run_ids)
    floor = commit_latencies(db, BURST)
    env = worker_env(db.url)
    command = worker_command()
    if db.transactions() is not None:
        time.sleep(0.3)  # the closed connections' backends flush their statistics as they exit
    before_tx = db.transactions()
    sampler = ProcessCPU()
    sampler.start()
    cpu0, self0, machine0 = children_cpu(), self_cpu(), machine_jiffies()
    t0 = time.time()
    launched = launch(workers, command, env, workdir, f"{db.label}-{mode}-{workers}")
    wait_all(launched, TIMEOUT)
    t_exit = time.time()
    cpu_workers, cpu_self = children_cpu() - cpu0, self_cpu() - self0
    cpu_machine = (machine_jiffies() - machine0) / CLK_TCK
    cpu = attribute(sampler.finish(), cpu_workers, {p.pid for p in launched.procs}, db.server_process,
                    cpu_self, cpu_machine)
    if before_tx is not None:
        time.sleep(0.3)  # the exiting backends flush their statistics
    after_tx = db.transactions()

    statuses = db.statuses(run_ids)
    if statuses.get(RunStatus.COMPLETED.value, 0) != runs:
        raise SystemExit(f"{db.label} {mode} {workers} workers: runs ended {dict(statuses)}, "
                         f"expected {runs} completed\n{log_tail(launched)}")
    notes = []
    logged = "\n".join(log.read_text(errors="replace") for log in launched.logs)
    if fenced := [line for line in logged.splitlines() if "another worker took over" in line]:
        runs_hit = sorted({word.rstrip(":") for line in fenced for word in line.split() if word.startswith("run=")})
        notes.append(f"{len(fenced)} execution(s) found another worker had written to their run and stopped "
                     f"(two workers held the same run at once): {', '.join(runs_hit[:3])}")
    elif tail := log_tail(launched, 3):
        notes.append("workers wrote to stderr: " + tail.replace("\n", " | ")[:300])
    journal = db.journal(run_ids)
    if recovered := sum(kind == "RunRecovered" for events in journal.values() for _, kind, _ in events):
        notes.append(f"{recovered} run(s) were taken over from a worker thought dead")
    gaps: list[float] = []
    spans: list[float] = []
    first_append, last_completion = float("inf"), 0.0
    for events in journal.values():
        worked = [at for seq, _, at in events if seq > 1]  # seq 1 (RunStarted) was written by start()
        first_append = min(first_append, worked[0])
        last_completion = max(last_completion, worked[-1])
        gaps += [b - a for a, b in pairwise(worked)]
        spans.append(worked[-1] - worked[0])
    return Row(
        db=db.label, mode=mode, workers=workers, runs=runs, steps=steps,
        wall=last_completion - t0, startup=first_append - t0,
        window=t_exit - t0, gaps=gaps, run_spans=spans, floor_samples=floor,
        cpu=cpu,
        transactions=None if before_tx is None or after_tx is None else after_tx - before_tx, notes=notes,
    )


def startup_cost(db: Database, workdir: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``baton worker --until-idle`` with nothing to do."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    launched = launch(1, worker_command(), worker_env(db.url), workdir, f"{db.label}-idle")
    wait_all(launched, 60.0)
    return time.perf_counter() - t0, children_cpu() - cpu0


# -- reporting ----------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (Linux only; '?' elsewhere)."""
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    except (OSError, IndexError):
        pass
    return fstype


def limit_of(row: Row, rate: float | None, ncpu: int) -> str:
    """What held the row back, by the figures: every core busy, the database's commit rate
    reached, or neither (the workers were waiting on something else)."""
    if row.cpu.machine / row.window >= 0.9 * ncpu:
        return "CPU"
    if rate and row.steps_per_s >= 0.8 * rate:
        return "commits"
    return "waiting"


def print_rows(rows: list[Row], rates: dict[int, float], ncpu: int, server: str | None) -> None:
    base = next((r for r in rows if r.workers == 1), None)
    head = (f"  {'workers':>7} {'wall s':>7} {'start s':>7} {'runs/s':>7} {'x 1':>5} {'steps/s':>7} "
            f"{'of rate':>7} | {'after start':>11} {'x 1':>5} | {'step ms':>7} {'p90':>5} {'run ms':>6} "
            f"{'x floor':>7} {'txn/run':>7}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        scale = f"{r.runs_per_s / base.runs_per_s:5.2f}" if base else "    -"
        steady = f"{r.steady_runs_per_s / base.steady_runs_per_s:5.2f}" if base else "    -"
        rate = rates.get(r.workers)
        share = f"{r.steps_per_s / rate:7.0%}" if rate else "      -"
        txn = f"{r.transactions / r.runs:7.1f}" if r.transactions is not None else "      -"
        print(f"  {r.workers:>7} {r.wall:>7.2f} {r.startup:>7.2f} {r.runs_per_s:>7.1f} {scale} "
              f"{r.steps_per_s:>7.0f} {share} | {r.steady_runs_per_s:>11.1f} {steady} | "
              f"{r.step_p50 * 1e3:>7.2f} {r.step_p90 * 1e3:>5.2f} {statistics.median(r.run_spans) * 1e3:>6.1f} "
              f"{r.step_p50 / r.floor:>7.2f} {txn}")
    print()
    names = ("workers", server or "server", "script", "kernel", "other", "irq etc", "machine")
    print(f"  {'workers':>7}  CPU from launch to exit, cores: " + " ".join(f"{n:>8}" for n in names) + "  limit")
    for r in rows:
        c = r.cpu
        server_cores = f"{r.cores(c.server):8.2f}" if c.server is not None else "       -"
        print(f"  {r.workers:>7}  {'':<30} {r.cores(c.workers):8.2f} {server_cores} {r.cores(c.script):8.2f} "
              f"{r.cores(c.kernel):8.2f} {r.cores(c.other):8.2f} {r.cores(c.unattributed):8.2f} "
              f"{r.cores(c.machine):6.2f}/{ncpu}  {limit_of(r, rates.get(r.workers), ncpu)}")
    for r in rows:
        if r.cores(r.cpu.other) > OTHER_LOAD:
            top = sorted(r.cpu.others.items(), key=lambda item: -item[1])[:3]
            named = ", ".join(f"{name} {r.cores(sec):.2f}" for name, sec in top)
            print(f"  note ({r.workers} workers): other processes kept {r.cores(r.cpu.other):.2f} cores busy "
                  f"({named}): this row shared the machine")
        for note in r.notes:
            print(f"  note ({r.workers} workers): {note}")
    print()


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()) if __doc__ else None)
    parser.add_argument("--runs", type=int, default=300, help="runs per configuration (default: 300)")
    parser.add_argument("--steps", type=int, default=10, help="steps per run (default: 10)")
    parser.add_argument("--workers", default="1,2,4",
                        help="comma-separated worker process counts (default: 1,2,4)")
    parser.add_argument("--skip-postgres", action="store_true", help="measure SQLite only")
    parser.add_argument("--skip-sqlite", action="store_true", help="measure PostgreSQL only")
    parser.add_argument("--postgres", default=os.environ.get("BATON_BENCH_POSTGRES", DEFAULT_POSTGRES),
                        help="a PostgreSQL server's URL, where databases of their own are created and dropped "
                             "(default: $BATON_BENCH_POSTGRES or %(default)s)")
    parser.add_argument("--floor-seconds", type=float, default=1.0,
                        help="seconds per parallel commit-rate measurement (default: 1.0)")
    parser.add_argument("--dir", default=None,
                        help="where to create the SQLite files (default: the system temp dir)")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = sorted({int(s) for s in args.workers.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, not {args.workers!r}")
    if not args.worker_counts or args.worker_counts[0] < 1:
        parser.error("--workers needs at least one count, each >= 1")
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be >= 1")
    if args.floor_seconds <= 0:
        parser.error("--floor-seconds must be > 0")
    if args.skip_postgres and args.skip_sqlite:
        parser.error("nothing to measure")
    return args


def header(args: argparse.Namespace) -> None:
    import psycopg

    print("Baton worker throughput")
    print("=" * 78)
    print(f"date        {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    uname = platform.uname()
    print(f"machine     {cpu_model()}, {os.cpu_count()} CPUs, {uname.system} {uname.release} {uname.machine}")
    print(f"python      {platform.python_version()} ({platform.python_implementation()}), "
          f"SQLite {sqlite3.sqlite_version}, psycopg {psycopg.__version__}")
    print(f"settings    steps={args.steps} workers={','.join(map(str, args.worker_counts))} "
          f"{args.runs} runs per row; durability=full, --concurrency 1 per worker")
    print("columns     wall s: launch to the last completion; start s: launch to the first append; "
          "runs/s: runs / wall s;\n"
          "            x 1: over the 1-worker row; of rate: steps/s over the bare-commit rate of as many "
          "connections;\n"
          "            after start: runs/s from the first append; step ms, p90: gaps between a run's "
          "appends;\n"
          "            run ms: a run's first step to its completion; x floor: step ms over the bare commit "
          "timed\n"
          "            before the row; txn/run: transactions the server counted per run (reads included)")
    print()


@dataclass
class Summary:
    label: str
    floor: list[float]
    rates: dict[int, float]
    passes: dict[str, list[Row]]


@contextmanager
def fresh_baton(db: Database, steps: int) -> Iterator[Baton]:
    """A Baton on a new, empty database, warmed up: the workflow loaded, and the database (and
    an SQLite file's WAL) past their first writes."""
    baton = Baton(Settings(database_url=db.fresh(), durability="full"))
    try:
        for _ in range(WARMUP_RUNS):
            record = baton.run(throughput_steps, {"n": steps})
            if record.status is not RunStatus.COMPLETED:
                raise SystemExit(f"warm-up run ended {record.status.value}: {record.outcome}")
        yield baton
    finally:
        baton.close()


def claim_queries(baton: Baton, held: int = 3, repeat: int = 9) -> tuple[float, float, float, int]:
    """Median seconds of the queries a worker makes around each run it takes, with ``held``
    runs held by other workers: ``store.owned_runs()`` (runs whose owner may be dead),
    ``store.claim_runnable()`` (take the oldest runnable run) and ``store.get_run()`` (read a
    run's index row and journal head); and how many runs the database holds."""
    store, now = baton.store, time.time()
    other = "elsewhere:1:-:bench"  # an owner on another host: nobody takes its runs over
    held_ids = [baton.start(throughput_steps, {"n": 1}) for _ in range(held)]
    for run_id in held_ids:
        store.claim(run_id, other, now, 3600.0)
    spare = baton.start(throughput_steps, {"n": 1})
    owned, claim, read = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        store.owned_runs()
        owned.append(time.perf_counter() - start)
        start = time.perf_counter()
        taken = store.claim_runnable(baton.owner, now, 3600.0, 1)
        claim.append(time.perf_counter() - start)
        assert [run_id for run_id, _ in taken] == [spare], taken
        start = time.perf_counter()
        store.get_run(spare)
        read.append(time.perf_counter() - start)
        store.release(spare, baton.owner)
    count = len(store.all_run_ids())
    for run_id in held_ids:  # leave nothing behind for the workers (they would wait for the holder)
        store.release(run_id, other)
    for run_id in [*held_ids, spare]:
        baton.drive(run_id)
    return statistics.median(owned), statistics.median(claim), statistics.median(read), count


def run_database(db: Database, args: argparse.Namespace, workdir: Path) -> Summary:
    ncpu = os.cpu_count() or 1
    for line in db.describe():
        print(line)
    if isinstance(db, Sqlite):
        commit_latencies(db, SQLITE_WARMUP_COMMITS)  # see SQLITE_WARMUP_COMMITS
    floor = commit_latencies(db, BURST * 5)
    rates = {k: commit_rate(db, k, args.floor_seconds) for k in args.worker_counts}
    print()
    print("Floor: bare commits (INSERT ~300 B; COMMIT)")
    print(f"  1 connection, back to back   median {us(statistics.median(floor))} µs "
          f"(p10 {us(quantile(floor, 0.1))}, p90 {us(quantile(floor, 0.9))}) "
          f"= {1 / statistics.median(floor):,.0f} commits/s")
    for k, rate in rates.items():
        print(f"  {k} connection{'s' if k > 1 else ' '} at once, {args.floor_seconds:g} s   "
              f"{rate:>9,.0f} commits/s")
    with fresh_baton(db, args.steps):
        wall, cpu = startup_cost(db, workdir)
    print(f"Worker start-up: `baton worker --until-idle` with nothing to do exits after {wall:.2f} s "
          f"({cpu:.2f} s CPU)")
    print()

    passes: dict[str, list[Row]] = {}
    probes: list[tuple[float, float, float, int]] = []
    plan = [("workers", args.runs, "`baton worker --until-idle --concurrency 1 --quiet` processes")]
    for mode, runs, title in plan:
        print(f"{title}; {runs} runs x {args.steps} steps per row, each row on a new database")
        rows = []
        for k in args.worker_counts:
            with fresh_baton(db, args.steps) as baton:
                if not probes:
                    probes.append(claim_queries(baton))
                run_ids = [baton.start(throughput_steps, {"n": args.steps}) for _ in range(runs)]
            # Closed: the workers have the database to themselves.
            row = measure(db, run_ids, mode, k, args.steps, workdir)
            if k == args.worker_counts[-1] and runs > WARMUP_RUNS:
                with Baton(Settings(database_url=db.url, durability="full")) as baton:
                    probes.append(claim_queries(baton))
            floor += row.floor_samples
            rows.append(row)
        passes[mode] = rows
        print_rows(rows, rates, ncpu, db.server_process)
    floor += commit_latencies(db, BURST)
    print("A worker's queries around each run it takes, with 3 runs held by other workers (ms, median of 9):")
    for owned, claim, read, count in sorted(set(probes), key=lambda p: p[3]):
        print(f"  database holding {count:>5} runs: store.owned_runs() {owned * 1e3:6.2f}, "
              f"store.claim_runnable() {claim * 1e3:6.2f}, store.get_run() {read * 1e3:6.2f}")
    print()
    return Summary(db.label, floor, rates, passes)


def targets(summaries: list[Summary], counts: list[int]) -> None:
    print("Targets")
    low, high = counts[0], counts[-1]
    wanted = SCALE_TARGET * high / 4  # 3x for 4 workers
    ncpu = os.cpu_count() or 1
    for s in summaries:
        for mode, rows in s.passes.items():
            if high == low:
                continue
            one = next(r for r in rows if r.workers == low)
            top = next(r for r in rows if r.workers == high)
            ratio = top.runs_per_s / one.runs_per_s
            verdict = ("PASS" if ratio >= wanted else "FAIL") if low == 1 else "info"
            target = f"target >= {wanted:g}x" if low == 1 else "the target is against 1 worker"
            print(f"  {verdict}  {s.label} {mode}: {high} workers do {ratio:.2f}x the runs/s of {low} "
                  f"({target}; {top.steady_runs_per_s / one.steady_runs_per_s:.2f}x after start-up)")
            print(f"        with {high}: {top.runs_per_s:.1f} runs/s, machine CPU {top.cores(top.cpu.machine):.2f} "
                  f"of {ncpu} cores, {top.steps_per_s:,.0f} steps/s = {top.steps_per_s / s.rates[high]:.0%} of "
                  f"{high} connections' bare-commit rate; limit: {limit_of(top, s.rates[high], ncpu)}")
    for s in summaries:
        first = next(iter(s.passes.values()))
        one = next((r for r in first if r.workers == 1), first[0])
        floor = statistics.median(s.floor)
        ratio = one.step_p50 / floor
        if s.label == "PostgreSQL":
            verdict = "PASS" if ratio < PG_STEP_TARGET else "FAIL"
            target = f"target < {PG_STEP_TARGET}"
        else:
            verdict, target = "info", "no target here; see bench/step_overhead.py"
        print(f"  {verdict}  {s.label}: a step = {one.step_p50 * 1e3:.2f} ms (median gap between a run's appends, "
              f"{one.workers} worker{'s' if one.workers > 1 else ''}) = {ratio:.2f} bare commits of {us(floor)} µs "
              f"({target})")
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    began = time.perf_counter()
    # One master key for this process and its workers, whatever the environment holds.
    os.environ["BATON_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    header(args)
    root = os.path.realpath(args.dir or tempfile.gettempdir())
    summaries: list[Summary] = []
    with tempfile.TemporaryDirectory(dir=root, prefix="baton-throughput-") as folder:
        workdir = Path(folder)
        databases: list[Callable[[], Database]] = []
        if not args.skip_postgres:
            databases.append(lambda: Postgres(args.postgres))
        if not args.skip_sqlite:
            sqlite_dir = workdir / "sqlite"
            sqlite_dir.mkdir()
            databases.append(lambda: Sqlite(str(sqlite_dir)))
        for make in databases:
            try:
                db = make()
            except Exception as exc:  # noqa: BLE001 - said plainly, with what to do
                raise SystemExit(f"cannot set up the database: {' '.join(str(exc).split())}\n"
                                 "(start the server, pass --postgres URL, or --skip-postgres)") from None
            try:
                summaries.append(run_database(db, args, workdir))
            finally:
                db.close()
    targets(summaries, args.worker_counts)
    print(f"finished in {time.perf_counter() - began:.1f} s")
    return 0  # benchmarks never fail the build; read the PASS/FAIL lines


if __name__ == "__main__":
    sys.exit(main())
