"""Helpers for the engine tests: a fake clock, simulated crashes and takeovers.

They live here rather than in ``conftest.py`` because ``tests/store/conftest.py`` exists
too: both would be the module ``conftest``, and ``from conftest import ...`` would find
whichever pytest loaded last.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from baton import Baton, Settings, SqliteStore
from baton.journal import EncodedEvent, IndexUpdate
from baton.journal import events as ev

E = TypeVar("E", bound=ev.Event)


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "b.db"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test database. The heartbeat is slow on purpose: no test runs long
    enough to need a renewal, and tests that fake crashes must not race with one."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{db_path(tmp_path)}",
        "durability": "normal",
        "heartbeat_seconds": 60.0,
        "lease_seconds": 600.0,
        "short_sleep": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


# -- reading journals --------------------------------------------------------------


def event_types(baton: Baton, run_id: str) -> list[str]:
    return [e.type_name for e in baton.events(run_id)]


def of_type(baton: Baton, run_id: str, cls: type[E]) -> list[E]:
    return [e for e in baton.events(run_id) if isinstance(e, cls)]


# -- crashes and takeovers ---------------------------------------------------------


class SimulatedCrash(BaseException):
    """The process 'dies' here. A ``BaseException`` so neither the engine's nor the
    workflow's ``except Exception`` handlers can catch it, like a real ``kill -9``."""


class CrashingStore:
    """A :class:`SqliteStore` that dies at a chosen moment.

    With ``crash_at=k`` it raises :class:`SimulatedCrash` just before (``when="before"``)
    or just after (``when="after"``) its k-th ``append``. From then on it is dead: every
    further call raises too, so that cleanup code of the 'dead' process (``finally:
    release the lease``) cannot do what a killed process could not do either. ``die()``
    kills it on demand (for tools that crash their own worker).
    """

    def __init__(self, inner: SqliteStore, crash_at: int | None = None, when: str = "before") -> None:
        assert when in ("before", "after")
        self.inner = inner
        self.crash_at = crash_at
        self.when = when
        self.appends = 0
        self.batches: list[list[EncodedEvent]] = []
        self.dead = False

    def die(self) -> None:
        self.dead = True

    def _check(self) -> None:
        if self.dead:
            raise SimulatedCrash("the process is dead")

    def append(self, run_id: str, expected_head: int, rows: Sequence[EncodedEvent],
               update: IndexUpdate, now: float) -> None:
        self._check()
        self.appends += 1
        if self.appends == self.crash_at and self.when == "before":
            self.dead = True
            raise SimulatedCrash(f"crash before append {self.appends}")
        self.inner.append(run_id, expected_head, rows, update, now)
        self.batches.append(list(rows))
        if self.appends == self.crash_at and self.when == "after":
            self.dead = True
            raise SimulatedCrash(f"crash after append {self.appends}")

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            return attr(*args, **kwargs)

        return call


def crashing_baton(settings: Settings, crash_at: int | None = None, when: str = "before",
                   **kwargs: Any) -> tuple[Baton, CrashingStore]:
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    store = CrashingStore(SqliteStore(path, durability=settings.durability), crash_at, when)
    return Baton(settings, store=store, **kwargs), store


def expire_lease(path: Path, run_id: str) -> None:
    """Make the run's lease look expired, as it would be ``lease_seconds`` after its owner died.

    A crashed owner in these tests is this very process (same pid, same start time), so
    Baton's liveness check sees it alive and, rightly, will not take the run over while
    the lease lasts. Waiting ``lease_seconds`` would work but is slow; setting the expiry
    in the past is what the passage of time would do. The owner column is left as is, so
    the next worker takes the run *over* (and journals ``RunRecovered``), exactly as after
    a real crash.
    """
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET lease_expires_at = 0 WHERE run_id = ?", (run_id,))
    conn.close()
