"""A deterministic, offline model for demos and tests.

It answers each turn from a script: a list of replies (turn N gets the Nth), or a rule
that looks at the request and decides. It picks its answer from ``request.turn``, never
from how often it was called, so a run resumed in another process gets the same answers.
Token usage is estimated from the text (about four characters a token), so token and spend
budgets behave as they would with a real model.

>>> model = ScriptedModel([call("check_order", order_id="98765"), say("The order is fine.")])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..messages import (
    Message,
    ModelRequest,
    ModelResponse,
    Pricing,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolResult,
)
from . import ModelError


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: some text, and the tool calls to propose (in order)."""

    text: str = ""
    calls: tuple[tuple[str, Any], ...] = ()
    """(tool name, arguments) pairs; arguments may be anything, to script a broken model."""

    def and_call(self, name: str, /, **args: Any) -> Reply:
        """This reply with one more tool call: ``call("a", x=1).and_call("b", y=2)``."""
        return Reply(self.text, (*self.calls, (name, args)))


def say(text: str) -> Reply:
    """A final answer: no tool calls, so the loop ends."""
    return Reply(text=text)


def call(name: str, /, **args: Any) -> Reply:
    """Propose one tool call."""
    return Reply(calls=((name, args),))


def call_raw(name: str, args: Any) -> Reply:
    """Propose a call with arguments exactly as given (a list, a string): a malformed call."""
    return Reply(calls=((name, args),))


Step = Reply | Callable[[ModelRequest], Reply]


def last_results(request: ModelRequest) -> dict[str, Any]:
    """The latest result of each tool among the turns the request still holds in full,
    by tool name (a later call of the same tool wins). Errors are ``{"error": text}``."""
    return {name: result for name, _, result in calls_of(request)}


def calls_of(request: ModelRequest, tool: str | None = None) -> list[tuple[str, Any, Any]]:
    """(tool name, arguments, result) of every call the request still holds in full, oldest
    first; only ``tool``'s when it is given. Errors are ``{"error": text}``."""
    made: dict[str, ToolCall] = {}
    found: list[tuple[str, Any, Any]] = []
    for message in request.messages:
        for part in message.content:
            if isinstance(part, ToolCall):
                made[part.id] = part
            elif isinstance(part, ToolResult) and part.id in made:
                proposed = made[part.id]
                if tool is None or proposed.name == tool:
                    result = {"error": part.content} if part.is_error else part.content
                    found.append((proposed.name, proposed.args, result))
    return found


def all_text(request: ModelRequest) -> str:
    """Everything the model is shown, as one string: for rules that react to content."""
    chunks = [request.system]
    for message in request.messages:
        for part in message.content:
            if isinstance(part, TextPart):
                chunks.append(part.text)
            elif isinstance(part, ToolResult):
                chunks.append(part.content if isinstance(part.content, str) else json.dumps(part.content))
    return "\n".join(chunks)


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


@dataclass
class ScriptedModel:
    """``turns[N-1]`` answers turn N (a :class:`Reply`, or a function of the request
    returning one); ``rule`` answers any turn the list does not cover. ``plan`` is the
    plan it writes when asked for one."""

    turns: Sequence[Step] = ()
    rule: Callable[[ModelRequest], Reply] | None = None
    plan: str = "1. Gather the facts with read-only tools.\n2. Act.\n3. Report what was done."
    label: str = "scripted"
    pricing: Pricing | None = None
    calls: list[ModelRequest] = field(default_factory=list, repr=False)
    """Every request this object answered, for tests."""

    @property
    def name(self) -> str:
        return f"scripted:{self.label}"

    def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls.append(request)
        if request.purpose == "plan":
            return self._response(request, Reply(text=self.plan), request.turn)
        if request.purpose == "summary":
            return self._response(request, Reply(text=summarise(request)), request.turn)
        step: Step | None = None
        if 0 < request.turn <= len(self.turns):
            step = self.turns[request.turn - 1]
        elif self.rule is not None:
            step = self.rule
        if step is None:
            raise ModelError(f"{self.name} has no answer for turn {request.turn}: its script has "
                             f"{len(self.turns)} turns and no rule", retryable=False)
        reply = step(request) if callable(step) else step
        return self._response(request, reply, request.turn)

    def _response(self, request: ModelRequest, reply: Reply, turn: int) -> ModelResponse:
        parts: list[TextPart | ToolCall] = [TextPart(text=reply.text)] if reply.text else []
        for index, (name, args) in enumerate(reply.calls, start=1):
            parts.append(ToolCall(id=f"call_{turn}_{index}", name=name, args=args))
        message = Message(role="assistant", content=tuple(parts))
        prompt = request.system + json.dumps([m.model_dump(mode="json") for m in request.messages]) + json.dumps(
            [t.model_dump(mode="json") for t in request.tools])
        usage = TokenUsage(input_tokens=estimate_tokens(prompt),
                           output_tokens=estimate_tokens(json.dumps(message.model_dump(mode="json"))))
        return ModelResponse(message=message, usage=usage, stop_reason="tool_use" if reply.calls else "end_turn",
                             model=self.name, cost=self.pricing.cost(usage) if self.pricing else 0.0)


def summarise(request: ModelRequest) -> str:
    """A deterministic summary: one line per message, cut to fit ``request.max_tokens``."""
    lines: list[str] = []
    for message in request.messages:
        lines.extend(_lines(message.content))
    text = "\n".join(lines)
    limit = request.max_tokens * 4
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lines(parts: Iterable[Any]) -> list[str]:
    out = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append(" ".join(part.text.split())[:200])
        elif isinstance(part, ToolCall):
            out.append(f"called {part.name}({json.dumps(part.args, sort_keys=True)[:120]})")
        elif isinstance(part, ToolResult):
            kind = "error" if part.is_error else "result"
            out.append(f"{kind}: {json.dumps(part.content, sort_keys=True)[:120]}")
    return out
