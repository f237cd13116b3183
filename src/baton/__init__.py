"""Baton: a stateful runtime for AI agents.

Runs remember what they did (an append-only, hash-chained journal), survive crashes
without doing anything twice (replay plus idempotency keys, intent records and
reconciliation), and can be audited (``baton audit verify``).
"""

from .clock import Clock, SystemClock
from .engine.context import Context
from .errors import (
    AppendConflict,
    BatonError,
    MigrationError,
    NonDeterminismError,
    RunCancelled,
    RunNotFound,
    StepError,
    StoreError,
    ToolTimeout,
    ToolValidationError,
    UsageError,
    WorkflowNotFound,
)
from .journal import RunStatus
from .runtime import Baton
from .settings import Settings
from .store import RunRecord, SqliteStore, Store
from .tools import Reconciled, RetryPolicy, Tool, tool
from .workflows import Workflow, workflow

__version__ = "0.1.0"

__all__ = [
    "AppendConflict",
    "Baton",
    "BatonError",
    "Clock",
    "Context",
    "MigrationError",
    "NonDeterminismError",
    "Reconciled",
    "RetryPolicy",
    "RunCancelled",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "Settings",
    "SqliteStore",
    "StepError",
    "Store",
    "StoreError",
    "SystemClock",
    "Tool",
    "ToolTimeout",
    "ToolValidationError",
    "UsageError",
    "Workflow",
    "WorkflowNotFound",
    "__version__",
    "tool",
    "workflow",
]
