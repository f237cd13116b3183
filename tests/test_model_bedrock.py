"""The Bedrock adapter, driving the real boto3 client against a local server that speaks
Bedrock Runtime's Converse wire format: ``POST /model/{modelId}/converse``, JSON bodies,
errors as an HTTP status, an ``x-amzn-ErrorType`` header and ``{"message": ...}``.

Replies are shaped after the examples in AWS's Converse documentation. The environment
points boto3 at the server and holds fake keys, so no test reads ``~/.aws`` or reaches AWS.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from botocore.config import Config

from baton.agent.messages import Message, ModelRequest, Pricing, TextPart, ToolCall, ToolResult, ToolSpec
from baton.agent.models import ModelError, model_from_spec
from baton.agent.models.bedrock import BedrockModel

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE_PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Reply:
    status: int
    body: bytes
    error_type: str | None = None
    hang: bool = False


Responder = Callable[[Seen], Reply]


@dataclass
class FakeBedrock:
    """The server's script: one responder per expected request, in order. A responder may
    assert on the request; a failed assertion is answered with a 400 ValidationException
    (the call fails) and recorded (the test fails at teardown)."""

    responders: list[Responder] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    endpoint: str = ""

    def then(self, *responders: Responder | Reply) -> None:
        for r in responders:
            self.responders.append(_always(r) if isinstance(r, Reply) else r)

    def reply_to(self, seen: Seen) -> Reply:
        self.requests.append(seen)
        if not self.responders:
            self.failures.append(f"unexpected request {seen.method} {seen.path}")
            return error(400, "ValidationException", "unexpected request")
        try:
            return self.responders.pop(0)(seen)
        except AssertionError as exc:
            self.failures.append(f"request {len(self.requests)}: {exc!r}")
            return error(400, "ValidationException", "the fake server rejected the request")


def _always(reply: Reply) -> Responder:
    return lambda _seen: reply


def answer(content: list[dict[str, Any]], *, stop: str = "end_turn", input_tokens: int = 10,
           output_tokens: int = 5) -> Reply:
    """A Converse response body, as the API reference documents it."""
    body = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens,
                  "totalTokens": input_tokens + output_tokens},
        "metrics": {"latencyMs": 412},
    }
    return Reply(200, json.dumps(body).encode())


def error(status: int, code: str, message: str) -> Reply:
    # The header carries a namespace after the code, as AWS's services send it.
    return Reply(status, json.dumps({"message": message}).encode(),
                 error_type=f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/")


HANG = Reply(200, b"", hang=True)


def _handler(fake: FakeBedrock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = fake.reply_to(Seen("POST", self.path, headers, json.loads(raw or b"{}")))
            if reply.hang:
                fake.release.wait(10)
                self.close_connection = True
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("x-amzn-RequestId", "5c1b6a5e-0a2b-4a53-8e3c-1e0f8f3b6c11")
            if reply.error_type:
                self.send_header("x-amzn-ErrorType", reply.error_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):  # profiles, tokens, regions, endpoints of the machine running the tests
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
def bedrock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeBedrock]:
    fake = FakeBedrock()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_port}"
    _aws_env(monkeypatch, tmp_path, fake.endpoint)
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
    assert not fake.failures, fake.failures
    assert not fake.responders, "the server expected more requests"


def ask(text: str = "What is the capital of France?", **kwargs: Any) -> ModelRequest:
    return ModelRequest(system=kwargs.pop("system", "Answer in one word."), messages=(Message.user(text),), **kwargs)


def test_a_text_answer_maps_usage_stop_reason_and_cost(bedrock: FakeBedrock) -> None:
    def respond(seen: Seen) -> Reply:
        assert seen.body["messages"] == [{"role": "user", "content": [{"text": "What is the capital of France?"}]}]
        assert seen.body["system"] == [{"text": "Answer in one word."}]
        assert seen.body["inferenceConfig"] == {"maxTokens": 1024, "temperature": 0.2}
        assert "toolConfig" not in seen.body
        return answer([
            {"reasoningContent": {"reasoningText": {"text": "The user asks about France.", "signature": "c2ln"}}},
            {"text": "Paris."},
        ], input_tokens=1200, output_tokens=300)

    bedrock.then(respond)
    model = BedrockModel(MODEL_ID, pricing=Pricing(input_per_million=0.25, output_per_million=1.25))
    response = model.complete(ask(temperature=0.2))

    assert response.message == Message(role="assistant", content=(TextPart(text="Paris."),))
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1200, 300)
    assert response.stop_reason == "end_turn"
    assert response.model == MODEL_ID
    assert response.cost == pytest.approx((1200 * 0.25 + 300 * 1.25) / 1e6)


def test_the_request_is_signed_and_sent_to_the_models_converse_path(bedrock: FakeBedrock) -> None:
    bedrock.then(answer([{"text": "Paris."}]))
    BedrockModel(MODEL_ID).complete(ask())

    [seen] = bedrock.requests
    assert seen.method == "POST"
    assert seen.path == CONVERSE_PATH
    assert unquote(seen.path) == f"/model/{MODEL_ID}/converse"
    assert seen.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert f"Credential={ACCESS_KEY}/" in seen.headers["authorization"]
    assert "/us-east-1/bedrock/aws4_request" in seen.headers["authorization"]
    assert SECRET_KEY not in json.dumps(seen.headers)
    assert seen.headers["content-type"] == "application/json"


def test_the_region_argument_wins_over_AWS_REGION(bedrock: FakeBedrock) -> None:
    bedrock.then(answer([{"text": "Paris."}]))
    BedrockModel(MODEL_ID, region="eu-west-3").complete(ask())
    assert "/eu-west-3/bedrock/aws4_request" in bedrock.requests[0].headers["authorization"]


STATION_SCHEMA = {
    "type": "object",
    "properties": {"sign": {"type": "string", "description": "A radio station's call sign, e.g. WZPZ."}},
    "required": ["sign"],
}
TOP_SONG = ToolSpec(name="top_song", description="Get the most popular song played on a radio station.",
                    parameters=STATION_SCHEMA)


def test_a_tool_use_round_trip_keeps_parallel_calls_in_order(bedrock: FakeBedrock) -> None:
    def first(seen: Seen) -> Reply:
        assert seen.body["system"] == [{"text": "You know the radio charts."}]
        assert seen.body["toolConfig"] == {"tools": [{"toolSpec": {
            "name": "top_song",
            "description": "Get the most popular song played on a radio station.",
            "inputSchema": {"json": STATION_SCHEMA},
        }}]}
        return answer([
            {"text": "I'll look up both stations."},
            {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}},
            {"toolUse": {"toolUseId": "tooluse_2JpSa0MNQ8SRyxXqP0vWXw", "name": "top_song", "input": {"sign": "WKRP"}}},
        ], stop="tool_use")

    def second(seen: Seen) -> Reply:
        messages = seen.body["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"] == [
            {"text": "I'll look up both stations."},
            {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}},
            {"toolUse": {"toolUseId": "tooluse_2JpSa0MNQ8SRyxXqP0vWXw", "name": "top_song", "input": {"sign": "WKRP"}}},
        ]
        assert messages[2]["content"] == [
            {"toolResult": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                            "content": [{"json": {"song": "Elemental Hotel", "artist": "8 Storey Hike"}}],
                            "status": "success"}},
            {"toolResult": {"toolUseId": "tooluse_2JpSa0MNQ8SRyxXqP0vWXw",
                            "content": [{"text": "Station WKRP is off the air."}],
                            "status": "error"}},
        ]
        assert "toolConfig" in seen.body  # Converse requires it whenever the messages hold tool blocks
        return answer([{"text": "WZPZ plays Elemental Hotel by 8 Storey Hike; WKRP is off the air."}])

    bedrock.then(first, second)
    model = BedrockModel(MODEL_ID)
    request = ModelRequest(system="You know the radio charts.", tools=(TOP_SONG,),
                           messages=(Message.user("What are the top songs on WZPZ and WKRP?"),))
    turn = model.complete(request)

    assert turn.stop_reason == "tool_use"
    assert turn.text == "I'll look up both stations."
    assert turn.tool_calls == (
        ToolCall(id="tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", name="top_song", args={"sign": "WZPZ"}),
        ToolCall(id="tooluse_2JpSa0MNQ8SRyxXqP0vWXw", name="top_song", args={"sign": "WKRP"}),
    )

    results = Message(role="user", content=(
        ToolResult(id="tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", content={"song": "Elemental Hotel", "artist": "8 Storey Hike"}),
        ToolResult(id="tooluse_2JpSa0MNQ8SRyxXqP0vWXw", content="Station WKRP is off the air.", is_error=True),
    ))
    final = model.complete(request.model_copy(update={"messages": (*request.messages, turn.message, results)}))
    assert final.stop_reason == "end_turn"
    assert final.text == "WZPZ plays Elemental Hotel by 8 Storey Hike; WKRP is off the air."
    assert final.tool_calls == ()


def test_tool_results_that_are_not_objects_are_sent_as_json_text(bedrock: FakeBedrock) -> None:
    def respond(seen: Seen) -> Reply:
        assert seen.body["messages"][2]["content"] == [
            {"toolResult": {"toolUseId": "t1", "content": [{"text": "[1, 2]"}], "status": "success"}},
            {"toolResult": {"toolUseId": "t2", "content": [{"text": "null"}], "status": "success"}},
        ]
        return answer([{"text": "Done."}])

    bedrock.then(respond)
    calls = Message(role="assistant", content=(ToolCall(id="t1", name="top_song", args={"sign": "A"}),
                                               ToolCall(id="t2", name="top_song", args={"sign": "B"})))
    results = Message(role="user", content=(ToolResult(id="t1", content=[1, 2]), ToolResult(id="t2", content=None)))
    BedrockModel(MODEL_ID).complete(ModelRequest(system="", tools=(TOP_SONG,),
                                                 messages=(Message.user("Go."), calls, results)))
    assert "system" not in bedrock.requests[0].body  # Bedrock rejects an empty system block


def test_max_tokens_given_to_the_model_replaces_the_requests(bedrock: FakeBedrock) -> None:
    def respond(seen: Seen) -> Reply:
        assert seen.body["inferenceConfig"] == {"maxTokens": 4096}
        return answer([{"text": "Paris."}])

    bedrock.then(respond)
    BedrockModel(MODEL_ID, max_tokens=4096).complete(ask())


@pytest.mark.parametrize(("wire", "expected"), [
    ("max_tokens", "max_tokens"),
    ("stop_sequence", "stop_sequence"),
    ("content_filtered", "content_filtered"),
    ("guardrail_intervened", "content_filtered"),
    ("malformed_tool_use", "other"),
    ("model_context_window_exceeded", "other"),
])
def test_stop_reasons(bedrock: FakeBedrock, wire: str, expected: str) -> None:
    bedrock.then(answer([{"text": "Par"}], stop=wire))
    response = BedrockModel(MODEL_ID).complete(ask())
    assert response.stop_reason == expected
    assert response.cost == 0.0  # no pricing, no cost


def test_throttling_is_retryable_and_botocore_does_not_retry(bedrock: FakeBedrock) -> None:
    bedrock.then(error(429, "ThrottlingException", "Too many requests, please wait before trying again."))
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID).complete(ask())
    assert err.value.retryable is True
    assert f"bedrock:{MODEL_ID}" in err.value.message
    assert "ThrottlingException" in err.value.message
    assert len(bedrock.requests) == 1  # Baton retries, journaled; botocore must not


@pytest.mark.parametrize(("status", "code"), [
    (500, "InternalServerException"),
    (503, "ServiceUnavailableException"),
    (429, "ModelNotReadyException"),
    (408, "ModelTimeoutException"),
])
def test_faults_aws_may_cure_are_retryable(bedrock: FakeBedrock, status: int, code: str) -> None:
    bedrock.then(error(status, code, "The request processing has failed because of an unknown error."))
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID).complete(ask())
    assert err.value.retryable is True
    assert code in err.value.message
    assert len(bedrock.requests) == 1


@pytest.mark.parametrize("reply", [
    Reply(502, b"<html>\n<body>502 Bad Gateway</body>\n</html>"),
    Reply(429, b'{"message": "Rate exceeded"}', error_type="TooManyRequestsException"),
], ids=["proxy-502", "unknown-429"])
def test_a_busy_or_broken_gateway_is_retryable_whatever_it_calls_the_error(bedrock: FakeBedrock, reply: Reply) -> None:
    bedrock.then(reply)
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID).complete(ask())
    assert err.value.retryable is True
    assert f"bedrock:{MODEL_ID}" in err.value.message
    assert "\n" not in err.value.message
    assert len(bedrock.requests) == 1


@pytest.mark.parametrize(("status", "code", "message"), [
    (400, "ValidationException", "The model returned the following errors: messages: text content blocks "
                                 "must be non-empty"),
    (403, "AccessDeniedException", "You don't have access to the model with the specified model ID."),
    (404, "ResourceNotFoundException", "Model not found."),
    (424, "ModelErrorException", "The model produced an invalid response."),
])
def test_a_request_aws_refuses_is_not_retryable(bedrock: FakeBedrock, status: int, code: str, message: str) -> None:
    bedrock.then(error(status, code, message))
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID).complete(ask())
    assert err.value.retryable is False
    assert err.value.message == f"bedrock:{MODEL_ID}: {code}: {message}"
    assert SECRET_KEY not in str(err.value)


def test_an_answer_that_never_comes_is_retryable(bedrock: FakeBedrock) -> None:
    bedrock.then(HANG)
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID, read_timeout=0.5).complete(ask())
    assert err.value.retryable is True
    assert "ReadTimeout" in err.value.message
    assert time.monotonic() - started < 5
    assert len(bedrock.requests) == 1  # botocore's standard mode would retry a read timeout


def test_an_endpoint_that_refuses_connections_is_retryable(
    bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID).complete(ask())
    assert err.value.retryable is True
    assert "EndpointConnectionError" in err.value.message


def test_model_from_spec_builds_a_bedrock_model_without_calling_aws(bedrock: FakeBedrock) -> None:
    model = model_from_spec(f"bedrock:{MODEL_ID}")
    assert isinstance(model, BedrockModel)
    assert model.name == f"bedrock:{MODEL_ID}"
    assert bedrock.requests == []

    bedrock.then(answer([{"text": "Paris."}]))
    assert model.complete(ask()).text == "Paris."
    assert bedrock.requests[0].path == CONVERSE_PATH


def test_no_region_is_a_one_line_error_saying_what_to_set(
    bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION")
    model = BedrockModel(MODEL_ID)  # building the model does not need a region yet
    with pytest.raises(ModelError) as err:
        model.complete(ask())
    assert err.value.retryable is False
    assert "AWS_REGION" in err.value.message
    assert f"bedrock:{MODEL_ID}" in err.value.message
    assert "\n" not in err.value.message
    assert bedrock.requests == []


def test_no_credentials_is_a_one_line_error_saying_how_to_configure(
    bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ModelError) as err:
        BedrockModel(MODEL_ID).complete(ask())
    assert err.value.retryable is False
    assert "AWS_ACCESS_KEY_ID" in err.value.message
    assert "AWS_PROFILE" in err.value.message
    assert "\n" not in err.value.message
    assert bedrock.requests == []


def test_a_client_given_to_the_model_is_used_as_is(bedrock: FakeBedrock) -> None:
    client = boto3.session.Session().client("bedrock-runtime", region_name="ap-northeast-1",
                                            config=Config(retries={"total_max_attempts": 1}))
    bedrock.then(answer([{"text": "Paris."}]))
    assert BedrockModel(MODEL_ID, client=client).complete(ask()).text == "Paris."
    assert "/ap-northeast-1/bedrock/aws4_request" in bedrock.requests[0].headers["authorization"]
