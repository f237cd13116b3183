"""What an agent and its model say to each other, in one provider-neutral shape.

Every request and reply is a Pydantic model with a JSON form, because both are journaled:
a model call is a step whose arguments are the request and whose result is the reply.
Adapters (Bedrock, OpenAI-compatible) translate to and from their wire formats; nothing
else in Baton sees a provider's shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextPart(_Frozen):
    type: Literal["text"] = "text"
    text: str


class ToolCall(_Frozen):
    """A tool call the model proposes. ``args`` is what the model wrote: possibly not an
    object, possibly not what the tool accepts. ``error`` is set by an adapter when the
    provider's arguments could not even be parsed (OpenAI sends them as a JSON string)."""

    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    args: JsonValue = None
    error: str | None = None


class ToolResult(_Frozen):
    """The answer to one tool call: its result, or an error the model can read and act on
    (invalid arguments, a policy refusal, a failure)."""

    type: Literal["tool_result"] = "tool_result"
    id: str
    content: JsonValue
    is_error: bool = False


Part = Annotated[TextPart | ToolCall | ToolResult, Field(discriminator="type")]


class Message(_Frozen):
    """A user message (text, or tool results), or an assistant message (text and tool calls)."""

    role: Literal["user", "assistant"]
    content: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(p for p in self.content if isinstance(p, ToolCall))

    @property
    def tool_results(self) -> tuple[ToolResult, ...]:
        return tuple(p for p in self.content if isinstance(p, ToolResult))

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(role="user", content=(TextPart(text=text),))


class ToolSpec(_Frozen):
    """A tool as a model is shown it: name, description and the JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any]


Purpose = Literal["turn", "plan", "summary"]


class ModelRequest(_Frozen):
    """One call to a model. ``purpose`` says why it is made (a turn of the loop, the plan
    written before it, or a summary of older turns), so a scripted model can answer each."""

    system: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 1024
    temperature: float | None = None
    purpose: Purpose = "turn"
    turn: int = 0
    """Which turn of the run's loop this call is for (1-based; a summary is made for the
    turn about to be asked; 0 for the plan).
    Adapters ignore it; a scripted model uses it to pick its answer in any process."""


class TokenUsage(_Frozen):
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "content_filtered", "other"]


class ModelResponse(_Frozen):
    """What the model answered: the assistant message, what it used and what it cost."""

    message: Message
    usage: TokenUsage = TokenUsage()
    stop_reason: StopReason = "end_turn"
    model: str = ""
    """The model that answered, as the provider names it."""
    cost: float = 0.0
    """In the currency of the model's price table (``Pricing``); 0 when no price is known."""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.message.tool_calls

    @property
    def text(self) -> str:
        return self.message.text


class Pricing(_Frozen):
    """Price per million input and output tokens, for spend budgets."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost(self, usage: TokenUsage) -> float:
        return (usage.input_tokens * self.input_per_million + usage.output_tokens * self.output_per_million) / 1e6
