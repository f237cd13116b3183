"""Log lines that say which run and step they belong to, and which trace.

The runtime records the run and step in hand in context variables; :class:`RunContext`, a
logging filter, copies them (and the current OpenTelemetry trace and span ids) onto every
record, so that a log line, a span and a journal event can be matched. It also masks
sensitive values in the message and any traceback: what the detectors recognise, and what
the run in hand declared sensitive. ``baton worker`` installs it; an application adds it to
its own handlers::

    handler.addFilter(baton.logs.RunContext())
    handler.setFormatter(logging.Formatter(baton.logs.FORMAT))
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

from .sensitive.detect import redact
from .telemetry import current_ids

FORMAT = "%(asctime)s %(levelname)s %(name)s run=%(run_id)s step=%(step_id)s trace=%(trace_id)s %(message)s"

_run: ContextVar[str] = ContextVar("baton_run", default="-")
_step: ContextVar[str] = ContextVar("baton_step", default="-")
_known: ContextVar[set[str] | frozenset[str]] = ContextVar("baton_sensitive", default=frozenset())


@contextmanager
def in_run(run_id: str, sensitive: set[str] | None = None) -> Iterator[None]:
    """Log lines inside belong to ``run_id``; ``sensitive`` (the run's declared-sensitive
    values, kept up to date by its sealer) are masked in them."""
    token = _run.set(run_id)
    known = _known.set(sensitive if sensitive is not None else frozenset())
    try:
        yield
    finally:
        _known.reset(known)
        _run.reset(token)


@contextmanager
def in_step(step_id: int) -> Iterator[None]:
    token = _step.set(str(step_id))
    try:
        yield
    finally:
        _step.reset(token)


class RunContext(logging.Filter):
    """Adds ``run_id``, ``step_id``, ``trace_id`` and ``span_id`` to every record, and masks
    sensitive values in its message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = _snapshot(_known.get())
        message = record.getMessage()
        clean = redact(message, known)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, known)
        record.run_id = _run.get()
        record.step_id = _step.get()
        ids = current_ids()
        record.trace_id, record.span_id = ids if ids is not None else ("-", "-")
        return True


_formatter = logging.Formatter()


def _snapshot(values: set[str] | frozenset[str]) -> tuple[str, ...]:
    """A copy of the run's declared values; a tool thread may add one while it is taken."""
    while True:
        try:
            return tuple(values)
        except RuntimeError:  # "set changed size during iteration": take it again
            continue


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, as in tests)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure(level: int = logging.WARNING) -> None:
    """Log to stderr, each line with its run, step and trace, sensitive values masked (the
    commands that execute runs call this). Calling it again changes nothing."""
    root = logging.getLogger()
    if any(isinstance(h, _Stderr) for h in root.handlers):
        return
    handler = _Stderr()
    handler.addFilter(RunContext())
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
