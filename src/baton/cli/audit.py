"""``baton audit``: check the record, sign checkpoints, export it for a third party."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from .common import DatabaseOpt, err, open_baton, out

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

audit_app = typer.Typer(no_args_is_help=True, help="Prove the record was not edited.")


@audit_app.command("verify")
def audit_verify(
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    public_key: Annotated[str | None, typer.Option("--public-key", help="PEM file of the audit public key: "
                                                   "checks the checkpoints' signatures.")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="Verify a file written by "
                                                "`baton audit export` instead of a database.")] = None,
    db: DatabaseOpt = None,
) -> None:
    """Recompute every hash chain and check every signed checkpoint; exit 1 naming the first
    problem. Works on a copied database file, offline, with only the public key."""
    from ..audit import verify
    from ..audit.export import verify_export
    from ..audit.keys import load_public

    key = load_public(public_key) if public_key else None
    with contextlib.ExitStack() as stack:
        if export is not None:
            if run_id:
                raise UsageError("--run applies to a database; an export is verified whole")
            try:
                lines = stack.enter_context(export.open(encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot read {export}: {exc.strerror}") from None
            report = verify_export(lines, key)
        else:
            baton = stack.enter_context(open_baton(db, must_exist=True))
            report = verify(baton.store, baton.resolve_run_id(run_id) if run_id else None, key)
        if report.ok:
            out.print(f"[green]✓ audit chain intact[/]: {report.runs} runs, {report.events} events verified",
                      highlight=False)
            if report.checkpoints:
                signed = ("signatures verified with the public key" if report.signatures_checked
                          else "[yellow]signatures not checked: pass --public-key FILE[/]")
                out.print(f"[green]✓ {report.checkpoints} signed checkpoints intact[/]; {signed}", highlight=False)
            if report.complete:
                out.print("[green]✓ the file's signed manifest lists exactly the runs it holds[/]")
            elif export is not None:
                out.print("[yellow]no manifest verified with a public key: the file does not prove that no run was "
                          "left out of it[/]")
            return
        for problem in report.problems:
            err.print(f"[bold red]✗ tampering detected[/]: {problem}", highlight=False)
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run (with every checkpoint).")] = None,
    format: Annotated[str, typer.Option("--format", help="jsonl, the only format.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--out", help="File to write (default: standard output).")]
    = None,
    db: DatabaseOpt = None,
) -> None:
    """Write the events with their hashes, and the signed checkpoints, as JSON lines that a
    third party can verify (docs/audit.md; baton audit verify --export FILE)."""
    from ..audit.export import export_lines

    if format != "jsonl":
        raise UsageError(f"--format must be jsonl, not {format!r}")
    with open_baton(db, must_exist=True) as baton:
        lines = export_lines(baton.store, baton.resolve_run_id(run_id) if run_id else None, baton.clock.time(),
                             baton.audit_key)
        if output is None:
            for line in lines:
                sys.stdout.write(line + "\n")
            return
        count = 0
        with output.open("w", encoding="utf-8") as file:
            for line in lines:
                file.write(line + "\n")
                count += 1
        err.print(f"wrote {count - 1} records to {output}", highlight=False)


@audit_app.command("keygen")
def audit_keygen(
    folder: Annotated[Path, typer.Option("--dir", help="Where to write baton-audit.key and baton-audit.pub.")]
    = Path(".baton"),
) -> None:
    """Create the Ed25519 key pair that signs checkpoints."""
    from ..audit.keys import KEY_ENV, generate

    private, public = generate(folder)
    out.print(f"private key: {private} (keep it secret; workers sign with it: {KEY_ENV}={private})\n"
              f"public key:  {public} (give it to auditors: baton audit verify --public-key {public})",
              highlight=False)


def _signing_key(key: str | None) -> Ed25519PrivateKey:
    """The audit key from ``--key`` or ``BATON_AUDIT_KEY``, or a message saying how to get one."""
    from ..audit.keys import KEY_ENV, load_private

    private = load_private(key)
    if private is None:
        raise UsageError(f"no audit key: pass --key FILE or set {KEY_ENV} (baton audit keygen makes one)")
    return private


@audit_app.command("pubkey")
def audit_pubkey(key: Annotated[str | None, typer.Option("--key", help="Private key PEM file (default: "
                                                         "BATON_AUDIT_KEY).")] = None) -> None:
    """Print the public key of the signing key, to hand to auditors."""
    from ..audit.keys import public_pem

    sys.stdout.write(public_pem(_signing_key(key).public_key()).decode())


@audit_app.command("checkpoint")
def audit_checkpoint(
    key: Annotated[str | None, typer.Option("--key", help="Private key PEM file (default: BATON_AUDIT_KEY).")]
    = None,
    db: DatabaseOpt = None,
) -> None:
    """Sign a checkpoint of every run head that changed since the last one (workers with an
    audit key write one every few minutes on their own)."""
    from ..audit import write_checkpoint

    private = _signing_key(key)
    with open_baton(db, must_exist=True) as baton:
        checkpoint = write_checkpoint(baton.store, private, baton.clock.time())
        if checkpoint is None:
            last = baton.store.last_checkpoint()
            out.print(f"nothing changed since checkpoint {last.seq if last else 0}")
            return
        out.print(f"checkpoint [bold]{checkpoint.seq}[/] signed: {len(checkpoint.heads)} run heads; "
                  f"its hash (keep it elsewhere to pin the record): {checkpoint.hash}", highlight=False)
