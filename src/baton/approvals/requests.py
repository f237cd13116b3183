"""An approval request as the store indexes it, and what it is bound to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sensitive.seal import Sealer, masked


def args_hash(tool: str | None, args: dict[str, Any], sealer: Sealer) -> str:
    """What an approval is bound to: the tool and its exact arguments, hashed under the run's
    key, so that the hash cannot be used to test guesses of a sensitive argument (before or
    after the run's data is erased)."""
    return sealer.fingerprint({"tool": tool, "args": args})


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """An approval request as the store indexes it."""

    approval_id: str
    run_id: str
    step_id: int
    tenant: str | None
    requester: str | None
    title: str
    tool: str | None
    args: dict[str, Any]
    policies: list[str]
    evidence: Any
    approvers: list[str]
    status: str
    """``pending``, ``approved``, ``denied``, ``expired`` or ``withdrawn``."""
    created_at: float
    expires_at: float
    escalated: bool
    decided_by: str | None
    decided_at: float | None
    reason: str | None
    consumed_at: float | None
    escalate_to: list[str]

    @property
    def request_escalates(self) -> bool:
        """Will expiry escalate this request (rather than deny it)?"""
        return bool(self.escalate_to) and not self.escalated

    def to_json(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id, "run_id": self.run_id, "step_id": self.step_id,
            "tenant": self.tenant, "requester": self.requester, "title": self.title, "tool": self.tool,
            "args": masked(self.args), "policies": self.policies, "evidence": masked(self.evidence),
            "approvers": self.approvers, "status": self.status, "created_at": self.created_at,
            "expires_at": self.expires_at, "escalated": self.escalated, "decided_by": self.decided_by,
            "decided_at": self.decided_at, "reason": self.reason, "consumed_at": self.consumed_at,
            "escalate_to": self.escalate_to,
        }
