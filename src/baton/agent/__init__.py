"""Agents: a model decides the next step; Baton makes the loop durable and governed.

>>> from baton.agent import agent, ScriptedModel, call, say
"""

from typing import TYPE_CHECKING, Any

from .context import ContextBudget, ContextReport, Fact
from .loop import Agent, AgentError, AgentLimits, AgentWorkflow, ToolSource, agent
from .messages import (
    Message,
    ModelRequest,
    ModelResponse,
    Pricing,
    TextPart,
    TokenUsage,
    ToolCall,
    ToolResult,
    ToolSpec,
)
from .models import Model, ModelError, model_from_spec
from .models.scripted import Reply, ScriptedModel, all_text, call, call_raw, calls_of, last_results, say

if TYPE_CHECKING:
    from .mcp import McpServer
    from .models.bedrock import BedrockModel
    from .models.openai_compat import OpenAIModel


def __getattr__(name: str) -> Any:
    """The adapters import their client libraries (boto3, openai, mcp) only when asked for."""
    if name == "McpServer":
        from .mcp import McpServer

        return McpServer
    if name == "BedrockModel":
        from .models.bedrock import BedrockModel

        return BedrockModel
    if name == "OpenAIModel":
        from .models.openai_compat import OpenAIModel

        return OpenAIModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Agent",
    "AgentError",
    "AgentLimits",
    "AgentWorkflow",
    "BedrockModel",
    "ContextBudget",
    "ContextReport",
    "Fact",
    "McpServer",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "OpenAIModel",
    "Pricing",
    "Reply",
    "ScriptedModel",
    "TextPart",
    "TokenUsage",
    "ToolCall",
    "ToolResult",
    "ToolSource",
    "ToolSpec",
    "agent",
    "all_text",
    "call",
    "call_raw",
    "calls_of",
    "last_results",
    "model_from_spec",
    "say",
]
