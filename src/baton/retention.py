"""Keeping storage bounded: ``baton runs prune`` archives finished runs to a JSON-lines file
and removes them (events, index rows, and the stored values nothing else refers to).

Nothing is removed until a signed checkpoint covers each run's last head and the archive,
with those checkpoints, has been written, synced and verified: the archive then proves the
runs' history on its own (``baton audit verify --export``), and the database keeps each
run's head, so ``baton audit verify`` can tell a pruned run from one that went missing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .audit import write_checkpoint
from .audit.export import export_lines, verify_export
from .errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .runtime import Baton


DAY = 86400.0


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True, slots=True)
class PruneReport:
    runs: int
    events: int
    blobs_removed: int
    archive: Path | None


def prune(baton: Baton, finished_before: float, archive: Path, key: Ed25519PrivateKey | None) -> PruneReport:
    store = baton.store
    # The last day's calls stay: policies count a principal's calls over 24 hours.
    runs = store.finished_runs(min(finished_before, baton.clock.time() - DAY))
    if not runs:
        return PruneReport(0, 0, 0, None)
    if key is None:
        raise UsageError("pruning needs the audit key (BATON_AUDIT_KEY or --key): a signed checkpoint must cover "
                         "each run's last event before its events go")
    if archive.exists():
        raise UsageError(f"{archive} exists; choose another --archive file")
    write_checkpoint(store, key, baton.clock.time())
    covered = store.checkpointed_heads()
    for run in runs:
        if covered.get(run.run_id, (0, 0))[0] != run.head_seq:
            raise UsageError(f"run {run.run_id} changed while its checkpoint was written; try again")
    run_ids = [run.run_id for run in runs]
    partial = archive.with_name(archive.name + ".partial")
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w", encoding="utf-8") as out:
            for line in export_lines(store, run_ids, baton.clock.time(), key):
                out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        with partial.open(encoding="utf-8") as written:
            report = verify_export(written, key.public_key())
        events = sum(run.head_seq for run in runs)
        if not report.ok or report.events != events or not report.complete:
            problem = report.problems[0] if report.problems else f"{report.events} events instead of {events}"
            raise UsageError(f"the archive did not verify ({problem}); nothing was removed")
        os.replace(partial, archive)
        _sync_folder(archive.parent)  # the archive must outlive a power cut before anything goes
    except OSError as exc:
        raise UsageError(f"cannot write the archive {archive}: {exc.strerror}; nothing was removed") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    # Signed before anything goes: these runs leave on purpose, each at this head.
    write_checkpoint(store, key, baton.clock.time(), pruned=[(r.run_id, r.head_seq, r.head_hash) for r in runs])
    removed = store.prune(runs, str(archive), baton.clock.time())
    return PruneReport(len(runs), events, removed, archive)
