"""The public surface of ``import baton``: a name added or removed here is an API change."""

from __future__ import annotations

import importlib

import pytest

import baton

EXPORTED = [
    "AppendConflict",
    "ApprovalDecision",
    "ApprovalDenied",
    "ApprovalError",
    "Baton",
    "BatonError",
    "BudgetExceeded",
    "Clock",
    "Context",
    "DataErased",
    "Governance",
    "Limits",
    "MemoryEntry",
    "MigrationError",
    "NonDeterminismError",
    "PolicyDenied",
    "PolicyError",
    "Principal",
    "Reconciled",
    "RetryPolicy",
    "RunCancelled",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "Sensitive",
    "Settings",
    "SqliteStore",
    "StepError",
    "Store",
    "StoreError",
    "SystemClock",
    "Telemetry",
    "Tool",
    "ToolTimeout",
    "ToolValidationError",
    "UsageError",
    "WebhookNotifier",
    "Workflow",
    "WorkflowNotFound",
    "__version__",
    "tool",
    "workflow",
]


def test_all_is_pinned() -> None:
    assert baton.__all__ == EXPORTED


AGENT_EXPORTED = [
    "Agent", "AgentError", "AgentLimits", "AgentWorkflow", "BedrockModel", "ContextBudget", "ContextReport", "Fact",
    "McpServer", "Message", "Model", "ModelError", "ModelRequest", "ModelResponse", "OpenAIModel", "Pricing", "Reply",
    "ScriptedModel", "TextPart", "TokenUsage", "ToolCall", "ToolResult", "ToolSource", "ToolSpec", "agent",
    "all_text", "call", "call_raw", "calls_of", "last_results", "model_from_spec", "say",
]


def test_the_agent_surface_is_pinned_and_every_name_imports() -> None:
    agent = importlib.import_module("baton.agent")
    assert agent.__all__ == AGENT_EXPORTED
    for name in AGENT_EXPORTED:
        assert getattr(agent, name) is not None


def test_all_is_sorted_and_has_no_duplicates() -> None:
    assert sorted(baton.__all__) == baton.__all__
    assert len(set(baton.__all__)) == len(baton.__all__)


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from baton import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module("baton"), name)
    assert namespace[name] is not None


def test_star_import_gives_exactly_the_exported_names() -> None:
    namespace: dict[str, object] = {}
    exec("from baton import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPORTED


def test_errors_are_exported_from_their_tree() -> None:
    for name in EXPORTED:
        value = getattr(baton, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, baton.BatonError), name
