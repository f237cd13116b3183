"""Agents: a model decides the next step; Baton makes the loop durable and governed.

>>> from baton.agent import agent, ScriptedModel, call, say
"""

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
from .models.scripted import Reply, ScriptedModel, all_text, call, call_raw, last_results, say

__all__ = [
    "Agent",
    "AgentError",
    "AgentLimits",
    "AgentWorkflow",
    "ContextBudget",
    "ContextReport",
    "Fact",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
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
    "last_results",
    "model_from_spec",
    "say",
]
