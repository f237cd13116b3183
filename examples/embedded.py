"""Baton from Python: start a run, let it wait for a person, signal it, read its journal.

    python examples/embedded.py            # uses ./embedded.db
"""

from __future__ import annotations

import sys

from baton import Baton, Context, RunStatus, Settings, StepError, tool, workflow


@tool(idempotent=True, retries=2, backoff=0.05)
def reserve_seat(flight: str, passenger: str, *, idempotency_key: str) -> dict[str, str]:
    """A booking API that deduplicates on the key, as most payment and booking APIs do."""
    return {"flight": flight, "seat": "14C", "booking": f"BK-{idempotency_key[-6:]}"}


@workflow
def book(ctx: Context, flight: str, passenger: str) -> dict[str, str]:
    seat = ctx.call(reserve_seat, flight=flight, passenger=passenger)
    decision = ctx.wait_for("confirm", timeout=3600, default={"ok": False})
    if not decision.get("ok"):
        raise StepError("the passenger did not confirm")
    return seat


def main(database: str = "embedded.db") -> int:
    with Baton(Settings(database_url=f"sqlite:///{database}")) as baton:
        record = baton.run(book, flight="BA117", passenger="Dana Smith")
        assert record.status is RunStatus.WAITING  # durable: this process could exit here
        baton.signal(record.run_id, "confirm", {"ok": True})
        record = baton.drive(record.run_id)
        print(record.status.value, record.outcome)
        for event in baton.events(record.run_id):
            print(" ", type(event).__name__)
        return 0 if record.status is RunStatus.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
