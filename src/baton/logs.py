"""Log lines that say which run and step they belong to, and which trace.

The runtime records the run and step in hand in context variables; :class:`RunContext`, a
logging filter, copies them (and the current OpenTelemetry trace and span ids) onto every
record, so that a log line, a span and a journal event can be matched. ``baton worker``
installs it; an application adds it to its own handlers::

    handler.addFilter(baton.logs.RunContext())
    handler.setFormatter(logging.Formatter(baton.logs.FORMAT))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .telemetry import current_ids

FORMAT = "%(asctime)s %(levelname)s %(name)s run=%(run_id)s step=%(step_id)s trace=%(trace_id)s %(message)s"

_run: ContextVar[str] = ContextVar("baton_run", default="-")
_step: ContextVar[str] = ContextVar("baton_step", default="-")


@contextmanager
def in_run(run_id: str) -> Iterator[None]:
    token = _run.set(run_id)
    try:
        yield
    finally:
        _run.reset(token)


@contextmanager
def in_step(step_id: int) -> Iterator[None]:
    token = _step.set(str(step_id))
    try:
        yield
    finally:
        _step.reset(token)


class RunContext(logging.Filter):
    """Adds ``run_id``, ``step_id``, ``trace_id`` and ``span_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run.get()
        record.step_id = _step.get()
        ids = current_ids()
        record.trace_id, record.span_id = ids if ids is not None else ("-", "-")
        return True


def configure(level: int = logging.WARNING) -> None:
    """Log to stderr, each line with its run, step and trace (``baton worker`` calls this)."""
    handler = logging.StreamHandler()
    handler.addFilter(RunContext())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
