"""The OpenAI-compatible adapter against a local server that speaks the chat-completions
wire format, through the real ``openai`` client: what goes over the wire, what comes
back, and which failures Baton may retry."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from baton.agent.messages import (
    Message,
    ModelRequest,
    Pricing,
    TextPart,
    ToolCall,
    ToolResult,
    ToolSpec,
)
from baton.agent.models import ModelError, model_from_spec
from baton.agent.models.openai_compat import OpenAIModel

KEY = "sk-test-0123456789abcdef"


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeEndpoint:
    """A chat-completions server: answers each POST with the next scripted reply and
    keeps every request it saw."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw)))
                reply = endpoint.replies.pop(0) if endpoint.replies else Reply(500, _error("no reply scripted"))
                if reply.delay:
                    endpoint.release.wait(reply.delay)
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def model(self, **kwargs: Any) -> OpenAIModel:
        kwargs.setdefault("base_url", self.base_url)
        kwargs.setdefault("api_key", KEY)
        return OpenAIModel("test-model", **kwargs)


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint()
    fake.thread.start()
    yield fake
    fake.release.set()
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
                 "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)


def _completion(content: str | None = None, tool_calls: Sequence[tuple[str, str, str]] = (),
                finish_reason: str = "stop", usage: tuple[int, int] | None = (12, 5)) -> dict[str, Any]:
    """A response shaped as in OpenAI's API reference."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in tool_calls]
    body: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "test-model-2024-07-18",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return body


def _error(message: str, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


WEATHER = ToolSpec(name="get_weather", description="Current weather in a city.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def _ask(text: str = "hello", **kwargs: Any) -> ModelRequest:
    return ModelRequest(system="You are terse.", messages=(Message.user(text),), **kwargs)


def test_a_plain_answer_with_usage_stop_reason_and_cost(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion("Hi there.", usage=(1000, 2000))))
    model = endpoint.model(pricing=Pricing(input_per_million=1.0, output_per_million=4.0))

    response = model.complete(_ask(temperature=0.2, max_tokens=300))

    assert response.text == "Hi there."
    assert response.tool_calls == ()
    assert response.usage.input_tokens == 1000 and response.usage.output_tokens == 2000
    assert response.stop_reason == "end_turn"
    assert response.model == "test-model-2024-07-18"
    assert response.cost == pytest.approx((1000 * 1.0 + 2000 * 4.0) / 1e6)
    assert model.name == "openai:test-model"

    [seen] = endpoint.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["model"] == "test-model"
    assert seen.body["messages"] == [{"role": "system", "content": "You are terse."},
                                     {"role": "user", "content": "hello"}]
    assert seen.body["max_tokens"] == 300 and seen.body["temperature"] == 0.2
    assert "tools" not in seen.body and "max_completion_tokens" not in seen.body


def test_no_system_message_no_temperature_no_usage_and_no_pricing(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion("ok", finish_reason="length", usage=None)))
    response = endpoint.model().complete(ModelRequest(system="", messages=(Message.user("hi"),)))

    assert response.usage.input_tokens == 0 and response.usage.output_tokens == 0
    assert response.cost == 0.0
    assert response.stop_reason == "max_tokens"
    body = endpoint.seen[0].body
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "temperature" not in body


def test_two_parallel_tool_calls_and_the_follow_up_turn(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion(
        "Checking both.",
        tool_calls=[("call_b", "get_weather", '{"city": "Paris"}'), ("call_a", "get_weather", '{"city": "Oslo"}')],
        finish_reason="tool_calls")))
    endpoint.replies.append(Reply(body=_completion("Paris is warmer.")))
    model = endpoint.model()
    first = _ask("Paris or Oslo?", tools=(WEATHER,))

    response = model.complete(first)

    assert response.stop_reason == "tool_use"
    assert response.text == "Checking both."
    assert response.tool_calls == (ToolCall(id="call_b", name="get_weather", args={"city": "Paris"}),
                                   ToolCall(id="call_a", name="get_weather", args={"city": "Oslo"}))
    assert endpoint.seen[0].body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER.parameters}}]

    results = Message(role="user", content=(
        ToolResult(id="call_b", content={"celsius": 21}),
        ToolResult(id="call_a", content="station offline", is_error=True),
        TextPart(text="Answer in one line."),
    ))
    follow_up = first.model_copy(update={"messages": (*first.messages, response.message, results)})
    assert model.complete(follow_up).text == "Paris is warmer."

    sent = endpoint.seen[1]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["tools"] == endpoint.seen[0].body["tools"]
    assistant, tool_b, tool_a, user = sent.body["messages"][2:]
    assert assistant == {"role": "assistant", "content": "Checking both.", "tool_calls": [
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
    ]}
    assert tool_b == {"role": "tool", "tool_call_id": "call_b", "content": '{"celsius": 21}'}
    assert tool_a == {"role": "tool", "tool_call_id": "call_a", "content": "error: station offline"}
    assert user == {"role": "user", "content": "Answer in one line."}


def test_an_assistant_turn_with_only_tool_calls_sends_null_content(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion("done")))
    call = ToolCall(id="c1", name="get_weather", args={"city": "Rome"})
    history = (Message.user("Rome?"), Message(role="assistant", content=(call,)),
               Message(role="user", content=(ToolResult(id="c1", content=[1, 2]),)))
    endpoint.model().complete(ModelRequest(system="s", messages=history, tools=(WEATHER,)))

    messages = endpoint.seen[0].body["messages"]
    assert messages[2]["content"] is None and messages[2]["tool_calls"][0]["id"] == "c1"
    assert messages[3:] == [{"role": "tool", "tool_call_id": "c1", "content": "[1, 2]"}]


@pytest.mark.parametrize(("arguments", "detail"), [
    ('{"city": "Par', "arguments are not a JSON object: "),
    ('["Paris"]', "arguments are not a JSON object: got an array"),
])
def test_malformed_arguments_become_a_call_with_an_error(endpoint: FakeEndpoint, arguments: str, detail: str) -> None:
    endpoint.replies.append(Reply(body=_completion(
        None, tool_calls=[("c1", "get_weather", arguments), ("c2", "get_weather", '{"city": "Oslo"}')],
        finish_reason="tool_calls")))
    endpoint.replies.append(Reply(body=_completion("ok")))
    model = endpoint.model()

    response = model.complete(_ask(tools=(WEATHER,)))

    bad, good = response.tool_calls
    assert (bad.id, bad.name, bad.args) == ("c1", "get_weather", arguments)
    assert bad.error is not None and bad.error.startswith(detail)
    assert good.error is None and good.args == {"city": "Oslo"}
    assert response.text == ""

    # Sent back in the history, the bad arguments are still valid JSON (a JSON string).
    model.complete(_ask(tools=(WEATHER,)).model_copy(update={"messages": (Message.user("hello"), response.message)}))
    sent = endpoint.seen[1].body["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(sent) == arguments


def test_empty_arguments_mean_no_arguments(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion(None, tool_calls=[("c1", "now", "")], finish_reason="tool_calls")))
    [call] = endpoint.model().complete(_ask()).tool_calls
    assert call.args == {} and call.error is None


def test_arguments_sent_as_an_object_or_null_and_null_usage_are_read(endpoint: FakeEndpoint) -> None:
    """Some compatible servers (Ollama) send arguments as an object, or null, and usage counts as null."""
    body = _completion(None, tool_calls=[("c1", "lookup", ""), ("c2", "now", "")], finish_reason="tool_calls")
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {"order_id": "1"}
    body["choices"][0]["message"]["tool_calls"][1]["function"]["arguments"] = None
    body["usage"] = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    endpoint.replies.append(Reply(body=body))
    response = endpoint.model().complete(_ask())
    assert [(c.name, c.args, c.error) for c in response.tool_calls] == [("lookup", {"order_id": "1"}, None),
                                                                        ("now", {}, None)]
    assert response.usage.total == 0


def test_a_reply_off_the_wire_format_is_a_model_error_not_a_crash(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body={"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                                        "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [
                                            {"id": "c1", "type": "function", "function": {"arguments": "{}"}}]},
                                                     "finish_reason": "tool_calls"}]}))
    with pytest.raises(ModelError, match="answered in a form Baton cannot read") as caught:
        endpoint.model().complete(_ask())
    assert not caught.value.retryable


@pytest.mark.parametrize(("finish_reason", "stop_reason"), [
    ("function_call", "tool_use"), ("content_filter", "content_filtered"), ("eos", "other"),
])
def test_finish_reasons(endpoint: FakeEndpoint, finish_reason: str, stop_reason: str) -> None:
    endpoint.replies.append(Reply(body=_completion("x", finish_reason=finish_reason)))
    assert endpoint.model().complete(_ask()).stop_reason == stop_reason


def test_429_is_retryable_and_the_client_does_not_retry_by_itself(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(429, _error("Rate limit reached for requests", "requests", "rate_limit_exceeded")))
    endpoint.replies.append(Reply(body=_completion("too late")))

    with pytest.raises(ModelError) as err:
        endpoint.model().complete(_ask())

    assert err.value.retryable
    assert len(endpoint.seen) == 1
    message = str(err.value)
    assert "openai:test-model" in message and "127.0.0.1" in message and "HTTP 429" in message
    assert "Rate limit reached" in message


@pytest.mark.parametrize("status", [500, 503, 408, 409])
def test_server_errors_are_retryable(endpoint: FakeEndpoint, status: int) -> None:
    endpoint.replies.append(Reply(status, _error("The server had an error", "server_error")))
    with pytest.raises(ModelError) as err:
        endpoint.model().complete(_ask())
    assert err.value.retryable
    assert f"HTTP {status}" in str(err.value)
    assert len(endpoint.seen) == 1


def test_400_is_not_retryable_and_says_what_the_server_said(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(400, _error(
        "Invalid schema for function 'get_weather': 'strin' is not valid",
        param="tools[0].function.parameters", code="invalid_function_parameters")))
    with pytest.raises(ModelError) as err:
        endpoint.model().complete(_ask(tools=(WEATHER,)))

    assert not err.value.retryable
    message = str(err.value)
    assert "Invalid schema for function 'get_weather'" in message and "HTTP 400" in message
    assert "openai:test-model" in message and "127.0.0.1" in message
    assert "\n" not in message


@pytest.mark.parametrize("status", [403, 404, 422])
def test_other_client_errors_are_not_retryable(endpoint: FakeEndpoint, status: int) -> None:
    endpoint.replies.append(Reply(status, _error("no")))
    with pytest.raises(ModelError) as err:
        endpoint.model().complete(_ask())
    assert not err.value.retryable


def test_401_is_not_retryable_and_never_shows_the_key(endpoint: FakeEndpoint) -> None:
    # OpenAI echoes (part of) a wrong key; a compatible server may echo all of it.
    endpoint.replies.append(Reply(401, _error(f"Incorrect API key provided: {KEY}.", code="invalid_api_key")))
    with pytest.raises(ModelError) as err:
        endpoint.model().complete(_ask())

    assert not err.value.retryable
    assert KEY not in str(err.value) and KEY not in repr(err.value.to_dict())
    assert "HTTP 401" in str(err.value) and "Incorrect API key" in str(err.value)


def test_a_server_that_does_not_answer_in_time_is_retryable(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion("too late"), delay=10))
    with pytest.raises(ModelError) as err:
        endpoint.model(timeout=0.3).complete(_ask())
    assert err.value.retryable
    assert "no answer within 0.3s" in str(err.value)
    assert len(endpoint.seen) == 1


def test_a_server_that_is_not_there_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAIModel("m", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=2)
    with pytest.raises(ModelError) as err:
        model.complete(_ask())
    assert err.value.retryable
    assert f"127.0.0.1:{port}" in str(err.value)


def test_a_reasoning_model_that_refuses_max_tokens_gets_max_completion_tokens(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(400, _error(
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        param="max_tokens", code="unsupported_parameter")))
    endpoint.replies.append(Reply(body=_completion("first")))
    endpoint.replies.append(Reply(body=_completion("second")))
    model = endpoint.model()

    assert model.complete(_ask(max_tokens=50)).text == "first"
    assert model.complete(_ask(max_tokens=60)).text == "second"

    assert [s.body.get("max_tokens") for s in endpoint.seen] == [50, None, None]
    assert [s.body.get("max_completion_tokens") for s in endpoint.seen] == [None, 50, 60]


def test_a_base_url_without_a_key_sends_a_placeholder(endpoint: FakeEndpoint) -> None:
    endpoint.replies.append(Reply(body=_completion("local")))
    model = OpenAIModel("llama3.1", base_url=endpoint.base_url)
    assert model.complete(_ask()).text == "local"
    auth = endpoint.seen[0].headers["authorization"]
    assert auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def test_no_base_url_and_no_key_is_a_clear_error() -> None:
    model = OpenAIModel("gpt-4o-mini")  # naming a model needs no credentials
    with pytest.raises(ModelError) as err:
        model.complete(_ask())
    assert not err.value.retryable
    assert "OPENAI_API_KEY" in str(err.value) and "OPENAI_BASE_URL" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_environment_supplies_base_url_and_key(endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", endpoint.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    endpoint.replies.append(Reply(body=_completion("from env")))

    model = model_from_spec("openai:gpt-4o-mini")

    assert isinstance(model, OpenAIModel)
    assert model.name == "openai:gpt-4o-mini"
    assert model.complete(_ask()).text == "from env"
    assert endpoint.seen[0].headers["authorization"] == "Bearer sk-from-env"
    assert endpoint.seen[0].body["model"] == "gpt-4o-mini"


def test_an_injected_client_is_used_as_is(endpoint: FakeEndpoint) -> None:
    import openai

    endpoint.replies.append(Reply(body=_completion("injected")))
    client = openai.OpenAI(api_key="sk-injected", base_url=endpoint.base_url, max_retries=0)
    assert OpenAIModel("m", client=client).complete(_ask()).text == "injected"
    assert endpoint.seen[0].headers["authorization"] == "Bearer sk-injected"


def test_openai_base_url_alone_points_at_a_local_server(endpoint: FakeEndpoint,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", endpoint.base_url)
    endpoint.replies.append(Reply(503, _error("loading model", "server_error")))
    endpoint.replies.append(Reply(body=_completion("loaded")))
    model = OpenAIModel("qwen2.5")

    with pytest.raises(ModelError) as err:
        model.complete(_ask())
    assert err.value.retryable and endpoint.base_url.split("/")[2] in str(err.value)
    assert model.complete(_ask()).text == "loaded"
