"""The agent loop in one process: tool validation, policy refusals, approvals mid-loop,
parallel calls, budgets, model errors, and a prompt injection that policy stops."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import pytest

from baton import Baton, BudgetExceeded, Context, Limits, RunStatus, Sensitive, UsageError, tool, workflow
from baton.agent import (
    AgentLimits,
    Model,
    ModelError,
    ModelRequest,
    ModelResponse,
    Pricing,
    ScriptedModel,
    ToolCall,
    agent,
    call,
    call_raw,
    last_results,
    say,
)
from baton.agent.messages import Message
from baton.cli.render import TimelineRenderer
from baton.config import Governance
from baton.journal import events as ev
from baton.testing import FakeClock
from baton.workflows import load_workflow
from engine_support import make_settings, of_type

APP = Path(__file__).parent / "agentapp" / "agents.py"

POLICY = """
@id("support-may-use-tools")
permit(principal in Role::"support", action, resource);

@id("refunds-over-100-need-a-manager")
@approval("role:manager")
forbid(principal, action == Action::"issue_refund", resource)
when { context.args.amount.greaterThan(decimal("100.0")) };

@id("agents-never-wire-money")
forbid(principal, action == Action::"wire_money", resource);
"""

PRINCIPALS = {"alice": {"tenant": "acme", "roles": ["support"]},
              "bob": {"tenant": "acme", "roles": ["support", "manager"]}}


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "services.db"
    monkeypatch.setenv("AGENT_SERVICES_DB", str(db))
    monkeypatch.delenv("AGENT_DIE_AT_NEXT_CALL", raising=False)
    return db


def invocations(db: Path, kind: str | None = None) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT kind, name, key FROM invocations ORDER BY id").fetchall()
    return [r for r in rows if kind is None or r[0] == kind]


@pytest.fixture
def governed(tmp_path: Path, services: Path) -> Iterator[Baton]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "agents.cedar").write_text(POLICY)
    gov = Governance.from_dict({"principals": PRINCIPALS, "policies": {"files": ["policies/agents.cedar"]}},
                               base=tmp_path, source="baton.toml")
    with Baton(make_settings(tmp_path), clock=FakeClock(), governance=gov) as b:
        yield b


@pytest.fixture
def plain(tmp_path: Path, services: Path) -> Iterator[Baton]:
    with Baton(make_settings(tmp_path)) as b:
        yield b


def app(name: str) -> Any:
    return load_workflow(f"{APP}:{name}")


def model_steps(b: Baton, run_id: str) -> list[ev.StepRan]:
    return [e for e in of_type(b, run_id, ev.StepRan) if e.name.startswith("model")]


# -- tools ------------------------------------------------------------------------------

refunds: list[tuple[str, float]] = []


@tool(idempotent=True, cost=lambda amount: amount)
def refund(order_id: str, amount: float) -> dict[str, Any]:
    """Refund an order."""
    refunds.append((order_id, amount))
    return {"txn_id": f"T-{order_id}", "amount": amount}


@tool(read_only=True, idempotent=True)
def lookup(order_id: str) -> dict[str, Any]:
    """Look an order up."""
    return {"order_id": order_id, "paid": 40.0}


@pytest.fixture(autouse=True)
def _empty() -> None:
    refunds.clear()


def run_agent(b: Baton, model: Model, goal: str = "Refund order 1", **options: Any) -> tuple[str, Any]:
    wf = agent("helper", instructions="You refund orders.", model=model, tools=[lookup, refund], **options)
    run_id = b.start(wf, goal=goal)
    record = b.drive(run_id)
    return run_id, record


# -- the loop ---------------------------------------------------------------------------


def test_the_model_calls_tools_until_it_answers_and_each_call_is_a_journaled_step(plain: Baton) -> None:
    model = ScriptedModel([
        call("lookup", order_id="1"),
        lambda r: call("refund", order_id="1", amount=last_results(r)["lookup"]["paid"]),
        say("Refunded $40 on order 1."),
    ])
    run_id, record = run_agent(plain, model)
    assert record.status is RunStatus.COMPLETED
    result = plain.result(run_id)
    assert result["answer"] == "Refunded $40 on order 1." and result["stop_reason"] == "answer"
    assert result["turns"] == 3 and refunds == [("1", 40.0)]
    steps = [e.name for e in of_type(plain, run_id, ev.StepRan)]
    assert steps == ["model", "lookup", "model", "refund", "model"]
    # The refund is a fact; the lookup (read-only) is not.
    assert [f["tool"] for f in result["facts"]] == ["refund"]
    assert result["facts"][0]["result"] == {"txn_id": "T-1", "amount": 40.0}
    # What the model was shown the third time: the goal, both turns, and the fact.
    third = model.calls[2]
    assert "T-1" in third.system and [m.role for m in third.messages] == ["user", "assistant", "user",
                                                                         "assistant", "user"]
    recorded = model_steps(plain, run_id)
    assert sum(r.result["usage"]["input_tokens"] + r.result["usage"]["output_tokens"]  # type: ignore[index]
               for r in recorded) == result["tokens"] > 0


def test_parallel_calls_of_one_turn_run_in_the_order_the_model_gave_them(plain: Baton) -> None:
    model = ScriptedModel([
        call("refund", order_id="3", amount=3).and_call("lookup", order_id="1").and_call("refund", order_id="2",
                                                                                        amount=2),
        say("done"),
    ])
    run_id, _ = run_agent(plain, model)
    assert [e.name for e in of_type(plain, run_id, ev.StepRan)] == ["model", "refund", "lookup", "refund", "model"]
    assert refunds == [("3", 3.0), ("2", 2.0)]
    results = model.calls[1].messages[-1].tool_results
    assert [r.id for r in results] == ["call_1_1", "call_1_2", "call_1_3"]


def test_invalid_or_unreadable_calls_go_back_to_the_model_and_never_run(plain: Baton) -> None:
    def fixed(request: ModelRequest) -> Any:
        errors = [r.content for r in request.messages[-1].tool_results]
        assert all(isinstance(e, str) for e in errors)
        assert "invalid arguments" in errors[0] and "amount" in errors[0]
        assert "no tool named 'delete_everything'" in errors[1] and "lookup, refund" in errors[1]
        assert "must be a JSON object" in errors[2]
        assert "could not be read" in errors[3]
        return call("refund", order_id="1", amount=5)

    broken = ScriptedModel([
        call("refund", order_id="1", amount="a lot").and_call("delete_everything")
        .and_call("refund", order_id="1", amount=5),
        fixed, say("done"),
    ])
    # The last call of turn 1 is malformed on the wire (arguments that are not JSON).
    original = broken.complete

    def complete(request: ModelRequest) -> ModelResponse:
        response = original(request)
        if request.turn != 1:
            return response
        calls = list(response.message.content)
        calls[1:] = [calls[1], ToolCall(id="x1", name="refund", args=[1, 2]),
                     ToolCall(id="x2", name="refund", args="{amount: ", error="not JSON")]
        return response.model_copy(update={"message": Message(role="assistant", content=tuple(calls))})

    broken.complete = complete  # type: ignore[method-assign]
    run_id, record = run_agent(plain, broken)
    assert record.status is RunStatus.COMPLETED, record
    assert refunds == [("1", 5.0)]  # only the valid call of turn 2 ran
    failed = of_type(plain, run_id, ev.StepFailed)
    assert len(failed) == 1 and failed[0].error.code == "tool_validation_error"


def test_a_model_that_keeps_proposing_impossible_calls_fails_the_run(plain: Baton) -> None:
    model = ScriptedModel(rule=lambda r: call_raw("refund", "not an object"))
    run_id, record = run_agent(plain, model, limits=AgentLimits(max_malformed=2))
    assert record.status is RunStatus.FAILED
    (failed,) = of_type(plain, run_id, ev.RunFailed)
    assert failed.error.type == "AgentError" and "3 turns in a row" in failed.error.message
    assert len(model.calls) == 3 and refunds == []


# -- budgets ----------------------------------------------------------------------------


def test_the_loop_stops_at_its_turn_limit(plain: Baton) -> None:
    model = ScriptedModel(rule=lambda r: call("lookup", order_id=str(r.turn)))
    run_id, record = run_agent(plain, model, limits=AgentLimits(max_turns=4))
    result = plain.result(run_id)
    assert record.status is RunStatus.COMPLETED
    assert result["stop_reason"] == "max_turns" and result["answer"] is None and len(model.calls) == 4


def test_the_loop_stops_once_its_tokens_or_model_spend_are_used_up(plain: Baton) -> None:
    model = ScriptedModel(rule=lambda r: call("lookup", order_id=str(r.turn)))
    run_id, _ = run_agent(plain, model, limits=AgentLimits(max_turns=None, max_tokens=1500))
    result = plain.result(run_id)
    assert result["stop_reason"] == "max_tokens" and result["tokens"] >= 1500
    used_before_last = result["tokens"] - sum(model_steps(plain, run_id)[-1].result["usage"].values())  # type: ignore[index]
    assert used_before_last < 1500  # it stopped at the first turn boundary past the limit

    priced = ScriptedModel(rule=lambda r: call("lookup", order_id=str(r.turn)),
                           pricing=Pricing(input_per_million=3000.0, output_per_million=15000.0))
    run_id, _ = run_agent(plain, priced, limits=AgentLimits(max_turns=None, max_spend=2.0))
    result = plain.result(run_id)
    assert result["stop_reason"] == "max_spend" and result["spend"] >= 2.0
    assert 0 < sum(float(s.result["cost"]) for s in model_steps(plain, run_id)) == pytest.approx(  # type: ignore[index]
        result["spend"])


def test_model_tokens_count_against_the_runs_own_token_limit(plain: Baton) -> None:
    model = ScriptedModel(rule=lambda r: call("lookup", order_id=str(r.turn)))
    wf = agent("helper", instructions="You refund orders.", model=model, tools=[lookup, refund],
               limits=AgentLimits(max_turns=None))
    run_id = plain.start(wf, goal="Look things up", limits=Limits(max_tokens=800))
    record = plain.drive(run_id)
    assert record.status is RunStatus.FAILED
    (failed,) = of_type(plain, run_id, ev.RunFailed)
    assert failed.error.code == BudgetExceeded.code and "model tokens" in failed.error.message


# -- model failures ---------------------------------------------------------------------


class Flaky:
    """Fails with the given errors first, then answers like ``inner``."""

    def __init__(self, inner: ScriptedModel, errors: list[ModelError]) -> None:
        self.inner, self.errors = inner, errors

    @property
    def name(self) -> str:
        return "flaky:test"

    def complete(self, request: ModelRequest) -> ModelResponse:
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.complete(request)


def test_transient_model_errors_are_retried_with_backoff_and_journaled(plain: Baton) -> None:
    model = Flaky(ScriptedModel([say("fine")]),
                  [ModelError("throttled", retryable=True), ModelError("503 from the endpoint", retryable=True)])
    run_id, record = run_agent(plain, model, model_retries=3)
    assert record.status is RunStatus.COMPLETED and plain.result(run_id)["answer"] == "fine"
    failed = of_type(plain, run_id, ev.StepFailed)
    assert [f.error.message for f in failed] == ["throttled", "503 from the endpoint"]
    assert all(not f.final and f.retry_in is not None and f.retry_in > 0 for f in failed)


def test_a_model_error_that_retrying_cannot_cure_fails_the_run_at_once(plain: Baton) -> None:
    model = Flaky(ScriptedModel([say("never")]), [ModelError("the model id does not exist", retryable=False)])
    run_id, record = run_agent(plain, model, model_retries=3)
    assert record.status is RunStatus.FAILED
    assert len(of_type(plain, run_id, ev.StepFailed)) == 1
    (failed,) = of_type(plain, run_id, ev.RunFailed)
    assert "the model id does not exist" in failed.error.message


# -- plan -------------------------------------------------------------------------------


def test_the_plan_is_written_first_journaled_shown_and_kept_in_the_context(plain: Baton) -> None:
    model = ScriptedModel([say("done")], plan="1. Look the order up.\n2. Refund it.")
    run_id, _ = run_agent(plain, model, plan=True)
    first = of_type(plain, run_id, ev.StepRan)[0]
    assert first.name == "model.plan" and plain.result(run_id)["plan"] == "1. Look the order up.\n2. Refund it."
    assert model.calls[0].purpose == "plan" and model.calls[0].tools == ()
    assert "2. Refund it." in model.calls[1].system
    renderer = TimelineRenderer()
    lines = [line for e in plain.events(run_id) if (line := renderer.line(e))]
    assert any("plan: 1. Look the order up. 2. Refund it." in line for line in lines)
    assert any('answers: "done"' in line for line in lines)


# -- governance -------------------------------------------------------------------------


def test_a_refusal_by_policy_goes_back_to_the_model_and_the_call_never_runs(governed: Baton,
                                                                          services: Path) -> None:
    run_id = governed.start(app("compromised_agent"), goal="Handle ticket T-4321", principal="alice")
    record = governed.drive(run_id)
    assert record.status is RunStatus.COMPLETED, record
    # The injected instruction was obeyed by the model and stopped by policy.
    (decided,) = [d for d in of_type(governed, run_id, ev.PolicyDecided) if d.tool == "wire_money"]
    assert decided.effect == "deny" and decided.policies == ["agents-never-wire-money"]
    assert [name for _, name, _ in invocations(services, "tool")] == ["read_ticket"]
    with closing(sqlite3.connect(services)) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (0,)
    answer = governed.result(run_id)["answer"]
    assert answer.startswith("I could not wire the money") and "refused by policy" in answer


def test_an_approval_mid_loop_pauses_the_run_and_the_grant_becomes_a_fact(governed: Baton,
                                                                        services: Path) -> None:
    run_id = governed.start(app("refund_agent"), goal="Refund order 98765 in full", principal="alice")
    record = governed.drive(run_id)
    assert record.status is RunStatus.WAITING and record.waiting_for == "approval"
    (request,) = governed.approvals()
    assert request.tool == "issue_refund" and request.args == {"order_id": "98765", "amount": 120.0}
    models_before = invocations(services, "model")
    governed.decide(request.approval_id, principal="bob", approve=True, reason="customer verified")
    record = governed.drive(run_id)
    assert record.status is RunStatus.COMPLETED
    result = governed.result(run_id)
    assert [(f["kind"], f["tool"]) for f in result["facts"]] == [("approval", "issue_refund"),
                                                                ("tool", "issue_refund")]
    assert result["facts"][0]["by"] == "bob"
    # Resuming asked the model only for the turn after the refund: turns 1-2 came from the journal.
    assert invocations(services, "model")[len(models_before):] == [("model", "turn", "3")]
    assert [name for _, name, _ in invocations(services, "tool")] == ["lookup_order", "issue_refund"]


def test_a_declined_approval_goes_back_to_the_model(governed: Baton, services: Path) -> None:
    run_id = governed.start(app("refund_agent"), goal="Refund order 98765 in full", principal="alice")
    governed.drive(run_id)
    (request,) = governed.approvals()
    governed.decide(request.approval_id, principal="bob", approve=False, reason="not eligible")
    record = governed.drive(run_id)
    assert record.status is RunStatus.COMPLETED
    asked = app("refund_agent").agent.model.calls[-1]
    (shown,) = asked.messages[-1].tool_results
    assert asked.turn == 3 and shown.is_error
    assert "a person declined this call" in shown.content and "not eligible" in shown.content
    assert [name for _, name, _ in invocations(services, "tool")] == ["lookup_order"]


# -- memory -----------------------------------------------------------------------------


def test_an_agent_remembers_for_a_later_run_and_what_it_wrote_is_untrusted(governed: Baton) -> None:
    writer = ScriptedModel([call("remember", text="Order 98765: the customer prefers store credit"), say("noted")])
    reader = ScriptedModel([
        call("recall", query="store credit preference", limit=3),
        lambda r: say(f"found: {last_results(r)['recall']}"),
    ])
    first = agent("helper", instructions="Take notes.", model=writer, tools=[lookup], memory="tenant")
    assert governed.run(first, goal="Note the preference", principal="alice").status is RunStatus.COMPLETED
    second = agent("helper", instructions="Use your notes.", model=reader, tools=[lookup], memory="tenant")
    record = governed.run(second, goal="What does the customer of 98765 prefer?", principal="bob")
    assert record.status is RunStatus.COMPLETED
    (found,) = reader.calls[1].messages[-1].tool_results[0].content  # type: ignore[misc]
    assert found["text"] == "Order 98765: the customer prefers store credit"
    assert found["trusted"] is False and found["source"] == "agent"
    assert {s.name for s in writer.calls[0].tools} >= {"remember", "recall"}


def test_memory_tools_with_bad_arguments_go_back_to_the_model(plain: Baton) -> None:
    model = ScriptedModel([call("remember", text=""), call("recall", query="x", limit=500), say("ok")])
    wf = agent("helper", instructions="Take notes.", model=model, tools=[lookup], memory="tenant")
    record = plain.run(wf, goal="Note nothing")
    assert record.status is RunStatus.COMPLETED
    assert "invalid arguments for remember" in model.calls[1].messages[-1].tool_results[0].content
    assert "invalid arguments for recall" in model.calls[2].messages[-1].tool_results[0].content


# -- ctx.llm and resources --------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_ctx_llm_is_one_journaled_model_call_that_replay_does_not_repeat(tmp_path: Path, is_async: bool) -> None:
    model = ScriptedModel([say("The customer is upset about a late parcel.")])
    if is_async:
        @workflow
        async def triage(ctx: Context, text: str) -> str:
            answer = await ctx.llm(model, f"Summarise: {text}", system="Be brief.")
            await ctx.wait_for("go")
            return str(answer.text)
    else:
        @workflow
        def triage(ctx: Context, text: str) -> str:
            answer = ctx.llm(model, f"Summarise: {text}", system="Be brief.")
            ctx.wait_for("go")
            return str(answer.text)

    with Baton(make_settings(tmp_path)) as b:
        run_id = b.start(triage, text="Where is my parcel?!")
        assert b.drive(run_id).status is RunStatus.WAITING
        b.signal(run_id, "go")
        record = b.drive(run_id)  # replays the llm step from the journal
        assert record.status is RunStatus.COMPLETED
        assert b.result(run_id) == "The customer is upset about a late parcel."
        (step,) = [e for e in of_type(b, run_id, ev.StepRan) if e.name == "llm"]
        lines = [line for e in b.events(run_id) if (line := TimelineRenderer().line(e))]
    assert len(model.calls) == 1 and model.calls[0].system == "Be brief."
    assert step.args["request_sha256"] and any("llm: answers" in line for line in lines)


def order_resource(order_id: str) -> tuple[str, str]:
    if not order_id.isdigit():
        raise ValueError(f"{order_id!r} is not an order number")
    return "Order", order_id


@tool(idempotent=True, resource=order_resource)
def cancel_order(order_id: str) -> str:
    """Cancel an order."""
    return f"cancelled {order_id}"


def test_arguments_that_cannot_name_the_resource_go_back_to_the_model(governed: Baton) -> None:
    model = ScriptedModel([call("cancel_order", order_id="my latest order"), call("cancel_order", order_id="98765"),
                           say("done")])
    wf = agent("helper", instructions="Cancel orders.", model=model, tools=[cancel_order])
    record = governed.run(wf, goal="Cancel my latest order", principal="alice")
    assert record.status is RunStatus.COMPLETED, record
    (shown,) = model.calls[1].messages[-1].tool_results
    assert shown.is_error and "cannot be named" in shown.content and "not an order number" in shown.content
    assert [e.name for e in of_type(governed, record.run_id, ev.StepRan)] == ["model", "model", "cancel_order",
                                                                               "model"]


@tool(idempotent=True)
def find_account(email: str) -> str:
    """Find an account by e-mail."""
    raise LookupError(f"no account for {email}")


def test_a_failure_is_told_to_the_model_as_recorded_so_a_resumed_run_rebuilds_the_same_context(
        plain: Baton) -> None:
    """Error text is stored redacted; the live run must be told that same text, or a resumed
    run would rebuild another context (and could summarise at another turn)."""
    model = ScriptedModel([call("find_account", email="dana@example.com"), say("not found")])
    wf = agent("helper", instructions="Find accounts.", model=model, tools=[find_account])
    record = plain.run(wf, goal="Find Dana")
    assert record.status is RunStatus.COMPLETED
    (told,) = model.calls[1].messages[-1].tool_results
    (failed,) = of_type(plain, record.run_id, ev.StepFailed)
    assert "dana@example.com" not in told.content and "‹email›" in told.content
    assert failed.error.message in told.content


@tool(idempotent=True, sensitive=["diagnoses"])
def update_employee(employee_id: str, salary: Annotated[float, Sensitive]) -> dict[str, Any]:
    """Update an employee's record."""
    return {"employee_id": employee_id, "diagnoses": ["diabetes"]}


@tool(idempotent=True, resource="Order::{order_id}")
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order (held for a manager over $100)."""
    return f"T-{order_id}"


def test_what_a_tool_declares_sensitive_stays_sealed_in_the_model_steps_facts_and_evidence(
        governed: Baton, tmp_path: Path) -> None:
    model = ScriptedModel([call("update_employee", employee_id="E1", salary=185000.0),
                           call("issue_refund", order_id="7", amount=150.0), say("done")])
    wf = agent("helper", instructions="HR and refunds.", model=model, tools=[update_employee, issue_refund])
    run_id = governed.start(wf, goal="Update E1 and refund order 7", principal="alice")
    assert governed.drive(run_id).waiting_for == "approval"
    (request,) = governed.approvals()
    governed.decide(request.approval_id, principal="bob", approve=True, reason="ok")
    assert governed.drive(run_id).status is RunStatus.COMPLETED
    assert "185000" in model.calls[1].system and "diabetes" in model.calls[1].system  # the model saw them
    assert request.evidence["facts"][0]["args"]["salary"] == "‹sensitive›"
    assert governed.result(run_id)["facts"][0]["result"]["diagnoses"] == "‹sensitive›"
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    stored = (tmp_path / "b.db").read_bytes()
    assert b"185000" not in stored and b"diabetes" not in stored


@pytest.mark.parametrize(("options", "message"), [
    ({"model": "openai:gpt-4o-mini"}, "model must be a model object"),
    ({"pin": ["lokup"]}, "pin names lokup, which is not one of its tools"),
    ({"memory": "team"}, "memory namespace 'team' is not one of"),
])
def test_a_mistake_in_an_agents_declaration_is_one_clear_error_at_once(options: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"model": ScriptedModel([say("hi")]), "tools": [lookup, refund], **options}
    with pytest.raises(UsageError, match=message):
        agent("helper", instructions="Help.", **kwargs)


def test_memory_the_model_cannot_write_goes_back_to_it_as_an_error(plain: Baton) -> None:
    told = []
    for namespace, first in (("tenant", call("remember", text="bad \x00 byte")),
                             ("principal", call("recall", query="anything"))):
        model = ScriptedModel([first, say("ok")])
        wf = agent("helper", instructions="Take notes.", model=model, tools=[lookup], memory=namespace)
        record = plain.run(wf, goal="Note things")  # a run without a principal: no principal memory
        assert record.status is RunStatus.COMPLETED, record
        told.append(model.calls[1].messages[-1].tool_results[0])
    assert all(t.is_error for t in told)
    assert "NUL" in told[0].content and "has none" in told[1].content


@pytest.mark.parametrize(("stop", "expected"), [("max_tokens", "cut_off"), ("content_filtered", "content_filtered")])
def test_a_reply_the_model_did_not_finish_is_not_taken_for_an_answer(plain: Baton, stop: str, expected: str) -> None:
    inner = ScriptedModel([say("Let me first check the order and then I will call issue_ref")])

    class Cut:
        name = "cut:test"

        def complete(self, request: ModelRequest) -> ModelResponse:
            return inner.complete(request).model_copy(update={"stop_reason": stop})

    run_id, record = run_agent(plain, Cut())
    result = plain.result(run_id)
    assert record.status is RunStatus.COMPLETED and result["stop_reason"] == expected
