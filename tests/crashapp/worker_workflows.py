"""Small workflows that worker processes load by path, for the tests of workers on either
database (``test_cli.py``, ``test_postgres.py``): slow steps, a timer, a signal."""

from __future__ import annotations

import time

from baton import Context, tool, workflow


@tool(idempotent=True)
def slow(i: int) -> int:
    time.sleep(0.5)
    return i


@workflow
def steps(ctx: Context, n: int) -> int:
    return sum(ctx.call(slow, i) for i in range(n))


@workflow
def nap(ctx: Context, seconds: float) -> str:
    ctx.sleep(seconds)
    return "rested"


@workflow
def ask(ctx: Context) -> object:
    return ctx.wait_for("answer")
