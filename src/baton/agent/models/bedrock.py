"""Models hosted on Amazon Bedrock, through the Converse API of ``bedrock-runtime``.

Converse speaks one message format, tool use included, for every model Bedrock hosts
(Claude, Nova, Llama, Mistral, ...), so one adapter covers them all. Region and
credentials come the standard AWS way: environment, profile, SSO, instance or task role,
or a Bedrock API key in ``AWS_BEARER_TOKEN_BEDROCK``. ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``
sends calls elsewhere (a VPC endpoint, a proxy, a test server).

botocore's own retries are off: a failed call raises :class:`ModelError` with ``retryable``
set, and the agent loop retries it as a journaled step with backoff, so no attempt happens
that the journal does not know about.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
    SSOError,
    TokenRetrievalError,
)

from ..messages import (
    Message,
    ModelRequest,
    ModelResponse,
    Pricing,
    StopReason,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolResult,
    ToolSpec,
)
from . import ModelError

_CONNECT_TIMEOUT = 10.0
# botocore's 60 s default cuts off long answers from large models; a call that hangs
# still ends, as a retryable error.
_READ_TIMEOUT = 300.0

# What a later attempt may cure: capacity, a model still loading, a fault on AWS's side.
_RETRYABLE_CODES = frozenset({
    "ThrottlingException",
    "ServiceUnavailableException",
    "ModelNotReadyException",
    "ModelTimeoutException",
    "InternalServerException",
})
# The network failed, not the request: the same request may well succeed.
_RETRYABLE_TRANSPORT = (
    ConnectTimeoutError,
    ReadTimeoutError,
    EndpointConnectionError,
    ConnectionClosedError,
    ResponseStreamingError,
)
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    CredentialRetrievalError,
    TokenRetrievalError,
    SSOError,
)
_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "content_filtered": "content_filtered",
    "guardrail_intervened": "content_filtered",
}


class BedrockModel:
    """A model on Amazon Bedrock, e.g. ``BedrockModel("anthropic.claude-3-haiku-20240307-v1:0")``.

    ``client`` is a ``bedrock-runtime`` client to use instead of the one built on the first
    call. ``region`` overrides ``AWS_REGION``. ``pricing`` turns token usage into
    ``ModelResponse.cost`` for spend budgets. ``max_tokens``, when set, replaces the
    request's limit on the length of each answer. ``read_timeout`` is how many seconds an
    answer may take before the call fails (retryably).
    """

    def __init__(
        self,
        model_id: str,
        *,
        client: Any | None = None,
        region: str | None = None,
        pricing: Pricing | None = None,
        max_tokens: int | None = None,
        read_timeout: float = _READ_TIMEOUT,
    ) -> None:
        self.model_id = model_id
        self.pricing = pricing
        self.max_tokens = max_tokens
        self._region = region
        self._read_timeout = read_timeout
        self._client = client
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"bedrock:{self.model_id}"

    def __repr__(self) -> str:
        return f"BedrockModel({self.model_id!r})"

    def complete(self, request: ModelRequest) -> ModelResponse:
        """Send ``request`` to Converse; raise :class:`ModelError` if the call fails."""
        args = _converse_args(request, max_tokens=self.max_tokens)
        try:
            raw = self._get_client().converse(modelId=self.model_id, **args)
        except ClientError as exc:
            raise self._client_error(exc) from exc
        except BotoCoreError as exc:
            raise self._botocore_error(exc) from exc
        return self._response(raw)

    def _get_client(self) -> Any:
        # Built on first use, not in __init__: building reads the environment and config
        # files, and an agent that is only replayed from its journal never needs one.
        with self._lock:
            if self._client is None:
                # A session of our own: boto3's default session is shared and not thread-safe.
                # botocore reads AWS_DEFAULT_REGION but not AWS_REGION, which other AWS SDKs and
                # the AWS CLI honour first; read it here so both work.
                session = boto3.session.Session()
                self._client = session.client(
                    "bedrock-runtime",
                    region_name=self._region or os.environ.get("AWS_REGION") or None,
                    config=Config(
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        connect_timeout=_CONNECT_TIMEOUT,
                        read_timeout=self._read_timeout,
                    ),
                )
            return self._client

    def _response(self, raw: Mapping[str, Any]) -> ModelResponse:
        message = raw.get("output", {}).get("message", {})
        parts = [part for block in message.get("content", ()) if (part := _part(block)) is not None]
        reported = raw.get("usage", {})
        usage = TokenUsage(
            input_tokens=int(reported.get("inputTokens", 0)),
            output_tokens=int(reported.get("outputTokens", 0)),
        )
        return ModelResponse(
            message=Message(role="assistant", content=tuple(parts)),
            usage=usage,
            stop_reason=_STOP_REASONS.get(str(raw.get("stopReason")), "other"),
            model=self.model_id,
            cost=self.pricing.cost(usage) if self.pricing is not None else 0.0,
        )

    def _client_error(self, exc: Any) -> ModelError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "UnknownError")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retryable = code in _RETRYABLE_CODES or status >= 500 or status == 429
        detail = error.get("Message") or f"HTTP {status}"
        return ModelError(_one_line(f"{self.name}: {code}: {detail}"), retryable=retryable)

    def _botocore_error(self, exc: Any) -> ModelError:
        if isinstance(exc, NoRegionError):
            return ModelError(f"{self.name}: no AWS region is configured; set AWS_REGION (e.g. us-east-1) "
                              "or a region in your AWS profile", retryable=False)
        if isinstance(exc, _CREDENTIAL_ERRORS):
            return ModelError(_one_line(f"{self.name}: AWS credentials are missing or unusable ({exc}); set "
                                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                                        "AWS_BEARER_TOKEN_BEDROCK, or run `aws sso login`"), retryable=False)
        retryable = isinstance(exc, _RETRYABLE_TRANSPORT)
        return ModelError(_one_line(f"{self.name}: {type(exc).__name__}: {exc}"), retryable=retryable)


def _converse_args(request: ModelRequest, *, max_tokens: int | None = None) -> dict[str, Any]:
    """The arguments of ``converse`` for ``request``, all but ``modelId``."""
    args: dict[str, Any] = {"messages": [_message(m) for m in request.messages]}
    if request.system:
        args["system"] = [{"text": request.system}]
    if request.tools:
        args["toolConfig"] = {"tools": [_tool(t) for t in request.tools]}
    inference: dict[str, Any] = {"maxTokens": request.max_tokens if max_tokens is None else max_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    args["inferenceConfig"] = inference
    return args


def _message(message: Message) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:  # Bedrock rejects blank text blocks
                blocks.append({"text": part.text})
        elif isinstance(part, ToolCall):
            tool_input = {} if part.args is None else part.args
            blocks.append({"toolUse": {"toolUseId": part.id, "name": part.name, "input": tool_input}})
        else:
            blocks.append({"toolResult": _tool_result(part)})
    return {"role": message.role, "content": blocks}


def _tool_result(result: ToolResult) -> dict[str, Any]:
    value = result.content
    if isinstance(value, dict):
        content: dict[str, Any] = {"json": value}
    else:
        content = {"text": value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}
    return {"toolUseId": result.id, "content": [content], "status": "error" if result.is_error else "success"}


def _tool(spec: ToolSpec) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": spec.name, "inputSchema": {"json": spec.parameters}}
    if spec.description:  # must not be empty when present
        tool["description"] = spec.description
    return {"toolSpec": tool}


def _part(block: Mapping[str, Any]) -> TextPart | ToolCall | None:
    # Other blocks (reasoning, citations, images) have no place in Baton's messages yet.
    if "text" in block:
        return TextPart(text=str(block["text"]))
    if "toolUse" in block:
        use = block["toolUse"]
        return ToolCall(id=str(use["toolUseId"]), name=str(use["name"]), args=use.get("input"))
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = ["BedrockModel"]
