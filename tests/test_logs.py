"""Log lines carry the run and step they belong to (and the trace), even from a tool's own
logger and from a tool running on a worker thread because it has a timeout."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from baton import Baton, Context, Telemetry, tool, workflow
from baton.logs import RunContext
from engine_support import make_settings

app_log = logging.getLogger("tests.app")


@tool(idempotent=True)
def look_up(order_id: str) -> str:
    app_log.warning("looking up %s", order_id)
    return order_id


@tool(idempotent=True, timeout=5.0)
def slow_look_up(order_id: str) -> str:
    app_log.warning("slowly looking up %s", order_id)
    return order_id


@workflow
def orders(ctx: Context) -> str:
    app_log.warning("workflow starts")
    ctx.call(look_up, order_id="1")
    return ctx.call(slow_look_up, order_id="2")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RunContext())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Records]:
    handler = Records()
    app_log.addHandler(handler)
    try:
        yield handler
    finally:
        app_log.removeHandler(handler)


def test_log_lines_say_which_run_and_step(tmp_path: Path, captured: Records) -> None:
    with Baton(make_settings(tmp_path), telemetry=Telemetry(TracerProvider())) as baton:
        run_id = baton.start(orders)
        baton.drive(run_id)
    app_log.warning("outside any run")
    found = {r.getMessage(): r for r in captured.records}
    assert (found["workflow starts"].run_id, found["workflow starts"].step_id) == (run_id, "-")
    assert (found["looking up 1"].run_id, found["looking up 1"].step_id) == (run_id, "1")
    assert (found["slowly looking up 2"].run_id, found["slowly looking up 2"].step_id) == (run_id, "2")
    assert found["looking up 1"].trace_id != "-"  # inside the tool call's span
    assert (found["outside any run"].run_id, found["outside any run"].trace_id) == ("-", "-")
