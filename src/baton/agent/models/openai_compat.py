"""Models behind any OpenAI-compatible chat-completions endpoint: OpenAI itself, vLLM,
Ollama, LM Studio.

The official ``openai`` client does the HTTP; this module only translates between
Baton's provider-neutral messages and the chat-completions wire format, and turns the
client's exceptions into :class:`~baton.agent.models.ModelError` with ``retryable`` set.
The client never retries on its own (``max_retries=0``): Baton retries model calls as
journaled steps with backoff, and a hidden second attempt would be neither journaled
nor counted against the run's budget.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion

from ..messages import (
    Message,
    ModelRequest,
    ModelResponse,
    Part,
    Pricing,
    StopReason,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolResult,
)
from . import ModelError

_DEFAULT_HOST = "api.openai.com"

# Local servers (Ollama, vLLM, LM Studio) ignore the key, but the client refuses to start
# without one.
_PLACEHOLDER_KEY = "no-key"

_JSON_KINDS: dict[type, str] = {list: "an array", str: "a string", int: "a number", float: "a number",
                                 bool: "a boolean", type(None): "null"}

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "content_filtered",
}


class OpenAIModel:
    """A model served over the OpenAI chat-completions API.

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``;
    with a base URL and no key a placeholder key is sent, as local servers need none::

        OpenAIModel("llama3.1", base_url="http://localhost:11434/v1")   # Ollama
        OpenAIModel("gpt-4o-mini", pricing=Pricing(input_per_million=0.15, output_per_million=0.6))

    The client is made on the first call, so a model can be named (to replay a run, or
    to show it) where no credentials are set.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Any | None = None,
        pricing: Pricing | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._model = model
        self._base_url = base_url
        self._api_key = api_key
        self._client = client
        self._pricing = pricing
        self._timeout = timeout
        # ``max_tokens`` is what every compatible server accepts; OpenAI's reasoning
        # models refuse it and want ``max_completion_tokens``, which we switch to once
        # a server says so.
        self._tokens_field = "max_tokens"

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    def complete(self, request: ModelRequest) -> ModelResponse:
        client = self._get_client()
        params = _request_params(request)
        try:
            try:
                completion = self._create(client, params, request.max_tokens)
            except openai.BadRequestError as e:
                if e.param != "max_tokens" or self._tokens_field != "max_tokens":
                    raise
                self._tokens_field = "max_completion_tokens"
                completion = self._create(client, params, request.max_tokens)
        except openai.APIError as e:
            raise self._error(e) from e
        try:
            return self._response(completion)
        except ModelError:
            raise
        except Exception as e:  # a reply off the wire format (an HTML page, odd fields)
            raise ModelError(f"model {self.name} at {self._host()} answered in a form Baton cannot read: "
                             f"{type(e).__name__}: {e}"[:1000], retryable=False) from e

    def _create(self, client: Any, params: dict[str, Any], max_tokens: int) -> ChatCompletion:
        result: ChatCompletion = client.chat.completions.create(
            model=self._model, **params, **{self._tokens_field: max_tokens}
        )
        return result

    def _get_client(self) -> Any:
        if self._client is None:
            base_url = self._base_url or os.environ.get("OPENAI_BASE_URL") or None
            api_key = self._api_key or os.environ.get("OPENAI_API_KEY") or None
            if api_key is None:
                if base_url is None:
                    raise ModelError(f"model {self.name} has no API key: set OPENAI_API_KEY "
                                     "(or OPENAI_BASE_URL for a local server)", retryable=False)
                api_key = _PLACEHOLDER_KEY
            self._base_url, self._api_key = base_url, api_key
            self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=self._timeout, max_retries=0)
        return self._client

    def _host(self) -> str:
        url = self._base_url or str(getattr(self._client, "base_url", "") or "")
        return urlsplit(url).netloc or _DEFAULT_HOST

    def _error(self, e: openai.APIError) -> ModelError:
        """One line naming the model and the host, with the server's own words, and
        whether trying again may help."""
        if isinstance(e, openai.APITimeoutError):
            what, retryable = f"no answer within {self._timeout:g}s", True
        elif isinstance(e, openai.APIConnectionError):
            what, retryable = f"cannot connect ({e.message})", True
        elif isinstance(e, openai.APIStatusError):
            status = e.status_code
            what = f"HTTP {status}: {_server_message(e)}"
            retryable = status >= 500 or status in (408, 409, 429)
        else:  # a reply the client could not read
            what, retryable = e.message, False
        message = " ".join(f"model {self.name} at {self._host()}: {what}".split())
        key = self._api_key or getattr(self._client, "api_key", None)
        if isinstance(key, str) and key and key != _PLACEHOLDER_KEY:  # servers may echo a wrong key back
            message = message.replace(key, "***")
        return ModelError(message[:1000], retryable=retryable)

    def _response(self, completion: ChatCompletion) -> ModelResponse:
        if not completion.choices:
            raise ModelError(f"model {self.name} at {self._host()} answered with no choices", retryable=False)
        choice = completion.choices[0]
        parts: list[Part] = []
        text = choice.message.content or choice.message.refusal
        if text:
            parts.append(TextPart(text=text))
        for call in choice.message.tool_calls or ():
            if call.type == "function":
                parts.append(_tool_call(call.id, call.function.name, call.function.arguments))
            else:  # a custom tool call; Baton only declares function tools
                parts.append(ToolCall(id=call.id, name=call.custom.name, args=call.custom.input,
                                      error="arguments are not a JSON object: a custom (free-text) tool call"))
        usage = TokenUsage(
            input_tokens=(completion.usage.prompt_tokens or 0) if completion.usage else 0,
            output_tokens=(completion.usage.completion_tokens or 0) if completion.usage else 0,
        )
        return ModelResponse(
            message=Message(role="assistant", content=tuple(parts)),
            usage=usage,
            stop_reason=_STOP_REASONS.get(str(choice.finish_reason), "other"),
            model=completion.model or self._model,
            cost=self._pricing.cost(usage) if self._pricing else 0.0,
        )


def _request_params(request: ModelRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        messages.extend(_wire_messages(message))
    params: dict[str, Any] = {"messages": messages}
    if request.tools:
        params["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in request.tools
        ]
    if request.temperature is not None:
        params["temperature"] = request.temperature
    return params


def _wire_messages(message: Message) -> list[dict[str, Any]]:
    if message.role == "assistant":
        wire: dict[str, Any] = {"role": "assistant", "content": message.text or None}
        if message.tool_calls:  # an empty list is refused
            # Always valid JSON, even for arguments that did not parse: some servers
            # (vLLM) parse the history's arguments and would refuse every later turn.
            wire["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.args)}}
                for c in message.tool_calls
            ]
        return [wire]
    # Tool messages must follow the assistant's tool calls directly, so they come before
    # any text the same user message carries.
    out = [_tool_message(r) for r in message.tool_results]
    if message.text:
        out.append({"role": "user", "content": message.text})
    return out


def _tool_message(result: ToolResult) -> dict[str, Any]:
    content = result.content if isinstance(result.content, str) else json.dumps(result.content, ensure_ascii=False)
    if result.is_error:  # the wire format has no error flag, so the text must say it
        content = f"error: {content}"
    return {"role": "tool", "tool_call_id": result.id, "content": content}


def _tool_call(call_id: str, name: str, arguments: Any) -> ToolCall:
    """A tool call whose arguments did not parse to an object still becomes a call, with
    ``error`` set, so that Baton hands the problem back to the model instead of failing."""
    if isinstance(arguments, dict):  # some servers (Ollama) send an object, not its JSON
        return ToolCall(id=call_id, name=name, args=arguments)
    if arguments is None or not str(arguments).strip():  # "" or null for a tool without parameters
        return ToolCall(id=call_id, name=name, args={})
    arguments = str(arguments)
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError as e:
        return ToolCall(id=call_id, name=name, args=arguments, error=f"arguments are not a JSON object: {e}")
    if not isinstance(args, dict):
        kind = _JSON_KINDS.get(type(args), type(args).__name__)
        return ToolCall(id=call_id, name=name, args=arguments, error=f"arguments are not a JSON object: got {kind}")
    return ToolCall(id=call_id, name=name, args=args)


def _server_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])
    if isinstance(body, str) and body:
        return body
    return e.message


__all__ = ["OpenAIModel"]
