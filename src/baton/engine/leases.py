"""Keeping leases alive while runs are in hand, and hearing about cancellations."""

from __future__ import annotations

import logging
import threading

from ..clock import Clock
from ..settings import Settings
from ..store import Store
from .execution import Execution

log = logging.getLogger("baton.leases")


class LeaseKeeper:
    """A daemon thread that renews the leases of the executions registered with it.

    An execution whose lease was lost is told so; it stops before its next side effect
    (and its next append would be refused anyway).
    """

    def __init__(self, store: Store, settings: Settings, clock: Clock, owner: str) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.owner = owner
        # Runs this process has in hand, from claim to release. All its threads share one
        # owner id, so the store alone cannot stop a second thread taking a run a first runs.
        self._reserved: set[str] = set()
        self._held: dict[str, Execution] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def reserve(self, run_id: str) -> bool:
        """Mark a run as in hand here; ``False`` if it already is."""
        with self._lock:
            if run_id in self._reserved:
                return False
            self._reserved.add(run_id)
            return True

    def reserved(self) -> set[str]:
        """The runs in hand in this process."""
        with self._lock:
            return set(self._reserved)

    def add(self, execution: Execution) -> None:
        with self._lock:
            self._held[execution.run_id] = execution
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="baton-leases", daemon=True)
                self._thread.start()

    def remove(self, run_id: str) -> None:
        """The run is no longer in hand here: stop renewing it, release the reservation."""
        with self._lock:
            self._held.pop(run_id, None)
            self._reserved.discard(run_id)

    def stop_all(self) -> None:
        """Ask every execution in hand to stop at its next step (graceful shutdown)."""
        with self._lock:
            for execution in self._held.values():
                execution.stop_requested = True

    def renew_now(self) -> None:
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        try:
            still = self.store.renew(self.owner, list(held), self.clock.time(), self.settings.lease_seconds)
        except Exception:
            log.exception("lease renewal failed; will retry")
            return
        for run_id, execution in held.items():
            if run_id not in still:
                execution.lease_lost = True
            elif still[run_id]:
                execution.cancel_requested = True

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(self.settings.heartbeat_seconds)
            self._wake.clear()
            self.renew_now()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
