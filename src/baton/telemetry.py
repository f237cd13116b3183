"""OpenTelemetry: spans for each run execution, step, tool call, policy check and approval
wait, and metrics for step latency, retries, in-doubt steps, policy denials and pending
approvals.

Off by default, and then free: every hook is one attribute check. It is on when
``OTEL_TRACES_EXPORTER`` or ``OTEL_METRICS_EXPORTER`` is ``console`` or ``otlp`` (the OTLP
exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables), or when an application hands
``Baton`` a :class:`Telemetry` built on its own providers. Tool calls follow the GenAI semantic
conventions (``execute_tool {name}``, ``gen_ai.operation.name``, ``gen_ai.tool.name``). Every
span carries ``baton.run.id`` (and ``baton.step.id`` where there is a step); arguments,
results and evidence are never attributes, so sensitive values cannot leak through traces.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

INSTRUMENTATION = "baton"


class Telemetry:
    """What a :class:`~baton.Baton` reports. ``Telemetry()`` reports nothing."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.enabled = tracer_provider is not None or meter_provider is not None
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION) if tracer_provider is not None else None
        meter = meter_provider.get_meter(INSTRUMENTATION) if meter_provider is not None else None
        self.meter = meter
        if meter is not None:
            self.step_duration = meter.create_histogram("baton.step.duration", unit="s",
                                                        description="Time a tool step took, attempts included")
            self.retries = meter.create_counter("baton.step.retries", description="Tool attempts after the first")
            self.in_doubt = meter.create_counter("baton.step.in_doubt",
                                                 description="Non-idempotent steps found interrupted after a crash")
            self.denials = meter.create_counter("baton.policy.denials", description="Tool steps policy denied")
        self._pending: Callable[[], int] | None = None

    @classmethod
    def from_env(cls) -> Telemetry:
        """Providers from the standard ``OTEL_*`` variables; off if they ask for nothing."""
        traces = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
        metric_kind = os.environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
        if traces in ("", "none") and metric_kind in ("", "none"):
            return cls()
        return cls(_tracer_provider(traces), _meter_provider(metric_kind))

    def watch_pending_approvals(self, count: Callable[[], int]) -> None:
        """Report the number of pending approval requests (read when metrics are collected)."""
        if self.meter is None or self._pending is not None:
            return
        self._pending = count

        def observe(_: CallbackOptions) -> Iterator[Observation]:
            yield Observation(count())

        self.meter.create_observable_gauge("baton.approvals.pending", [observe],
                                           description="Approval requests waiting for a person")

    @contextmanager
    def span(self, name: str, attributes: dict[str, Any], *, start: float | None = None) -> Iterator[Span | None]:
        """A span (``None`` when tracing is off). An exception marks it failed and goes on."""
        if self.tracer is None:
            yield None
            return
        start_ns = int(start * 1e9) if start is not None else None
        with self.tracer.start_as_current_span(name, attributes=attributes, start_time=start_ns,
                                               record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                if isinstance(exc, Exception):
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.set_attribute("error.type", type(exc).__name__)
                raise

    def waited(self, name: str, attributes: dict[str, Any], since: float) -> None:
        """A span for something that already happened, from ``since`` until now (an approval
        wait spans processes and days: it is recorded when the run picks the decision up)."""
        if self.tracer is not None:
            span = self.tracer.start_span(name, attributes=attributes, start_time=int(since * 1e9))
            span.end(end_time=time.time_ns())


def _tracer_provider(kind: str) -> Any:
    if kind in ("", "none"):
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    for name in kind.split(","):
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(name.strip(), ConsoleSpanExporter)))
    return provider


def _span_exporter(name: str, console: Any) -> Any:
    if name == "console":
        return console(out=sys.stderr)  # stdout is the commands' output (--json, exports)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from .errors import UsageError

    raise UsageError(f"OTEL_TRACES_EXPORTER: Baton knows console and otlp, not {name!r}")


def _meter_provider(kind: str) -> Any:
    if kind in ("", "none"):
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    readers = []
    for name in (n.strip() for n in kind.split(",")):
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        else:
            from .errors import UsageError

            raise UsageError(f"OTEL_METRICS_EXPORTER: Baton knows console and otlp, not {name!r}")
    return MeterProvider(metric_readers=readers)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, for log lines; ``None`` outside one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


__all__ = ["Telemetry", "current_ids", "metrics", "trace"]
