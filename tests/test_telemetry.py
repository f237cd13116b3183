"""OpenTelemetry: a run, its steps, tool calls, policy checks and approval waits become spans
carrying the run and step ids (never argument values); metrics count what matters; with
telemetry off nothing is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from baton import Baton, Context, Governance, RunStatus, Telemetry, tool, workflow
from baton.testing import FakeClock
from engine_support import make_settings

SECRET = "4111-1111-1111-1111 jane@example.com"
ATTEMPTS: list[int] = []


@tool(idempotent=True, retries=2, backoff=0.01, cost=lambda amount: amount)
def charge(card: str, amount: float) -> str:
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        raise ConnectionError("gateway timeout")
    return "ch_1"


@workflow
def pay(ctx: Context, card: str, amount: float) -> str:
    return ctx.call(charge, card=card, amount=amount)


@pytest.fixture
def exporters() -> tuple[InMemorySpanExporter, InMemoryMetricReader, Telemetry]:
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    ATTEMPTS.clear()
    return spans, metrics, Telemetry(tracing, MeterProvider(metric_readers=[metrics]))


def governance(tmp_path: Path) -> Governance:
    (tmp_path / "p.cedar").write_text(
        'permit(principal, action, resource);\n'
        '@approval("role:manager")\nforbid(principal, action, resource)\n'
        'when { context.args.amount.greaterThan(decimal("100.0")) };\n'
        'forbid(principal, action, resource) when { context.args.amount.greaterThan(decimal("1000.0")) };\n')
    return Governance.from_dict({"principals": {"alice": {"tenant": "t", "roles": ["support"]},
                                                "bob": {"tenant": "t", "roles": ["manager"]}},
                                 "policies": {"files": ["p.cedar"]}}, base=tmp_path)


def metric_points(reader: InMemoryMetricReader) -> dict[str, Any]:
    found: dict[str, Any] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [p for p in metric.data.data_points]
    return found


def test_a_run_its_tool_call_policy_check_and_approval_wait_are_spans(
        tmp_path: Path, exporters: tuple[InMemorySpanExporter, InMemoryMetricReader, Telemetry]) -> None:
    spans, metrics, telemetry = exporters
    with Baton(make_settings(tmp_path), clock=FakeClock(), governance=governance(tmp_path),
               telemetry=telemetry) as baton:
        run_id = baton.start(pay, card=SECRET, amount=150.0, principal="alice")
        assert baton.drive(run_id).waiting_for == "approval"
        (request,) = baton.approvals("bob")
        baton.decide(request.approval_id, principal="bob", approve=True, reason="ok")
        assert baton.drive(run_id).status is RunStatus.COMPLETED
        denied = baton.start(pay, card=SECRET, amount=5000.0, principal="alice")
        assert baton.drive(denied).status is RunStatus.FAILED

    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    assert names.count("baton.run pay") == 3  # held, continued after approval, denied
    (tool_span,) = [s for s in finished if s.name == "execute_tool charge"]
    assert tool_span.attributes is not None
    assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool_span.attributes["gen_ai.tool.name"] == "charge"
    assert (tool_span.attributes["baton.run.id"], tool_span.attributes["baton.step.id"]) == (run_id, 1)
    run_spans = [s for s in finished if s.name == "baton.run pay" and s.attributes
                 and s.attributes["baton.run.id"] == run_id]
    assert tool_span.parent is not None and tool_span.parent.span_id in {s.context.span_id for s in run_spans}
    policy = [s for s in finished if s.name == "baton.policy charge"]
    assert [s.attributes["baton.policy.effect"] for s in policy if s.attributes] == ["approval", "approval", "deny"]
    (wait,) = [s for s in finished if s.name == "baton.approval.wait"]
    assert wait.attributes and wait.attributes["baton.approval.decided_by"] == "bob"
    for span in finished:
        assert span.attributes and "baton.run.id" in span.attributes
        assert not any(SECRET in str(value) or "5000.0" in str(value) for value in span.attributes.values())

    points = metric_points(metrics)
    assert sum(p.value for p in points["baton.step.retries"]) == 1
    assert sum(p.value for p in points["baton.policy.denials"]) == 1
    assert sum(p.count for p in points["baton.step.duration"]) == 1
    assert "baton.approvals.pending" in points


def test_with_telemetry_off_nothing_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    off = Telemetry.from_env()
    assert not off.enabled and off.tracer is None and off.meter is None
    with Baton(make_settings(tmp_path)) as baton:
        assert not baton.telemetry.enabled
        assert baton.drive(baton.start(pay, card="x", amount=1.0)).status is RunStatus.COMPLETED


def test_the_console_exporter_is_chosen_by_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    assert Telemetry.from_env().tracer is not None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(Exception, match="console and otlp"):
        Telemetry.from_env()


def test_an_agents_model_calls_are_genai_chat_spans_with_their_usage(
        tmp_path: Path, exporters: tuple[InMemorySpanExporter, InMemoryMetricReader, Telemetry]) -> None:
    from baton.agent import ScriptedModel, agent, call, say

    spans, _, telemetry = exporters
    model = ScriptedModel([call("charge", card="4111 1111 1111 1111", amount=5.0), say("charged")], label="t")
    wf = agent("payer", instructions="Charge cards.", model=model, tools=[charge])
    with Baton(make_settings(tmp_path), telemetry=telemetry) as b:
        assert b.run(wf, goal="Charge 5").status is RunStatus.COMPLETED
    chats = [s for s in spans.get_finished_spans() if s.name == "chat t"]
    assert len(chats) == 2
    attrs = chats[0].attributes or {}
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "scripted"
    assert attrs["gen_ai.request.model"] == "t" and attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("tool_use",)
    tool_spans = [s for s in spans.get_finished_spans() if s.name == "execute_tool charge"]
    assert len(tool_spans) == 1 and "4111" not in str(tool_spans[0].attributes)
