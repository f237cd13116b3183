"""What the crash tests (``test_crash.py``, ``test_approval_crash.py``) share: the fake
services' SQLite bookkeeping, run inside the worker processes, and the starting, killing and
reaping of those processes, done by the test process.

The workers import this module from ``crashapp/*_workflows.py``, which they load by path,
so it depends on nothing but the standard library and baton.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton import Reconciled

# -- inside the fake services -----------------------------------------------------------------

SERVICE_TABLES = """
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS self_kills (
    key TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    phase TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""
"""The tables every fake service has: ``invocations``, one row per raw call of a tool
(shows retries), and ``self_kills``, the calls that killed their own worker on purpose."""


def connect(db: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def create_tables(db: str, schema: str) -> None:
    with closing(connect(db)) as conn:
        conn.executescript(schema)


@contextmanager
def transaction(db: str) -> Iterator[sqlite3.Connection]:
    """Workers race each other for the same keys: take the write lock before reading."""
    with closing(connect(db)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")


def network_pause(shortest: float, longest: float) -> None:
    """A few milliseconds of 'network': a window for a kill between intent and completion."""
    time.sleep(random.uniform(shortest, longest))


def record_invocation(db: str, tool_name: str, key: str) -> None:
    with closing(connect(db)) as conn:
        conn.execute("INSERT INTO invocations (tool, key, pid) VALUES (?, ?, ?)", (tool_name, key, os.getpid()))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def first_self_kill(conn: sqlite3.Connection, key: str, tool_name: str, phase: str) -> bool:
    """Inside a transaction: note that the call with ``key`` kills its process at ``phase``;
    ``False`` if it already did so once, so that a retry can get through."""
    if conn.execute("SELECT 1 FROM self_kills WHERE key = ?", (key,)).fetchone():
        return False
    conn.execute("INSERT INTO self_kills (key, tool, phase, pid) VALUES (?, ?, ?, ?)",
                 (key, tool_name, phase, os.getpid()))
    return True


def replayed_result(conn: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    """Inside a transaction, for an idempotent tool: the first result for a repeated ``key``
    (counted in ``effects.replays``), or ``None`` when the key is new."""
    row = conn.execute("SELECT result FROM effects WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE effects SET replays = replays + 1 WHERE key = ?", (key,))
    result: dict[str, Any] = json.loads(row[0])
    return result


PAYMENT_TABLES = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    result TEXT NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger (
    entry INTEGER PRIMARY KEY AUTOINCREMENT,
    tool TEXT NOT NULL,
    key TEXT NOT NULL,
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    amount INTEGER NOT NULL
);
"""
"""The fake payment service of ``crash_workflows.py`` and ``pg_chaos_workflows.py``:
``effects`` holds the idempotent charges (a repeated key returns the first result and bumps
``replays``), ``ledger`` the non-idempotent entries, one row per call."""

SelfKill = Callable[[sqlite3.Connection, str, str], bool]
"""Inside the call's transaction (connection, key, tool): should this call kill its process?"""


def apply_charge(db: str, run: str, step: int, amount: int, key: str, self_kill: SelfKill | None) -> dict[str, Any]:
    """An idempotent charge: applied once per key, the first result returned for a repeat.
    With ``self_kill`` saying so, the process dies right after the charge is applied."""
    with transaction(db) as conn:
        result = replayed_result(conn, key)
        if result is None:
            result = {"charge_id": f"ch_{secrets.token_hex(6)}", "amount": amount}
            conn.execute("INSERT INTO effects (key, run, step, amount, result) VALUES (?, ?, ?, ?, ?)",
                         (key, run, step, amount, json.dumps(result)))
        kill = self_kill is not None and self_kill(conn, key, "charge")
    if kill:
        die()
    return result


def append_ledger(db: str, tool_name: str, run: str, step: int, amount: int, key: str,
                  self_kill: SelfKill | None) -> int:
    """A non-idempotent ledger entry: one row per call, whatever the key. With ``self_kill``
    saying so, the process dies right after the entry is written."""
    with transaction(db) as conn:
        entry = conn.execute("INSERT INTO ledger (tool, key, run, step, amount) VALUES (?, ?, ?, ?, ?)",
                             (tool_name, key, run, step, amount)).lastrowid
        kill = self_kill is not None and self_kill(conn, key, tool_name)
    if kill:
        die()
    assert entry is not None
    return entry


def kill_after_once(conn: sqlite3.Connection, key: str, tool_name: str) -> bool:
    """The usual :data:`SelfKill`: the first call for ``key`` dies after its effect."""
    return first_self_kill(conn, key, tool_name, "after")


def find_ledger_entry(db: str, idempotency_key: str) -> Reconciled:
    """The reconcile hook of a ledger tool: did the call with this key reach the ledger?"""
    with closing(connect(db)) as conn:
        row = conn.execute("SELECT entry, amount FROM ledger WHERE key = ?", (idempotency_key,)).fetchone()
    if row is None:
        return Reconciled(applied=False)
    return Reconciled(applied=True, result={"entry": row[0], "amount": row[1]})


# -- in the test process ----------------------------------------------------------------------


@dataclass
class RunSpec:
    """A payments run as a test started it: its steps' tools and amounts, and the steps
    whose first call kills its worker."""

    run_id: str
    plan: list[str]
    amounts: list[int]
    crash_steps: list[int]


SEED_ENV = "BATON_CRASH_SEED"
WORKER_CODE = "from baton import Baton; Baton().worker(concurrency=2).run(until_idle=True)"


def crash_seed(label: str) -> int:
    """Random kill points come from a seed, printed so that a failure can be replayed."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"\n{label} seed: {seed} (rerun with {SEED_ENV}={seed})")
    return seed


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def worker_env(database_url: str, max_recoveries: int, config: Path | None = None) -> dict[str, str]:
    """The test process's environment, without any ``BATON_`` setting it may have."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env["BATON_DATABASE_URL"] = database_url
    env["BATON_MAX_RECOVERIES"] = str(max_recoveries)
    if config is not None:
        env["BATON_CONFIG"] = str(config)
    return env


_launched: list[subprocess.Popen[str]] = []


def launch(code: str, *args: str, env: dict[str, str], cwd: Path, log: Path,
           stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.DEVNULL,
           ) -> subprocess.Popen[str]:
    """``python -c code *args``, its stderr appended to ``log``; :func:`kill_launched` ends it."""
    with log.open("a") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=cwd,
                                stdin=stdin, stdout=stdout, stderr=err, text=True)
    _launched.append(proc)
    return proc


def start_worker(env: dict[str, str], workdir: Path, log: str = "worker.log") -> subprocess.Popen[str]:
    """A worker that exits once nothing is left for it to do."""
    return launch(WORKER_CODE, env=env, cwd=workdir, log=workdir / log)


def kill_launched() -> None:
    """For a fixture: whatever happens in a test, none of its processes outlives it."""
    while _launched:
        proc = _launched.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@dataclass
class WorkerChaos:
    """Keeps one worker process going per slot, each SIGKILLed a random moment (up to
    ``max_kill_delay`` seconds) after it made progress, or left to exit when it has nothing
    to do, and replaced."""

    seed: int
    database: Path | str
    """The Baton database the workers use: an SQLite file, or a PostgreSQL URL."""
    env: dict[str, str]
    workdir: Path
    max_kill_delay: float
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    kills: list[tuple[int, bool]] = field(default_factory=list)   # (pid, held a run)
    kill_times: dict[int, float] = field(default_factory=dict)    # pid -> when the SIGKILL was sent
    started: int = 0
    exits: Counter[int] = field(default_factory=Counter)          # return codes of unkilled workers
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, slots: int) -> None:
        self.threads = [threading.Thread(target=self.slot, args=(i,), daemon=True) for i in range(slots)]
        for thread in self.threads:
            thread.start()

    def halt(self, timeout: float) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=timeout)

    def held_kills(self) -> int:
        with self.lock:
            return sum(1 for _, held in self.kills if held)

    def _connect(self) -> Any:
        """A connection to the Baton database, for watching who holds what."""
        if isinstance(self.database, str) and self.database.startswith("postgresql"):
            import psycopg

            return psycopg.connect(self.database, autocommit=True)
        return sqlite3.connect(self.database, timeout=30.0)

    def slot(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/{index}")
        conn = self._connect()
        try:
            while not self.stop.is_set():
                self.cycle(rng, conn, f"worker-{index}.log")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            with self.lock:
                self.errors.append(f"slot {index}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def cycle(self, rng: random.Random, conn: Any, log: str) -> None:
        delay = rng.uniform(0.0, self.max_kill_delay)
        baseline = self.event_count(conn)
        proc = start_worker(self.env, self.workdir, log)
        with self.lock:
            self.started += 1
        mine = f"%:{proc.pid}:%"
        deadline = time.monotonic() + 20.0
        while proc.poll() is None and not (self.holds(conn, mine) and self.event_count(conn) > baseline):
            if time.monotonic() > deadline:
                with self.lock:
                    self.errors.append(f"worker {proc.pid} made no progress in 20 s")
                break
            time.sleep(0.003)
        if proc.poll() is None:
            time.sleep(delay)
        held = self.holds(conn, mine)
        sent_at = time.time()  # before the signal: a takeover may see the process gone at once
        sent = proc.poll() is None
        if sent:
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=30)
        with self.lock:
            if sent:
                self.kills.append((proc.pid, held))
                self.kill_times[proc.pid] = sent_at
            else:
                self.exits[rc] += 1

    @staticmethod
    def event_count(conn: Any) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    @staticmethod
    def holds(conn: Any, owner_pattern: str) -> bool:
        marker = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        found = conn.execute(f"SELECT 1 FROM runs WHERE owner LIKE {marker} LIMIT 1", (owner_pattern,))
        return found.fetchone() is not None
