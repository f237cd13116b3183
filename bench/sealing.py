"""What sealing sensitive values adds to a step, in µs per event.

Run from the repository root::

    .venv/bin/python bench/sealing.py

Every event a step writes is walked for sensitive values before it is encoded. This times,
for a typical tool step (``StepRan``: four arguments and a small result), the canonical
encoding alone (the floor: work every step does anyway), then walking and encoding an event
with nothing sensitive in it, one with a detected e-mail address, one with a declared field,
and opening a sealed event again (what a resume does per event). See docs/benchmarks.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

from baton.journal import events as ev
from baton.sensitive import DataKey, Hints, Sealer

ROUNDS = 20_000


def step(args: dict[str, object], result: object) -> ev.StepRan:
    return ev.StepRan.trusted(step_id=7, kind="call", name="issue_refund", args=args, attempt=1,
                              idempotency_key="run:7", role="payments", result=result)


def per_event(work: Callable[[], object]) -> float:
    """Median µs per call over five batches."""
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(ROUNDS):
            work()
        samples.append((time.perf_counter() - start) / ROUNDS * 1e6)
    return statistics.median(samples)


def main() -> None:
    sealer = Sealer("0193a1b2c3d4e5f6a7b8c", DataKey(os.urandom(32)))
    plain_args = {"order_id": "98765", "amount": 120.0, "currency": "EUR", "reason": "damaged on arrival"}
    result = {"transaction": "txn-98765-120", "status": "settled"}
    email_args = {**plain_args, "reason": "customer alice@example.com says: damaged on arrival"}
    declared = Hints(frozenset({"iban"}))
    iban_args = {**plain_args, "iban": "DE89 3704 0044 0532 0130 00"}
    sealed_event = sealer.seal(step(email_args, result))

    def encode_only() -> object:
        return step(plain_args, result).encoded()

    def seal_plain() -> object:
        return sealer.seal(step(plain_args, result)).encoded()

    def seal_email() -> object:
        return sealer.seal(step(email_args, result)).encoded()

    def seal_declared() -> object:
        return sealer.seal(step(iban_args, result), declared).encoded()

    def open_sealed() -> object:
        return sealer.open(sealed_event)

    floor = per_event(encode_only)
    rows = [
        ("encode only (floor)", floor),
        ("walk + encode, nothing sensitive", per_event(seal_plain)),
        ("walk + seal + encode, a detected e-mail", per_event(seal_email)),
        ("walk + seal + encode, a declared field", per_event(seal_declared)),
        ("open a sealed event (resume)", per_event(open_sealed)),
    ]
    print("Baton sealing overhead")
    print("=" * 66)
    print(f"date     {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
    print(f"python   {platform.python_version()}; {ROUNDS:,} events x 5 batches, medians")
    print("-" * 66)
    for label, micros in rows:
        extra = "" if label.startswith("encode only") else f"  (+{micros - floor:5.1f} µs)"
        print(f"{label:42} {micros:7.1f} µs{extra}")


if __name__ == "__main__":
    main()
