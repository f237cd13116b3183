"""``baton worker``: execute every runnable run, and take over runs whose owner died."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..approvals import send
from ..audit.checkpoints import write_checkpoint
from ..errors import StoreError
from .execution import Listener
from .owner import owner_alive

if TYPE_CHECKING:
    from ..runtime import Baton, Claim

log = logging.getLogger("baton.worker")

REDELIVER_EVERY = 60.0
"""Seconds between a worker's looks for approval notifications that never got through."""
NOTIFY_GRACE = 120.0
"""A request's first notification (with its retries) has this long before workers resend it."""


class Worker:
    """Runs up to ``concurrency`` runs at once in this process. Many workers, in many
    processes, may share one database: each run is claimed by one of them at a time."""

    def __init__(self, baton: Baton, *, concurrency: int = 1, listener: Listener | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.baton = baton
        self.concurrency = concurrency
        self.listener = listener
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        """Set when a run in hand finishes (a slot is free) or the worker is asked to stop."""
        self.executed = 0
        self._lock = threading.Lock()
        # Runs whose last execution changed nothing (e.g. waiting on code that cannot load),
        # by the head they stalled at: not picked again until their journal moves.
        self._stalled: dict[str, int] = {}

    def stop(self) -> None:
        """Take no new runs, and stop the ones in hand at their next step: the step under way
        finishes and is recorded, and the run is left for another worker to continue."""
        self.stop_event.set()
        self.wake.set()
        self.baton.leases.stop_all()

    def run(self, *, until_idle: bool = False) -> int:
        """Work until :meth:`stop` (or, with ``until_idle``, until nothing is runnable and
        no run is waiting to be taken over). Returns how many executions it made."""
        in_hand: dict[str, Future[object]] = {}
        next_redelivery = time.monotonic() + REDELIVER_EVERY
        next_checkpoint = time.monotonic() + self.baton.settings.checkpoint_seconds
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="baton-run") as pool:
            while not self.stop_event.is_set():
                if time.monotonic() >= next_redelivery:
                    next_redelivery = time.monotonic() + REDELIVER_EVERY
                    self.redeliver()
                if time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + self.baton.settings.checkpoint_seconds
                    self.checkpoint()
                for run_id, future in list(in_hand.items()):
                    if future.done():
                        del in_hand[run_id]
                        if (exc := future.exception()) is not None:
                            log.error("run %s: execution error: %s", run_id, exc, exc_info=exc)
                free = self.concurrency - len(in_hand)
                try:
                    claims = self._claims(set(in_hand), free) if free else []
                    idle = until_idle and not in_hand and not claims and not self._awaiting_takeover()
                except StoreError as exc:
                    if not exc.retryable:
                        raise
                    # The database is away (restarting, a network blip): the runs in hand go on
                    # or stop on their own; this worker looks again after a pause.
                    log.warning("cannot look for runs to execute (%s); trying again", exc.message)
                    self.stop_event.wait(max(1.0, self.baton.settings.poll_seconds))
                    continue
                for claim in claims:
                    future = in_hand[claim.record.run_id] = pool.submit(self._execute, claim)
                    future.add_done_callback(lambda _: self.wake.set())
                if idle:
                    break
                if claims:
                    continue
                poll = self.baton.settings.poll_seconds
                if len(in_hand) >= self.concurrency:
                    self.wake.wait(poll)  # every slot busy: until one frees up
                else:  # woken early by the database when it can say a run became runnable
                    self.baton.store.wait_for_work(poll, self.wake)
                if not self.stop_event.is_set():
                    self.wake.clear()
        self.checkpoint()  # what this worker did is covered before it goes
        return self.executed

    def checkpoint(self) -> None:
        """Sign a checkpoint of the heads that changed, if this process has the audit key."""
        key = self.baton.audit_key
        if key is None:
            return
        try:
            write_checkpoint(self.baton.store, key, self.baton.clock.time())
        except Exception:
            log.exception("cannot write a checkpoint")

    def redeliver(self) -> int:
        """Notify again the approval requests whose notification never got through (the
        process that made them died, or the receiver was down). Returns how many were sent."""
        notifier = self.baton.governance.notifier
        if notifier is None:
            return 0
        store, clock = self.baton.store, self.baton.clock
        try:
            due = store.unnotified(clock.time() - NOTIFY_GRACE)
        except Exception:
            log.exception("cannot look for undelivered approval notifications")
            return 0
        for run_id, request in due:
            send(notifier, run_id, request, store, clock.time)
        return len(due)

    def _execute(self, claim: Claim) -> object:
        before, run_id = claim.record, claim.record.run_id
        try:
            outcome = self.baton.execute_claim(claim, self.listener)
        except StoreError as exc:
            if not exc.retryable:  # a database that is away for a moment is tried again; this is not
                self._stalled[run_id] = before.head_seq
            raise
        except BaseException:
            self._stalled[run_id] = before.head_seq  # do not spin on a run whose execution keeps raising
            raise
        if outcome is not None:
            with self._lock:
                self.executed += 1
            after = self.baton.store.get_run(run_id)
            if after is not None and after.head_seq == before.head_seq and not after.status.terminal:
                self._stalled[run_id] = after.head_seq
            else:
                self._stalled.pop(run_id, None)
        return outcome

    def _claims(self, busy: set[str], limit: int) -> list[Claim]:
        """Runs to execute now, their leases taken: first runs whose owner on this machine
        is provably dead (they need not wait for its lease to run out, and they were started
        before anything still queued), then runnable ones nobody holds, in one atomic claim
        that skips those other workers are taking."""
        store = self.baton.store
        for run_id, head in list(self._stalled.items()):  # a stalled run whose journal moved may go on
            record = store.get_run(run_id)
            if record is None or record.head_seq != head or record.status.terminal:
                self._stalled.pop(run_id, None)
        claims: list[Claim] = []
        try:
            for record in store.owned_runs():
                if len(claims) >= limit:
                    break
                if (record.run_id not in busy and record.owner not in (self.baton.owner, None)
                        and owner_alive(record.owner) is False):
                    claim = self.baton.acquire(record.run_id)
                    if claim is not None:
                        claims.append(claim)
        except BaseException:
            self.baton.give_back(claims)
            raise
        if len(claims) < limit:
            taken = busy | set(self._stalled) | {c.record.run_id for c in claims}
            try:
                claims += self.baton.claim_runnable(limit - len(claims), exclude=taken)
            except StoreError:
                if not claims:
                    raise
                # The runs taken over already are ours: execute them, and claim more next time.
        return claims

    def _awaiting_takeover(self) -> bool:
        """Runs held by an owner we cannot see (another host) whose lease has not run out."""
        now = self.baton.clock.time()
        return any(
            r.owner is not None and r.owner != self.baton.owner and owner_alive(r.owner) is None
            and (r.lease_expires_at or 0) >= now
            for r in self.baton.store.owned_runs()
        )
