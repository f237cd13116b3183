"""Models an agent can think with: one small interface, several implementations.

A :class:`Model` turns a :class:`~baton.agent.messages.ModelRequest` into a
:class:`~baton.agent.messages.ModelResponse`. It raises :class:`ModelError` when the call
fails, with ``retryable`` set for what a later attempt may cure (throttling, 5xx,
timeouts); the agent loop retries those with backoff as it does any tool.

``model_from_spec("bedrock:anthropic.claude-3-haiku-20240307-v1:0")`` and
``model_from_spec("openai:gpt-4o-mini")`` build a model from a string, as the CLI does.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ...errors import BatonError, UsageError
from ..messages import ModelRequest, ModelResponse


class ModelError(BatonError):
    """A model call failed. ``retryable`` says whether trying again may help."""

    code = "model_error"


@runtime_checkable
class Model(Protocol):
    """Anything with a ``name`` and a ``complete`` method is a model."""

    @property
    def name(self) -> str:
        """How runs record the model: ``bedrock:MODEL_ID``, ``openai:MODEL``, ``scripted:NAME``."""
        ...

    def complete(self, request: ModelRequest) -> ModelResponse: ...


def model_from_spec(spec: str) -> Model:
    """Build a model from ``PROVIDER:MODEL``: ``bedrock:…`` (region and credentials the
    standard AWS way) or ``openai:…`` (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``)."""
    provider, sep, model_id = spec.partition(":")
    if not sep or not model_id:
        raise UsageError(f"model {spec!r} is not PROVIDER:MODEL, e.g. bedrock:anthropic.claude-3-haiku-20240307-v1:0 "
                         "or openai:gpt-4o-mini")
    if provider == "bedrock":
        from .bedrock import BedrockModel

        return BedrockModel(model_id)
    if provider == "openai":
        from .openai_compat import OpenAIModel

        return OpenAIModel(model_id)
    raise UsageError(f"unknown model provider {provider!r} in {spec!r} (expected bedrock or openai)")


__all__ = ["Model", "ModelError", "model_from_spec"]
