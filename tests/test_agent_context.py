"""The context builder: facts survive any amount of summarisation, the token budget
holds, and what had to be cut is said."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.agent import ContextBudget, Fact, Message, ModelRequest, ToolCall, ToolResult
from baton.agent.context import ContextBuilder, Transcript, Turn
from baton.agent.messages import TextPart, ToolSpec
from baton.cli.render import model_line
from baton.errors import UsageError

TOOLS = (ToolSpec(name="record", description="Record a step.",
                  parameters={"type": "object", "properties": {"n": {"type": "integer"}}}),)


def turn(number: int, results: list[str]) -> Turn:
    calls = tuple(ToolCall(id=f"c{number}_{i}", name="record", args={"n": number}) for i in range(len(results)))
    said = Message(role="assistant", content=(TextPart(text=f"turn {number}"), *calls))
    if not results:
        return Turn(number, said)
    answers = tuple(ToolResult(id=c.id, content={"n": number, "log": text}) for c, text in zip(calls, results,
                                                                                               strict=True))
    return Turn(number, said, Message(role="user", content=answers))


class Summariser:
    """Stands in for the journaled model call: records what it was asked."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.asked: list[ModelRequest] = []

    def __call__(self, request: ModelRequest) -> str:
        self.asked.append(request)
        return ("summary " * self.length)[: self.length]


def check_shape(request: ModelRequest) -> None:
    roles = [m.role for m in request.messages]
    assert roles[0] == "user" and all(a != b for a, b in pairwise(roles)), roles
    for said, answered in pairwise(request.messages):
        if said.role == "assistant" and said.tool_calls:  # every call is answered, in the next message
            assert [c.id for c in said.tool_calls] == [r.id for r in answered.tool_results]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 3000), min_size=1, max_size=3), max_size=40),
    facts=st.integers(0, 12),
    budget=st.integers(1500, 6000),
    summary_length=st.integers(0, 5000),
)
def test_facts_are_never_summarised_away_and_the_budget_holds(sizes: list[list[int]], facts: int, budget: int,
                                                              summary_length: int) -> None:
    context = ContextBudget(max_tokens=budget, summary_tokens=300)
    builder = ContextBuilder(context, TOOLS)
    t = Transcript(instructions="Record the steps.", goal="Record everything.")
    for i in range(facts):
        t.pin(Fact(step=i, kind="tool", tool="refund", args={"order": f"O-{i}"}, result={"txn": f"TX-{i:04d}"}))
    summarise = Summariser(summary_length)
    covered = 0
    for number, results in enumerate(sizes, start=1):
        t.turns.append(turn(number, ["x" * n for n in results]))
        request, report = builder.build(t, number + 1, summarise)
        for fact in t.facts:  # every fact, in full, in every request
            assert fact.line() in request.system
        assert report.tokens <= budget, report
        assert report.turns_in_full + report.turns_summarised == len(t.turns) and report.turns_in_full >= 1
        assert t.summarised >= covered  # a summary only ever grows to cover more turns
        covered = t.summarised
        check_shape(request)
    for asked in summarise.asked:
        assert asked.purpose == "summary" and asked.tools == ()


def test_two_hundred_turns_later_the_refund_is_still_a_fact() -> None:
    builder = ContextBuilder(ContextBudget(max_tokens=2000, summary_tokens=200), TOOLS)
    t = Transcript(instructions="Handle the customer.", goal="Refund order 98765 once.")
    t.pin(Fact(step=4, kind="tool", tool="issue_refund", args={"order_id": "98765", "amount": 120.0},
               result={"txn_id": "TX-42"}))
    summarise = Summariser(600)
    for number in range(1, 201):
        t.turns.append(turn(number, ["chatter " * 40]))
        request, report = builder.build(t, number + 1, summarise)
    assert '"txn_id": "TX-42"' in request.system and "Never redo" in request.system
    assert report.turns_summarised > 180 and len(summarise.asked) > 10
    # A summary is asked of the previous summary plus the turns it now folds in.
    assert summarise.asked[-1].messages[0].text.startswith("Summary so far:")


def test_a_result_too_large_for_the_budget_is_cut_and_the_cut_is_reported() -> None:
    builder = ContextBuilder(ContextBudget(max_tokens=1000, summary_tokens=100), TOOLS)
    t = Transcript(instructions="Read logs.", goal="Find the error.")
    t.turns.append(turn(1, ["E" * 20_000]))
    request, report = builder.build(t, 2, Summariser(10))
    assert report.tokens <= 1000
    (cut,) = report.dropped
    assert cut.startswith("the result of tool call c1_0, cut to")
    (result,) = request.messages[-1].tool_results
    assert isinstance(result.content, str) and result.content.endswith("over the context budget]")
    line = model_line(5, "model", {"turn": 2, "purpose": "turn", "context": report.to_json()},
                      {"message": {"content": [{"type": "text", "text": "found it"}]},
                       "usage": {"input_tokens": 1, "output_tokens": 2}})
    assert line is not None and "cut the result of tool call c1_0" in line


def test_instructions_and_facts_that_cannot_fit_are_a_clear_error() -> None:
    builder = ContextBuilder(ContextBudget(max_tokens=300, summary_tokens=100), TOOLS)
    t = Transcript(instructions="x" * 4000, goal="g")
    with pytest.raises(UsageError, match=r"raise ContextBudget\.max_tokens"):
        builder.build(t, 1, Summariser(10))


def test_the_builder_makes_the_same_request_from_the_same_transcript() -> None:
    """Replay rebuilds the transcript from the journal; the request must come out the same."""
    def build() -> str:
        builder = ContextBuilder(ContextBudget(max_tokens=1500, summary_tokens=150), TOOLS)
        t = Transcript(instructions="Record.", goal="Record.")
        request = None
        for number in range(1, 30):
            t.turns.append(turn(number, ["y" * (number * 37 % 900)]))
            request, _ = builder.build(t, number + 1, Summariser(400))
        assert request is not None
        return json.dumps(request.model_dump(mode="json"), sort_keys=True)

    assert build() == build()


def test_a_fact_with_a_large_result_is_cut_so_it_cannot_fill_the_context() -> None:
    builder = ContextBuilder(ContextBudget(max_tokens=2000, summary_tokens=200), TOOLS)
    t = Transcript(instructions="Export reports.", goal="Export the report.")
    t.pin(Fact(step=2, kind="tool", tool="export", args={"report": "Q3"},
               result={"export_id": "EX-9", "body": "row," * 20_000}))
    request, report = builder.build(t, 2, Summariser(10))
    assert '"export_id": "EX-9"' in request.system and "characters]" in request.system
    assert report.tokens <= 2000
