"""The agent loop through the real client libraries: boto3's Converse and the openai
client, each against a local server speaking its provider's wire format, whose "model"
reads the tool results it is sent and decides the next call from them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton import Baton, RunStatus, tool
from baton.agent import BedrockModel, OpenAIModel, agent
from baton.journal import events as ev
from engine_support import make_settings, of_type
from wire_support import Server, chat_completion

refunds: list[tuple[str, float]] = []


@tool(read_only=True, idempotent=True)
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up."""
    return {"order_id": order_id, "paid": 40.0}


@tool(idempotent=True)
def issue_refund(order_id: str, amount: float) -> dict[str, Any]:
    """Refund an order."""
    refunds.append((order_id, amount))
    return {"txn_id": f"TX-{order_id}", "amount": amount}


@pytest.fixture
def baton(tmp_path: Path) -> Iterator[Baton]:
    refunds.clear()
    with Baton(make_settings(tmp_path)) as b:
        yield b


# -- OpenAI-compatible -------------------------------------------------------------------


def openai_brain(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Look the order up, refund what was paid, then answer; throttle the first refund turn once."""
    results = {m["tool_call_id"]: json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"}

    def answer(message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, chat_completion(message, model="fake-gpt", prompt_tokens=50, completion_tokens=10)

    def calls(name: str, args: dict[str, Any], call_id: str) -> tuple[int, dict[str, Any]]:
        return answer({"content": None, "tool_calls": [{"id": call_id, "type": "function",
                                                        "function": {"name": name, "arguments": json.dumps(args)}}]})

    if "refund" in results:
        return answer({"content": f"Refunded {results['refund']['amount']} ({results['refund']['txn_id']})."})
    if "lookup" in results:
        if not openai_brain.throttled:  # type: ignore[attr-defined]
            openai_brain.throttled = True  # type: ignore[attr-defined]
            return 429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
        return calls("issue_refund", {"order_id": results["lookup"]["order_id"], "amount": results["lookup"]["paid"]},
                     "refund")
    assert [t["function"]["name"] for t in body["tools"]] == ["lookup_order", "issue_refund"]
    return calls("lookup_order", {"order_id": "98765"}, "lookup")


def test_an_agent_run_through_the_openai_client(baton: Baton) -> None:
    openai_brain.throttled = False  # type: ignore[attr-defined]
    server = Server(openai_brain)
    try:
        model = OpenAIModel("fake-gpt", base_url=f"{server.url}/v1", api_key="sk-test")
        wf = agent("wired", instructions="Refund orders.", model=model, tools=[lookup_order, issue_refund])
        record = baton.run(wf, goal="Refund order 98765")
    finally:
        server.close()
    assert record.status is RunStatus.COMPLETED, record
    result = baton.result(record.run_id)
    assert result["answer"] == "Refunded 40.0 (TX-98765)." and refunds == [("98765", 40.0)]
    assert result["tokens"] == 3 * 60
    (throttled,) = of_type(baton, record.run_id, ev.StepFailed)
    assert not throttled.final and "429" in throttled.error.message  # retried as a journaled step
    assert len(server.bodies) == 4


# -- Amazon Bedrock ------------------------------------------------------------------------


def bedrock_brain(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    results: dict[str, Any] = {}
    for message in body["messages"]:
        for block in message["content"]:
            if "toolResult" in block:
                results[block["toolResult"]["toolUseId"]] = block["toolResult"]["content"][0]["json"]

    def answer(content: list[dict[str, Any]], stop: str) -> tuple[int, dict[str, Any]]:
        return 200, {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                     "usage": {"inputTokens": 70, "outputTokens": 5, "totalTokens": 75}, "metrics": {"latencyMs": 9}}

    if "refund" in results:
        return answer([{"text": f"Refunded {results['refund']['amount']} ({results['refund']['txn_id']})."}],
                      "end_turn")
    if "lookup" in results:
        order = results["lookup"]
        return answer([{"text": "Refunding what was paid."},
                       {"toolUse": {"toolUseId": "refund", "name": "issue_refund",
                                    "input": {"order_id": order["order_id"], "amount": order["paid"]}}}], "tool_use")
    specs = [t["toolSpec"]["name"] for t in body["toolConfig"]["tools"]]
    assert specs == ["lookup_order", "issue_refund"] and body["system"][0]["text"].startswith("Refund orders.")
    return answer([{"toolUse": {"toolUseId": "lookup", "name": "lookup_order", "input": {"order_id": "98765"}}}],
                  "tool_use")


def test_an_agent_run_through_boto3_converse(baton: Baton, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = Server(bedrock_brain)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    try:
        wf = agent("wired", instructions="Refund orders.", model=BedrockModel("anthropic.claude-3-haiku-20240307-v1:0"),
                   tools=[lookup_order, issue_refund])
        record = baton.run(wf, goal="Refund order 98765")
    finally:
        server.close()
    assert record.status is RunStatus.COMPLETED, record
    result = baton.result(record.run_id)
    assert result["answer"] == "Refunded 40.0 (TX-98765)." and refunds == [("98765", 40.0)]
    assert result["tokens"] == 3 * 75 and len(server.bodies) == 3
    # The second request carried the lookup's result back, paired with its call.
    second = server.bodies[1]["messages"]
    assert second[-2]["content"][0]["toolUse"]["toolUseId"] == "lookup"
    assert second[-1]["content"][0]["toolResult"]["toolUseId"] == "lookup"
