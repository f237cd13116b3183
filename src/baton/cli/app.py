"""The ``baton`` command line."""

from __future__ import annotations

import json
import signal as signals
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ..approvals.decisions import describe_approvers
from ..budgets import Limits
from ..config import Governance
from ..engine.execution import Listener
from ..errors import BatonError, UsageError
from ..journal import BLOB_CODEC, RunStatus, decode
from ..journal import events as ev
from ..journal.blobs import resolve as resolve_blobs
from ..runtime import Baton
from ..sensitive import masked
from ..settings import Settings
from ..store import RunRecord, open_store, sqlite_path
from .audit import audit_app
from .common import AsOpt, DatabaseOpt, JsonOpt, err, out
from .common import open_baton as _baton
from .render import (
    TimelineRenderer,
    approval_text,
    approvals_table,
    run_json,
    runs_table,
    status_text,
    timeline_table,
)

if TYPE_CHECKING:
    pass

app = typer.Typer(
    name="baton", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Baton: durable, crash-safe, auditable runs for AI agents.",
)
def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"baton {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Baton: durable, crash-safe, auditable runs for AI agents."""


runs_app = typer.Typer(no_args_is_help=True, help="Inspect runs.")
db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
approvals_app = typer.Typer(no_args_is_help=True, help="Approval requests waiting for a person.")
policy_app = typer.Typer(no_args_is_help=True, help="Principals, policies and limits (baton.toml).")
app.add_typer(runs_app, name="runs")
app.add_typer(approvals_app, name="approvals")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")  # its commands: cli/audit.py
app.add_typer(db_app, name="db")

def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {what} from {path}: {exc.strerror}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc})") from None


def _progress_printer(*, tagged: bool = False) -> Listener:
    """Live progress: one timeline line per event; ``tagged`` prefixes each with its run
    (a worker has several runs in hand)."""
    renderers: dict[str, TimelineRenderer] = {}

    def listener(run_id: str, events: list[ev.Event]) -> None:
        renderer = renderers.setdefault(run_id, TimelineRenderer())
        prefix = f"[dim]{run_id[-8:]}[/] " if tagged else "  "
        for event in events:
            text = renderer.line(event)
            if text is not None:
                out.print(prefix + text, highlight=False)

    return listener


def _report(record: RunRecord, baton: Baton | None = None) -> int:
    status = record.status
    out.print(f"run [bold]{record.run_id}[/] is {status_text(status.value)}", highlight=False)
    if status in (RunStatus.PENDING, RunStatus.RUNNING):
        out.print(f"  another worker is executing it: [bold]baton runs show {record.run_id}[/]")
    elif status is RunStatus.SLEEPING:
        out.print("  a worker will continue it when its timer fires: [bold]baton worker[/]")
    elif status is RunStatus.WAITING and record.waiting_for == "approval":
        for request in baton.store.list_approvals(run_id=record.run_id) if baton else []:
            out.print(f"  waiting for approval [bold]{request.approval_id}[/] ({escape(request.title)}), which "
                      f"{escape(describe_approvers(request.approvers))} may decide:\n"
                      f"    [bold]baton approve {request.approval_id} --as NAME --reason \"...\"[/]  or  "
                      f"[bold]baton deny {request.approval_id} --as NAME --reason \"...\"[/]", highlight=False)
    elif status is RunStatus.WAITING:
        out.print(f"  send it the signal: [bold]baton signal {record.run_id} {record.waiting_for} --data JSON[/]")
    elif status is RunStatus.NEEDS_ATTENTION:
        out.print(f"  {record.outcome}\n  see: [bold]baton runs show {record.run_id}[/]", highlight=False)
    elif status is RunStatus.FAILED:
        out.print(f"  {record.outcome}", highlight=False)
        return 1
    return 0


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="FILE.py:WORKFLOW or module:WORKFLOW")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Input as JSON, or @file.json")] = None,
    principal: Annotated[str | None, typer.Option("--as", help="Who the run acts for (a principal of "
                                                                "baton.toml).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait out long timers instead of leaving them to a worker.")] = False,
    max_steps: Annotated[int | None, typer.Option(min=0, help="Budget: tool steps at most.")] = None,
    max_seconds: Annotated[float | None, typer.Option(min=0, help="Budget: lifetime in seconds.")] = None,
    max_spend: Annotated[float | None, typer.Option(min=0, help="Budget: total cost of tool calls.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=0, help="Budget: model tokens.")] = None,
    db: DatabaseOpt = None,
) -> None:
    """Start a run and drive it until it completes, fails or has to wait. Budgets given here
    override those of baton.toml's [limits] for this run."""
    data = _parse_json(input, "--input") or {}
    if not isinstance(data, dict):
        raise UsageError("--input must be a JSON object of the workflow's parameters")
    limits = Limits(max_steps, max_seconds, max_spend, max_tokens)
    with _baton(db) as baton:
        run_id = baton.start(target, data, principal=principal, limits=limits)
        out.print(f"started run [bold]{run_id}[/]", highlight=False)
        try:
            record = baton.drive(run_id, listener=_progress_printer(), wait_for_timers=wait)
        except KeyboardInterrupt:
            err.print(f"interrupted: run {run_id} is saved; continue it with `baton resume {run_id}` "
                      "or `baton worker`", highlight=False)
            raise typer.Exit(130) from None
        raise typer.Exit(_report(record, baton))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Runs at once.")] = 1,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit when nothing is left to do.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print progress.")] = False,
    db: DatabaseOpt = None,
) -> None:
    """Execute runnable runs, and take over runs whose worker died."""
    with _baton(db) as baton:
        w = baton.worker(concurrency=concurrency, listener=None if quiet else _progress_printer(tagged=True))
        signals.signal(signals.SIGTERM, lambda *_: w.stop())
        if not quiet:
            err.print(f"worker {baton.owner} ({baton.settings.database_url}), concurrency {concurrency}")
        try:
            count = w.run(until_idle=until_idle)
        except KeyboardInterrupt:
            w.stop()
            count = w.executed
        if not quiet:
            err.print(f"worker done: {count} executions")


@app.command()
def resume(run_id: str, db: DatabaseOpt = None) -> None:
    """Continue a run here and now (e.g. after resolving it)."""
    with _baton(db, must_exist=True) as baton:
        record = baton.drive(run_id, listener=_progress_printer())
        raise typer.Exit(_report(record, baton))


@app.command()
def cancel(run_id: str, db: DatabaseOpt = None) -> None:
    """Cancel a run: undo its completed steps (newest first) and stop it."""
    with _baton(db, must_exist=True) as baton:
        run_id = baton.resolve_run_id(run_id)
        baton.cancel(run_id)
        record = baton.drive(run_id, listener=_progress_printer())
        if record.status is not RunStatus.CANCELLED:
            out.print(f"cancellation of {run_id} requested; the worker running it will stop it at its next step")
            return
        raise typer.Exit(_report(record, baton))


@app.command("signal")
def send_signal(
    run_id: str,
    name: str,
    data: Annotated[str | None, typer.Option("--data", "-d", help="JSON payload, or @file.json")] = None,
    db: DatabaseOpt = None,
) -> None:
    """Send a signal to a run waiting in ctx.wait_for(NAME)."""
    with _baton(db, must_exist=True) as baton:
        run_id = baton.resolve_run_id(run_id)
        baton.signal(run_id, name, _parse_json(data, "--data"))
        out.print(f"signal [bold]{name}[/] sent to {run_id}", highlight=False)


@app.command()
def resolve(
    run_id: str,
    step: Annotated[int, typer.Argument(help="The in-doubt step's number.")],
    applied: Annotated[bool, typer.Option("--applied/--not-applied",
                                          help="Did the interrupted call take effect?")],
    result: Annotated[str | None, typer.Option(help="Its result as JSON, if it took effect.")] = None,
    by: Annotated[str, typer.Option(help="Who is deciding.")] = "operator",
    note: Annotated[str, typer.Option(help="Why.")] = "",
    db: DatabaseOpt = None,
) -> None:
    """Settle an in-doubt step of a run that needs attention, then continue it."""
    with _baton(db, must_exist=True) as baton:
        run_id = baton.resolve_run_id(run_id)
        baton.resolve_step(run_id, step, applied=applied, result=_parse_json(result, "--result"),
                           by=by, note=note)
        record = baton.drive(run_id, listener=_progress_printer())
        raise typer.Exit(_report(record, baton))


@runs_app.command("prune")
def runs_prune(
    finished_before: Annotated[str, typer.Option("--finished-before", help="A date (2026-10-01) or time "
                                                 "(2026-10-01T12:00:00Z), UTC.")],
    archive: Annotated[Path | None, typer.Option("--archive", help="Where to write the archive (default: "
                                                 ".baton/archive-<time>.jsonl).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Audit private key (default: BATON_AUDIT_KEY).")] = None,
    db: DatabaseOpt = None,
) -> None:
    """Archive runs that finished before a date to a JSON-lines file that verifies on its own,
    then remove them from the database."""
    from ..audit.keys import load_private
    from ..retention import prune

    cutoff = _parse_time(finished_before, "--finished-before")
    with _baton(db, must_exist=True) as baton:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = archive or Path(".baton") / f"archive-{stamp}.jsonl"
        report = prune(baton, cutoff, target, load_private(key))  # --key, or BATON_AUDIT_KEY
        if report.archive is None:
            out.print(f"no runs finished before {finished_before}")
            return
        out.print(f"archived {report.runs} runs ({report.events} events) to [bold]{report.archive}[/] and removed "
                  f"them; {report.blobs_removed} stored values no longer referenced were removed too\n"
                  f"  verify the archive: [bold]baton audit verify --export {report.archive} --public-key FILE[/]",
                  highlight=False)


@runs_app.command("forget")
def runs_forget(
    run_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    db: DatabaseOpt = None,
) -> None:
    """Erase a finished run's sensitive values for good by destroying its data key. The
    journal and its signed checkpoints still verify; the sealed values become unreadable."""
    with _baton(db, must_exist=True) as baton:
        if not yes and sys.stdin.isatty() and not typer.confirm(
                f"erase the sensitive values of run {run_id}? This cannot be undone"):
            raise typer.Exit(1)
        done = baton.forget(run_id)
        when = datetime.fromtimestamp(done.erased_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if done.clear_before is not None:
            since = datetime.fromtimestamp(done.clear_before, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            err.print(f"[yellow]warning:[/] run {run_id} was recorded before Baton sealed sensitive values; what "
                      f"it recorded before {since} is stored in clear and was not erased", highlight=False)
        if not done.now:
            out.print(f"run {run_id}: its sensitive values were already erased ({when})", highlight=False)
            return
        out.print(f"run {run_id}: its data key was destroyed ({when}); its sensitive values can no longer be "
                  "read. The journal, its hashes and checkpoints are unchanged: "
                  "[bold]baton audit verify[/] still passes.", highlight=False)


def _parse_time(text: str, what: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{what} must be a date like 2026-10-01 or a time like 2026-10-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@approvals_app.command("list")
def approvals_list(
    principal: AsOpt = None,
    status: Annotated[str, typer.Option(help="pending, approved, denied, expired, withdrawn or all.")] = "pending",
    as_json: JsonOpt = False,
    db: DatabaseOpt = None,
) -> None:
    """List approval requests: with --as, the pending ones that principal may decide."""
    if status not in ("pending", "approved", "denied", "expired", "withdrawn", "all"):
        raise UsageError(f"--status must be pending, approved, denied, expired, withdrawn or all, not {status!r}")
    with _baton(db, must_exist=True) as baton:
        found = baton.approvals(principal, status=None if status == "all" else status)
        if as_json:
            print(json.dumps([a.to_json() for a in found], indent=2))
        elif not found:
            out.print(f"no {status if status != 'all' else ''} approval requests"
                      + (f" that {principal} may decide" if principal and status == "pending" else ""))
        else:
            out.print(approvals_table(found))


@approvals_app.command("show")
def approvals_show(approval_id: str, principal: AsOpt = None, as_json: JsonOpt = False,
                   db: DatabaseOpt = None) -> None:
    """Show one approval request: what, why, evidence, who asked, who may decide."""
    with _baton(db, must_exist=True) as baton:
        request = baton.get_approval(approval_id, principal)
        if as_json:
            print(json.dumps(request.to_json(), indent=2))
            return
        out.print(approval_text(request), highlight=False)


def _decide(approval_id: str, principal: str, reason: str, db: str | None, *, approve: bool) -> None:
    with _baton(db, must_exist=True) as baton:
        decided = baton.decide(approval_id, principal=principal, approve=approve, reason=reason)
        verb = "[green]approved[/]" if approve else "[red]denied[/]"
        out.print(f"approval [bold]{decided.approval_id}[/] {verb} by {escape(principal)}; run "
                  f"{decided.run_id} continues when a worker picks it up "
                  f"([bold]baton worker[/] or [bold]baton resume {decided.run_id}[/])", highlight=False)


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: kept in the audit trail.")]
RequiredAs = Annotated[str, typer.Option("--as", help="Who decides: a principal of baton.toml.")]


@app.command()
def approve(approval_id: str, principal: RequiredAs, reason: ReasonOpt, db: DatabaseOpt = None) -> None:
    """Approve a pending request (not your own; only if policy names you as an approver)."""
    _decide(approval_id, principal, reason, db, approve=True)


@app.command()
def deny(approval_id: str, principal: RequiredAs, reason: ReasonOpt, db: DatabaseOpt = None) -> None:
    """Deny a pending request: the step fails with ApprovalDenied."""
    _decide(approval_id, principal, reason, db, approve=False)


@policy_app.command("check")
def policy_check(config: Annotated[Path | None, typer.Option(help="The config file (default: BATON_CONFIG "
                                                                       "or ./baton.toml).")] = None) -> None:
    """Parse and validate baton.toml and its policy files; exit 1 naming the first mistake."""
    governance = Governance.load(config)
    if governance.source is None:
        raise UsageError("no baton.toml here (set BATON_CONFIG or pass --config)")
    engine = governance.policies
    out.print(f"{governance.source}: {len(governance.directory)} principals", highlight=False)
    if engine is None:
        out.print("  no policy files: every step is allowed")
    else:
        for source in engine.sources:
            shadow = " [dim](shadow)[/]" if any(f.shadow and str(f.path) == source.file for f in engine.files) else ""
            gate = f" [yellow]needs approval by {escape(describe_approvers(list(source.approvers)))}[/]" \
                if source.gate else ""
            out.print(f"  {source.effect:6} {escape(source.id)} [dim]{escape(source.file)}:{source.line}[/]"
                      f"{gate}{shadow}", highlight=False)
    if governance.limits:
        out.print(f"  limits per run: {governance.limits.to_json()}", highlight=False)
    for warning in _approver_warnings(governance):
        out.print(f"  [yellow]warning:[/] {warning}", highlight=False)
    out.print("[green]✓ valid[/]")


def _approver_warnings(governance: Governance) -> list[str]:
    """Approvers that no principal can be: requests for them could never be decided."""
    engine, directory = governance.policies, governance.directory
    named: dict[str, str] = {}
    for source in engine.sources if engine is not None else []:
        for entry in (*source.approvers, *source.escalate_to):
            named.setdefault(entry, source.id)
    for entry in governance.approvals.escalate_to:
        named.setdefault(entry, "[approvals] escalate_to")
    return [f"{where} names {entry}, which no principal in {governance.source} is: requests for it "
            "could never be decided" for entry, where in named.items()
            if not any(directory.require(pid).may_act_as([entry]) for pid in directory.ids())]


@runs_app.command("list")
def runs_list(
    status: Annotated[RunStatus | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    principal: AsOpt = None,
    as_json: JsonOpt = False,
    db: DatabaseOpt = None,
) -> None:
    """List runs, newest first (with --as: only those of that principal's tenant)."""
    with _baton(db, must_exist=True) as baton:
        records = baton.runs(principal, status=status, limit=limit)
        if as_json:
            print(json.dumps([run_json(r) for r in records], indent=2))
        elif not records:
            out.print("no runs")
        else:
            out.print(runs_table(records))


@runs_app.command("show")
def runs_show(run_id: str, principal: AsOpt = None, as_json: JsonOpt = False, db: DatabaseOpt = None) -> None:
    """Show a run and its timeline (with --as: only a run of that principal's tenant)."""
    with _baton(db, must_exist=True) as baton:
        record = baton.get_run(baton.resolve_run_id(run_id, principal))
        rows = baton.journal(record.run_id)
        if as_json:
            body = run_json(record)
            body["journal"] = [
                {"seq": r.seq, "type": r.type, "at": r.at, "hash": r.hash,
                 "data": masked(resolve_blobs(json.loads(r.data), baton.store.blob) if r.codec == BLOB_CODEC
                                else json.loads(r.data))}
                for r in rows
            ]
            print(json.dumps(body, indent=2))
            return
        out.print(f"[bold]{record.run_id}[/]  {record.workflow}  {status_text(record.status.value)}"
                  f"  [dim]{record.workflow_ref}[/]", highlight=False)
        events = [(r.seq, r.at, decode(r, baton.store.blob)) for r in rows]
        if record.status is RunStatus.NEEDS_ATTENTION and record.outcome:
            out.print(f"[bold yellow]needs attention:[/] {record.outcome}", highlight=False)
            attention = [e for _, _, e in events if isinstance(e, ev.NeedsAttention)]
            if attention and attention[-1].step_id > 0 and "resolve" in attention[-1].reason:
                step = attention[-1].step_id
                out.print(f"  settle it: [bold]baton resolve {record.run_id} {step} --applied --result JSON[/]"
                          f"  or  [bold]baton resolve {record.run_id} {step} --not-applied[/]", highlight=False)
        out.print(timeline_table(events))


@db_app.command("upgrade")
def db_upgrade(db: DatabaseOpt = None) -> None:
    """Apply pending schema migrations (SQLite databases are upgraded on open anyway; run it
    once for a PostgreSQL database, before starting workers of a new version)."""
    settings = Settings.from_env(database_url=db)
    store = open_store(settings.database_url, schema="any")
    try:
        applied = store.migrate()
        version = store.schema_version()
    finally:
        store.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to apply"
    out.print(f"{settings.database_url}: schema version {version} ({names})", highlight=False)


@db_app.command("status")
def db_status(db: DatabaseOpt = None) -> None:
    """Show the schema version and any pending migrations (changes nothing)."""
    settings = Settings.from_env(database_url=db)
    if settings.database_url.startswith("sqlite:") and not (path := sqlite_path(settings.database_url)).exists():
        raise UsageError(f"no Baton database at {path} (set BATON_DATABASE_URL or --db)")
    store = open_store(settings.database_url, schema="any")
    try:
        pending = store.pending_migrations()
        version = store.schema_version()
    finally:
        store.close()
    state = "up to date" if not pending else "pending: " + ", ".join(
        f"{m.version:04d}_{m.name}" for m in pending)
    out.print(f"{settings.database_url}: schema version {version}, {state}", highlight=False)


@app.command()
def demo(
    interactive: Annotated[bool, typer.Option("--interactive", help="Wait for you to approve the refund as "
                                              "Bob from another terminal.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="A real model instead of the scripted one: "
                                              "bedrock:MODEL_ID or openai:MODEL.")] = None,
) -> None:
    """Tell the refund story through the agent loop, offline: a policy holds the refund, Bob
    approves, a worker is killed mid-refund and another finishes it (in .baton/demo)."""
    from ..agent import model_from_spec
    from ..demo.story import run_demo

    if model is not None:
        model_from_spec(model)  # a mistyped spec is one line now, not a failed run later
    raise typer.Exit(run_demo(out, interactive=interactive, model=model))


def main() -> None:
    """Entry point: usage errors are reported by Typer; Baton's own errors become one line."""
    try:
        app()
    except BatonError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(1)
    except UnicodeError:
        err.print("[bold red]error:[/] arguments must be valid UTF-8 text", highlight=False)
        sys.exit(1)

