"""Checking that the record was not edited: every run's hash chain, and that the chain
still reaches the head the run index recorded (which catches a truncated tail)."""

from __future__ import annotations

from dataclasses import dataclass

from .journal import chain_break
from .store import Store


@dataclass(frozen=True, slots=True)
class Problem:
    run_id: str
    seq: int
    what: str

    def __str__(self) -> str:
        return f"run {self.run_id}, event {self.seq}: {self.what}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    runs: int
    events: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(store: Store, run_id: str) -> tuple[int, Problem | None]:
    """Recompute one run's chain. Returns (events checked, first problem or None).

    Besides the chain itself, the journal must still reach the run's anchor (the head the
    index recorded at the run's last status change or lease release) with the same hash:
    that catches events removed from the end. The anchor is read before the events, so a
    run being appended to while it is audited is not mistaken for a damaged one.
    """
    before = store.get_run(run_id)
    rows = store.read(run_id)
    broken = chain_break(rows)
    if broken is not None:
        expected, row = broken.expected_seq, broken.row
        if broken.misplaced:
            what = "missing" if row.seq > expected else "out of order or duplicated"
            return len(rows), Problem(run_id, expected, f"event {expected} is {what}")
        return len(rows), Problem(
            run_id, row.seq, f"{row.type} does not match its hash: the event or one before it was changed",
        )
    # Unbroken, so rows[i] holds seq i + 1.
    last = rows[-1].seq if rows else 0
    if before is not None and before.anchor_seq > 0:
        if last < before.anchor_seq:
            return len(rows), Problem(
                run_id, last + 1,
                f"the journal ends at event {last} but the run was anchored at event "
                f"{before.anchor_seq}: events were removed from the end",
            )
        if rows[before.anchor_seq - 1].hash != before.anchor_hash:
            return len(rows), Problem(
                run_id, before.anchor_seq,
                f"event {before.anchor_seq} is not the one the run was anchored at: the journal was rewritten",
            )
    return len(rows), None


def verify(store: Store, run_id: str | None = None) -> VerifyReport:
    run_ids = [run_id] if run_id else store.all_run_ids()
    problems: list[Problem] = []
    total = 0
    for rid in run_ids:
        count, problem = verify_run(store, rid)
        total += count
        if problem is not None:
            problems.append(problem)
    return VerifyReport(len(run_ids), total, problems)
