"""The :class:`Baton` runtime: owns the store, the settings and the clock, and starts,
drives, signals and cancels runs. Tests create their own; nothing here is global."""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .aio import run_blocking, run_coroutine
from .approvals import ApprovalRecord
from .approvals.decisions import decide, refusal, standing_of
from .audit.keys import load_private
from .budgets import Limits
from .clock import Clock, SystemClock
from .config import Governance
from .engine.calls import error_info
from .engine.context import Context
from .engine.execution import Execution, Listener, Outcome
from .engine.leases import LeaseKeeper
from .engine.owner import describe_owner, new_owner_id, owner_alive
from .engine.resolution import resolve_step
from .engine.stops import Abort, Fenced, StoreFailed, Suspend
from .errors import ApprovalError, BatonError, RunNotFound, UsageError
from .journal import GENESIS_HASH, EncodedEvent, RunStatus, canonical_json, decode, encode_batch, index_update
from .journal import events as ev
from .logs import in_run
from .memory.entries import Embedder
from .memory.steps import use_embedder
from .sensitive import NO_HINTS, MasterKey, Sealer
from .sensitive.keys import ENV as MASTER_ENV
from .sensitive.vault import Vault
from .settings import Settings
from .store import NewRun, RunRecord, Store, open_store
from .telemetry import Telemetry
from .workflows import Workflow, canonical_ref, load_workflow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .engine.worker import Worker

log = logging.getLogger("baton")


def json_text(value: Any, what: str) -> str:
    """``value`` as canonical JSON, or a :class:`UsageError` saying why it cannot be stored."""
    try:
        text = canonical_json(value)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        raise UsageError(f"{what} must be JSON text (no NaN, infinities or lone surrogates): {exc}") from None
    return text


@dataclass(frozen=True, slots=True)
class Claim:
    """A run we hold the lease on. ``previous_owner`` is set when we took it over from a
    worker that died or stopped renewing its lease, and ``reason`` says which."""

    record: RunRecord
    previous_owner: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What :meth:`Baton.forget` did."""

    run_id: str
    erased_at: float
    now: bool
    """Erased by this call (``False``: it already had been)."""
    clear_before: float | None = None
    """For a run recorded before data keys existed: its events before this moment hold
    their values in clear, and were not erased."""


def new_run_id(now: float) -> str:
    """Time-ordered and unguessable: 11 hex digits of milliseconds, 10 of randomness."""
    return f"{int(now * 1000):011x}{secrets.token_hex(5)}"


class Baton:
    """A Baton runtime.

    >>> baton = Baton(Settings(database_url="sqlite:///demo.db"))   # doctest: +SKIP
    >>> run_id = baton.start(refund, order_id="98765", amount=120.0)  # doctest: +SKIP
    >>> baton.drive(run_id).status                                     # doctest: +SKIP
    <RunStatus.COMPLETED: 'completed'>
    """

    def __init__(self, settings: Settings | None = None, *, store: Store | None = None,
                 clock: Clock | None = None, governance: Governance | None = None,
                 telemetry: Telemetry | None = None, embedder: Embedder | None = None) -> None:
        """``embedder`` turns texts into vectors, for ``ctx.recall(..., mode="semantic")``
        (``baton.memory.sentence_embedder()`` with the ``semantic`` extra)."""
        self.settings = settings or Settings.from_env()
        self.governance = governance if governance is not None else Governance.load()
        self.telemetry = telemetry if telemetry is not None else Telemetry.from_env()
        self.telemetry.watch_pending_approvals(lambda: len(self.store.list_approvals(limit=100_000)))
        self._audit_key: tuple[Ed25519PrivateKey | None] | None = None
        self._vault: Vault | None = None
        self.store = store or open_store(self.settings.database_url, durability=self.settings.durability)
        self.clock = clock or SystemClock()
        self.owner = new_owner_id()
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="baton-tool")
        self.leases = LeaseKeeper(self.store, self.settings, self.clock, self.owner)
        self._workflows: dict[str, Workflow] = {}
        if embedder is not None:
            use_embedder(self.store, embedder)

    @property
    def audit_key(self) -> Ed25519PrivateKey | None:
        """The key that signs checkpoints (``BATON_AUDIT_KEY``), if this process has one; read
        when first needed, so that commands that never sign do not depend on it."""
        if self._audit_key is None:
            self._audit_key = (load_private(),)
        return self._audit_key[0]

    @property
    def vault(self) -> Vault:
        """The master key (``BATON_MASTER_KEY``, or a key file beside an SQLite database)
        and the runs' data keys; read when first needed."""
        if self._vault is None:
            path = getattr(self.store, "path", None)
            default = Path(f"{path}.master-key") if isinstance(path, Path) else None
            if default is not None and not default.exists() and not os.environ.get(MASTER_ENV):
                held = self.store.master_key_ids()
                if held:  # a database copied without its key file: a new key would read nothing
                    raise UsageError(f"this database's data keys were wrapped by master key {', '.join(sorted(held))}, "
                                     f"but its key file {default} is missing; restore it, or set {MASTER_ENV}")
            if default is None and not os.environ.get(MASTER_ENV):
                # A shared database (PostgreSQL) given no key: every worker must use the same one.
                held = self.store.master_key_ids()
                secret = self.store.shared_master_key(base64.b64encode(os.urandom(32)).decode())
                master = MasterKey(base64.b64decode(secret), "the database")
                if held and master.id not in held:
                    raise UsageError(f"this database's data keys were wrapped by master key {', '.join(sorted(held))}, "
                                     f"which this process was not given: set {MASTER_ENV}")
                self._vault = Vault(self.store, master)
            else:
                self._vault = Vault(self.store, MasterKey.load(default))
        return self._vault

    def sealer(self, run_id: str, *, create: bool = True) -> Sealer:
        """What seals and opens the run's sensitive values (``create``: give a run recorded
        before data keys existed one now, to write with)."""
        return self.vault.sealer(run_id, self.clock.time(), create=create)

    def close(self) -> None:
        close_notifier = getattr(self.governance.notifier, "close", None)
        if callable(close_notifier):
            close_notifier()
        self.leases.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def __enter__(self) -> Baton:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workflows ------------------------------------------------------------------

    def register(self, workflow: Workflow, ref: str | None = None) -> str:
        """Make ``workflow`` known under ``ref`` (default: where it is defined)."""
        ref = canonical_ref(ref or workflow.ref)
        self._workflows[ref] = workflow
        return ref

    def workflow_for(self, ref: str) -> Workflow:
        found = self._workflows.get(ref)
        if found is None:
            found = self._workflows[ref] = load_workflow(ref)
        return found

    # -- starting -------------------------------------------------------------------

    def start(self, workflow: Workflow | str, input: dict[str, Any] | None = None, /, *,
              principal: str | None = None, tenant: str | None = None,
              run_id: str | None = None, limits: Limits | None = None, **kwargs: Any) -> str:
        """Record a new run and return its id. Nothing runs until a worker or
        :meth:`drive` picks it up.

        ``principal`` is who the run acts for, for its whole life; when principals are
        configured it must be one of them, and the run takes its tenant. ``limits`` add to
        (and override) the defaults of ``baton.toml``."""
        if isinstance(workflow, str):
            ref = canonical_ref(workflow)
            wf = self.workflow_for(ref)
        else:
            wf, ref = workflow, self.register(workflow)
        _, input_json = wf.validate_input({**(input or {}), **kwargs})
        json_text(input_json, f"input for workflow {wf.name}")
        json_text([principal, tenant, run_id], "the principal, tenant and run id")
        principal, tenant = self._acting_for(principal, tenant)
        run_limits = self.governance.limits.merged(limits)
        now = self.clock.time()
        run_id = run_id or new_run_id(now)
        started = ev.RunStarted(workflow=wf.name, workflow_ref=ref, input=input_json,
                                principal=principal, tenant=tenant, limits=run_limits.to_json() or None)
        data_key, sealer = self.vault.new_run(run_id)
        stored = sealer.seal(started, wf.hints)
        blobs: dict[str, str] = {}
        rows = encode_batch(run_id, 0, GENESIS_HASH, [stored], now, blobs)
        update = index_update([stored])
        update.blobs = blobs
        self.store.create_run(NewRun(run_id, wf.name, ref, now, principal, tenant, data_key), rows, update)
        return run_id

    def _acting_for(self, principal: str | None, tenant: str | None) -> tuple[str | None, str | None]:
        """Check who a new run acts for against the directory; the tenant is theirs."""
        directory = self.governance.directory
        if not len(directory) and not self.governance.enforcing:
            return principal, tenant
        found = directory.require(principal)
        if tenant is not None and tenant != found.tenant:
            raise UsageError(f"{found.id} belongs to tenant {found.tenant!r}, not {tenant!r}")
        return found.id, found.tenant

    def run(self, workflow: Workflow | str, input: dict[str, Any] | None = None, /, *,
            listener: Listener | None = None, **kwargs: Any) -> RunRecord:
        """Start a run and drive it until it completes, fails or has to wait."""
        return self.drive(self.start(workflow, input, **kwargs), listener=listener)

    # -- driving --------------------------------------------------------------------

    def acquire(self, run_id: str) -> Claim | None:
        """Take the lease on a run; ``None`` if a live worker (or this process) holds it.
        The caller must :meth:`let_go` of a claim it got."""
        if not self.leases.reserve(run_id):
            return None
        try:
            claim = self._acquire(run_id)
        except BaseException:
            self.leases.remove(run_id)
            raise
        if claim is None:
            self.leases.remove(run_id)
        return claim

    def let_go(self, run_id: str) -> None:
        """Release the lease taken by :meth:`acquire`, anchoring the run at its head."""
        try:
            self.store.release(run_id, self.owner)
        finally:
            self.leases.remove(run_id)

    def _acquire(self, run_id: str) -> Claim | None:
        record = self.get_run(run_id)
        now = self.clock.time()
        expected = None
        holder = record.owner if record.owner not in (None, self.owner) else None
        if holder is not None and (record.lease_expires_at or 0) >= now:
            if owner_alive(holder) is not False:
                return None
            expected = holder  # proven dead: its lease need not run out
        taken = self.store.claim(run_id, self.owner, now, self.settings.lease_seconds, expected)
        if taken is None:
            return None
        claimed = self.store.get_run(run_id)
        assert claimed is not None
        previous = taken.previous_owner  # read in the claim's own transaction, not above
        if previous is None:
            return Claim(claimed)
        if previous == expected:
            why = f"the process that held it ({describe_owner(previous)}) is gone"
        else:
            why = f"its lease expired ({describe_owner(previous)} stopped renewing it)"
        return Claim(claimed, previous, why)

    def execute(self, run_id: str, listener: Listener | None = None) -> Outcome | None:
        """Claim a run and execute it until it stops. ``None`` if someone else has it."""
        claim = self.acquire(run_id)
        if claim is None:
            return None
        return self.execute_claim(claim, listener)

    def execute_claim(self, claim: Claim, listener: Listener | None = None) -> Outcome | None:
        """Execute a run we hold the lease on, then let go of it."""
        try:
            if claim.record.status.terminal:
                return Outcome(claim.record.status)
            return self._execute(claim, listener)
        finally:
            self.let_go(claim.record.run_id)

    def claim_runnable(self, limit: int, exclude: Collection[str] = ()) -> list[Claim]:
        """Take the lease on up to ``limit`` runnable runs in one atomic step, passing over
        runs other workers are claiming; the caller must :meth:`execute_claim` each."""
        taken = self.store.claim_runnable(self.owner, self.clock.time(), self.settings.lease_seconds, limit,
                                          {*exclude, *self.leases.reserved()})
        claims: list[Claim] = []
        try:
            for run_id, previous in taken:
                record = self.store.get_run(run_id)
                if record is None:  # pruned meanwhile
                    continue
                if not self.leases.reserve(run_id):  # in hand in this process already: it keeps the lease
                    continue
                why = f"its lease expired ({describe_owner(previous)} stopped renewing it)" if previous else ""
                claims.append(Claim(record, previous, why))
        except BaseException:
            self.give_back(claims)
            raise
        return claims

    def give_back(self, claims: list[Claim]) -> None:
        """Let go of claims that will not be executed (best effort: a lease not released
        runs out)."""
        for claim in claims:
            try:
                self.let_go(claim.record.run_id)
            except Exception:  # noqa: BLE001 - the lease expires on its own
                log.warning("could not let go of run %s", claim.record.run_id)

    def _execute(self, claim: Claim, listener: Listener | None) -> Outcome | None:
        record, previous = claim.record, claim.previous_owner
        sealer = self.sealer(record.run_id)
        events = self.opened_events(record.run_id, sealer)
        workflow: Workflow | None = None
        load_error = ""
        try:
            workflow = self.workflow_for(record.workflow_ref)
        except BatonError as exc:
            load_error = exc.message
        x = Execution(store=self.store, settings=self.settings, clock=self.clock, pool=self.pool,
                      run=record, events=events, listener=listener, governance=self.governance,
                      telemetry=self.telemetry, sealer=sealer,
                      workflow_hints=workflow.hints if workflow is not None else NO_HINTS)
        self.leases.add(x)
        with in_run(record.run_id, sealer.known), self.telemetry.span(f"baton.run {record.workflow}", {
                "baton.run.id": record.run_id, "baton.workflow": record.workflow,
                "baton.principal": record.principal or "", "baton.takeover": previous is not None}) as span:
            outcome = self._execute_run(x, claim, workflow, load_error)
            if span is not None:
                span.set_attribute("baton.run.status", outcome.status.value if outcome and outcome.status else "fenced")
            return outcome

    def _execute_run(self, x: Execution, claim: Claim, workflow: Workflow | None, load_error: str) -> Outcome | None:
        record, previous = claim.record, claim.previous_owner
        try:
            if previous is not None:
                x.append([ev.RunRecovered(worker=self.owner, previous_owner=previous, reason=claim.reason)])
                self._check_crash_loop(x)
            if workflow is None:
                if x.cancel_requested:
                    x.append([*x.withdraw_open("the run was cancelled"), ev.RunCancelled(reason=(
                        f"cancelled on request; compensations not run: cannot load workflow "
                        f"{record.workflow_ref}: {load_error}"))])
                    return Outcome(RunStatus.CANCELLED)
                x.needs_attention(0, f"cannot load workflow {record.workflow_ref}: {load_error}")
            return self._run_workflow(x, workflow)
        except Suspend:
            return Outcome(self.get_run(record.run_id).status)
        except Fenced:
            return None
        except StoreFailed as failed:
            # Stopped as if crashed: the run stays as its journal left it, for a retry.
            raise failed.error from None
        except Abort as abort:  # while finishing: fail the run plainly
            x.append([*x.withdraw_open("the run failed"), ev.RunFailed(error=error_info(abort.error))])
            return Outcome(RunStatus.FAILED, abort.error.message)

    def _check_crash_loop(self, x: Execution) -> None:
        """After too many takeovers without progress the run fails; if even failing it
        (its compensations) keeps killing the process, it fails without them."""
        count, limit = x.state.recoveries_since_progress, self.settings.max_recoveries
        if count <= limit:
            return
        message = (f"crash loop: the run's worker died {count} times without the run making "
                   f"progress (limit {limit}); giving up")
        if count > limit + 1:
            x.append([*x.withdraw_open("the run failed"), ev.RunFailed(error=error_info(BatonError(
                message + "; compensations skipped, as running them kept killing the process")))])
            raise Suspend()
        x.abort = BatonError(message, run_id=x.run_id)

    def _run_workflow(self, x: Execution, workflow: Workflow) -> Outcome:
        assert x.state.started is not None
        try:
            values, _ = workflow.validate_input(dict(x.state.started.input))
        except UsageError as exc:
            if x.cancel_requested:
                x.append([*x.withdraw_open("the run was cancelled"), ev.RunCancelled(reason=(
                    "cancelled on request; compensations not run: the workflow no longer "
                    f"accepts this run's input ({exc.message})"))])
                return Outcome(RunStatus.CANCELLED)
            x.needs_attention(0, f"the workflow no longer accepts this run's input ({exc.message}); "
                                 "its signature changed since the run started")
        ctx = Context(x, is_async=workflow.is_async)
        try:
            if workflow.is_async:
                result = run_coroutine(workflow.fn(ctx, **values))
            else:
                result = run_blocking(workflow.fn, ctx, **values)
        except Abort as abort:
            return x.finish(failure=abort.error)
        except (Suspend, Fenced, StoreFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - the workflow's failure is the run's outcome
            return x.finish(failure=exc)
        return x.finish(result)

    def drive(self, run_id: str, *, listener: Listener | None = None,
              wait_for_timers: bool = False, timeout: float | None = None) -> RunRecord:
        """Execute a run until it completes, fails, needs attention, or waits (for a signal,
        or for a timer unless ``wait_for_timers``). Returns the run as it was left."""
        run_id = self.resolve_run_id(run_id)
        deadline = None if timeout is None else self.clock.time() + timeout
        while True:
            before = self.get_run(run_id).head_seq
            outcome = self.execute(run_id, listener)
            record = self.get_run(run_id)
            if outcome is None or record.status.terminal:
                return record
            if record.head_seq == before and not (
                    record.status is RunStatus.SLEEPING and wait_for_timers):
                return record  # nothing moved: executing again would change nothing
            if record.status is RunStatus.SLEEPING and wait_for_timers and record.wake_at:
                delay = record.wake_at - self.clock.time()
                if deadline is not None and self.clock.time() + delay > deadline:
                    return record
                self.clock.sleep(delay)
                continue
            if record.status in (RunStatus.PENDING, RunStatus.RUNNING) or (
                    record.cancel_requested and outcome.status is not RunStatus.CANCELLED):
                continue
            if record.status is RunStatus.WAITING and any(
                    s.name == record.waiting_for for s in self.store.pending_signals(run_id)):
                continue
            return record

    def resume(self, run_id: str, *, listener: Listener | None = None) -> RunRecord:
        return self.drive(run_id, listener=listener)

    # -- from outside ---------------------------------------------------------------

    def signal(self, run_id: str, name: str, data: Any = None) -> int:
        """Send ``data`` to the run's ``ctx.wait_for(name)``; it is kept until consumed."""
        run_id = self.resolve_run_id(run_id)
        record = self.get_run(run_id)
        if record.status.terminal:
            raise UsageError(f"run {run_id} is {record.status.value}; it takes no more signals")
        json_text(data, "signal data")
        json_text(name, "the signal name")
        # The inbox holds it encrypted whole: what in it is sensitive is decided when the run
        # takes it, knowing what the run has declared.
        sealed = self.sealer(run_id).seal_value(data, "signal")
        return self.store.send_signal(run_id, name, canonical_json(sealed), self.clock.time())

    def cancel(self, run_id: str) -> None:
        """Ask for the run to be cancelled: its completed steps' compensations run, newest
        first, and it ends ``cancelled``. Takes effect at the run's next step."""
        run_id = self.resolve_run_id(run_id)
        record = self.get_run(run_id)
        if record.status.terminal:
            raise UsageError(f"run {run_id} is already {record.status.value}")
        self.store.request_cancel(run_id)

    def resolve_step(self, run_id: str, step_id: int, *, applied: bool, result: Any = None,
                     by: str = "operator", note: str = "") -> None:
        """Settle an in-doubt step by hand: it took effect (with ``result``) or it did not."""
        resolve_step(self, run_id, step_id, applied=applied, result=result, by=by, note=note)

    # -- approvals --------------------------------------------------------------------

    def approvals(self, principal: str | None = None, *, status: str | None = "pending") -> list[ApprovalRecord]:
        """Approval requests. With ``principal``: only those in their tenant that they may
        decide (pending ones: not their own, and not expired)."""
        if principal is None:
            return self.store.list_approvals(status=status)
        who = self.governance.directory.require(principal)
        found = self.store.list_approvals(status=status, tenant=who.tenant)
        if status != "pending":
            return found
        now = self.clock.time()
        return [a for a in found if refusal(who, "approve", a.approval_id, standing_of(a), now) is None]

    def get_approval(self, approval_id: str, principal: str | None = None) -> ApprovalRecord:
        """An approval request by id (or unique prefix). With ``principal``, only one of
        their tenant: another tenant's request is reported as not existing."""
        who = self.governance.directory.require(principal) if principal is not None else None
        found = self.store.get_approval(approval_id)
        if found is None:
            matches = self.store.find_approval(approval_id, who.tenant if who else None) if approval_id else []
            if len(matches) > 1:
                raise UsageError(f"{approval_id!r} matches several approval requests: {', '.join(matches[:5])}")
            found = self.store.get_approval(matches[0]) if matches else None
        if found is None or (who is not None and found.tenant != who.tenant):
            raise ApprovalError(f"no approval request {approval_id!r}")
        return found

    def decide(self, approval_id: str, *, principal: str, approve: bool, reason: str) -> ApprovalRecord:
        """Approve or deny a pending request as ``principal``, with a reason. The decision is
        appended to the run's journal; the run continues when a worker picks it up."""
        return decide(self, approval_id, principal=principal, approve=approve, reason=reason)

    # -- reading --------------------------------------------------------------------

    def resolve_run_id(self, run_id: str, principal: str | None = None) -> str:
        """Accept a unique prefix of a run id, as people type them. With ``principal``, only
        a run of their tenant: another tenant's is reported as not existing."""
        tenant = self.governance.directory.require(principal).tenant if principal is not None else None
        found = self.store.get_run(run_id)
        if found is not None and (principal is None or found.tenant == tenant):
            return run_id
        matches = self.store.find_run(run_id, tenant) if run_id else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            pruned = self.store.pruned_runs().get(run_id) if principal is None else None
            if pruned is not None:
                raise RunNotFound(f"run {run_id} was archived to {pruned[2]} and removed from the database",
                                  run_id=run_id)
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        raise UsageError(f"{run_id!r} matches several runs: {', '.join(matches[:5])}")

    def runs(self, principal: str | None = None, *, status: RunStatus | None = None,
             limit: int = 50) -> list[RunRecord]:
        """Runs, newest first; with ``principal``, only those of their tenant."""
        tenant = self.governance.directory.require(principal).tenant if principal is not None else None
        return self.store.list_runs(status=status, tenant=tenant, limit=limit)

    def get_run(self, run_id: str) -> RunRecord:
        record = self.store.get_run(run_id)
        if record is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        return record

    def journal(self, run_id: str) -> list[EncodedEvent]:
        return self.store.read(self.resolve_run_id(run_id))

    def events(self, run_id: str, *, reveal: bool = False) -> list[ev.Event]:
        """The run's events as stored, sensitive values sealed; with ``reveal``, opened
        with the run's data key (:class:`~baton.errors.DataErased` once it is destroyed)."""
        run_id = self.resolve_run_id(run_id)
        if reveal:
            return self.opened_events(run_id, self.sealer(run_id, create=False))
        return [decode(row, self.store.blob) for row in self.store.read(run_id)]

    def opened_events(self, run_id: str, sealer: Sealer) -> list[ev.Event]:
        """A run's events as the engine replays them: read, decoded, sensitive values opened."""
        return [sealer.open(decode(row, self.store.blob)) for row in self.store.read(run_id)]

    def result(self, run_id: str) -> Any:
        """What a completed run's workflow returned, sensitive values included."""
        run_id = self.resolve_run_id(run_id)
        record = self.get_run(run_id)
        if record.status is not RunStatus.COMPLETED:
            raise UsageError(f"run {run_id} is {record.status.value}, not completed: it has no result")
        last = decode(self.journal(run_id)[-1], self.store.blob)
        opened = self.sealer(run_id, create=False).open(last)
        assert isinstance(opened, ev.RunCompleted)
        return opened.result

    def forget(self, run_id: str) -> Forgotten:
        """Erase a finished run's sensitive values by destroying its data key, and delete the
        long-term memory entries it wrote. The journal, its hashes and the signed checkpoints
        are untouched and still verify; the sealed values become unreadable."""
        try:
            run_id = self.resolve_run_id(run_id)
        except RunNotFound:
            if run_id not in self.store.pruned_runs():
                raise
        else:
            record = self.get_run(run_id)
            if not record.status.terminal:
                raise UsageError(f"run {run_id} is {record.status.value}; cancel it (baton runs cancel) or let "
                                 "it finish before erasing its data")
        stored = self.store.data_key(run_id)
        if stored is None:
            raise UsageError(f"run {run_id} was recorded before Baton sealed sensitive values: they are stored "
                             "in clear, and destroying a key cannot erase them")
        self.store.forget_run_memories(run_id)  # before the key: its erasure also scrubs the old pages
        erased = self.store.erase_data_key(run_id, self.clock.time())
        after = self.store.data_key(run_id)
        assert after is not None and after.erased_at is not None
        # A key given to an older run when it was next written: what came before it is in clear.
        run = self.store.get_run(run_id)
        late = run is not None and stored.created_at > run.created_at + 1.0
        return Forgotten(run_id, after.erased_at, erased, stored.created_at if late else None)

    def worker(self, *, concurrency: int = 1, listener: Listener | None = None) -> Worker:
        from .engine.worker import Worker

        return Worker(self, concurrency=concurrency, listener=listener)

