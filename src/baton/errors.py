"""The exception tree. Every error Baton raises is a :class:`BatonError`.

Errors carry data (a stable ``code``, whether retrying can help, the run and step they
concern) so that the CLI and API can map them to one-line messages without parsing text::

    BatonError
    ├── UsageError              bad input from a person: a flag, a file, a JSON value
    │   ├── WorkflowNotFound
    │   ├── RunNotFound
    │   └── PolicyError         a policy or config file does not parse or validate
    ├── StoreError              the database refused or is unusable
    │   ├── AppendConflict      another writer appended first: this writer is stale (fencing)
    │   ├── MigrationError
    │   ├── BlobMissing         a large value an event refers to is gone
    │   └── BlobMismatch        a large value does not match its hash
    ├── StepError               a step failed for good; raised inside the workflow, catchable
    │   ├── ToolValidationError arguments did not match the tool's signature
    │   ├── ToolTimeout
    │   └── PolicyDenied        policy forbids the step
    │       └── ApprovalDenied  a person (or the expiry of the request) said no
    ├── ApprovalError           an approval decision that cannot be taken (self-approval, ...)
    ├── BudgetExceeded          the run reached one of its limits; it fails before the step
    ├── DataErased              the run's sensitive values were erased (``baton runs forget``)
    ├── NonDeterminismError     the workflow asked for a different step than the journal holds
    ├── RunCancelled            raised inside a workflow whose run is being cancelled
    ├── ModelError              a model call failed (``baton.agent``); ``retryable`` says if trying again helps
    ├── AgentError              an agent cannot go on (its model keeps proposing impossible calls)
    └── McpUnavailable, McpConnectionLost, McpToolError   an MCP server (``baton.agent.mcp``)
"""

from __future__ import annotations

from typing import Any


class BatonError(Exception):
    """Root of all Baton errors."""

    code: str = "baton_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        step_id: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.step_id = step_id
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "run_id": self.run_id,
            "step_id": self.step_id,
        }


class UsageError(BatonError):
    """Something a person gave Baton is wrong; the message says what to change."""

    code = "usage_error"


class WorkflowNotFound(UsageError):
    code = "workflow_not_found"


class RunNotFound(UsageError):
    code = "run_not_found"


class StoreError(BatonError):
    code = "store_error"


class AppendConflict(StoreError):
    """The journal already holds the ``seq`` this writer expected to write.

    This is the fencing token at work: a worker that lost its lease and wakes up later
    fails here and must stop without doing anything else.
    """

    code = "append_conflict"


class MigrationError(StoreError):
    code = "migration_error"


class BlobMissing(StoreError, KeyError):
    """A large value an event refers to is not in the blob table."""

    code = "blob_missing"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class BlobMismatch(StoreError, ValueError):
    """A large value does not match the hash it is stored under: it was changed."""

    code = "blob_mismatch"


class StepError(BatonError):
    """A step failed for good (retries exhausted or a non-retryable error).

    Raised inside the workflow at the ``ctx.call`` that failed, so the workflow may catch it.
    ``error_type`` is the name of the original exception class.
    """

    code = "step_failed"

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "Exception",
        run_id: str | None = None,
        step_id: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, step_id=step_id, retryable=retryable)
        self.error_type = error_type


class ToolValidationError(StepError):
    code = "tool_validation_error"


class ToolTimeout(StepError):
    """A tool call ran out of time. ``state`` says what became of the call:
    ``not_started`` (it never ran), ``running`` (abandoned, still running in a thread) or
    ``cancelled`` (an ``async`` call that was cancelled, possibly after taking effect)."""

    code = "tool_timeout"
    retryable = True

    def __init__(self, message: str, *, state: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.state = state


class PolicyError(UsageError):
    """A policy, schema or config file is wrong; the message names the file and line."""

    code = "policy_error"


class PolicyDenied(StepError):
    """Policy forbids this step. Raised at the ``ctx.call``; the run fails unless the
    workflow catches it. ``policies`` are the ids of the policies that decided."""

    code = "policy_denied"

    def __init__(self, message: str, *, policies: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.policies = policies


class ApprovalDenied(PolicyDenied):
    """The step needed an approval and it was denied, or the request expired."""

    code = "approval_denied"


class ApprovalError(BatonError):
    """An approval decision that cannot be taken: the message says why (self-approval, a
    principal not allowed to approve, an expired or already decided request)."""

    code = "approval_error"


class DataErased(BatonError):
    """The run's data key was destroyed: its sensitive values can no longer be read."""

    code = "data_erased"


class BudgetExceeded(BatonError):
    """The run reached one of its limits (steps, lifetime, spend, tokens) and stops before
    the step that would exceed it."""

    code = "budget_exceeded"


class NonDeterminismError(BatonError):
    """The workflow code asked for a step that differs from the one recorded at that position."""

    code = "non_determinism"


class RunCancelled(BatonError):
    """Raised inside a workflow whose run is being cancelled; compensations run after it."""

    code = "run_cancelled"
