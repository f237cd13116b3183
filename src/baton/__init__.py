"""Baton: a stateful runtime for AI agents.

Runs remember what they did (an append-only, hash-chained journal), survive crashes
without doing anything twice (replay plus idempotency keys, intent records and
reconciliation), act only as policy allows for the principal they act for (Cedar policies,
durable approvals, budgets), and can be audited (``baton audit verify``).
"""

from .approvals import WebhookNotifier
from .budgets import Limits
from .clock import Clock, SystemClock
from .config import Governance
from .engine.context import ApprovalDecision, Context
from .errors import (
    AppendConflict,
    ApprovalDenied,
    ApprovalError,
    BatonError,
    BudgetExceeded,
    DataErased,
    MigrationError,
    NonDeterminismError,
    PolicyDenied,
    PolicyError,
    RunCancelled,
    RunNotFound,
    StepError,
    StoreError,
    ToolTimeout,
    ToolValidationError,
    UsageError,
    WorkflowNotFound,
)
from .identity import Principal
from .journal import RunStatus
from .memory import MemoryEntry
from .runtime import Baton
from .sensitive import Sensitive
from .settings import Settings
from .store import RunRecord, SqliteStore, Store
from .telemetry import Telemetry
from .tools import Reconciled, RetryPolicy, Tool, tool
from .workflows import Workflow, workflow

__version__ = "0.1.0"

__all__ = [
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
