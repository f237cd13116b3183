"""Helpers for testing workflows: a clock that only moves when told to."""

from __future__ import annotations

import threading


class FakeClock:
    """A :class:`baton.Clock` whose time moves only when slept on or advanced, so timers,
    retries and timeouts of a test finish at once.

    >>> from baton import Baton, Settings
    >>> from baton.testing import FakeClock
    >>> baton = Baton(Settings(database_url="sqlite:///t.db"), clock=FakeClock())  # doctest: +SKIP
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def time(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            if seconds > 0:
                self._now += seconds

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
