"""The approvals index in SQL: how a request is stored and read back, and how each approval
event updates it inside the append that journals the event (a decision on a request that is
no longer pending, or a second use of a grant, is a conflict)."""

from __future__ import annotations

import json
from typing import Any

from ..approvals import ApprovalRecord
from ..errors import AppendConflict, StoreError
from ..journal import canonical_json
from ..journal import events as ev

APPROVAL_COLUMNS = (
    "approval_id, run_id, step_id, tenant, requester, title, tool, request, approvers, status, "
    "created_at, expires_at, escalated, decided_by, decided_at, reason, consumed_at"
)


def approval_record(row: tuple[Any, ...]) -> ApprovalRecord:
    request = json.loads(row[7])
    return ApprovalRecord(
        approval_id=row[0], run_id=row[1], step_id=row[2], tenant=row[3], requester=row[4], title=row[5],
        tool=row[6], args=request.get("args", {}), policies=request.get("policies", []),
        evidence=request.get("evidence"), approvers=json.loads(row[8]), status=row[9], created_at=row[10],
        expires_at=row[11], escalated=bool(row[12]), decided_by=row[13], decided_at=row[14],
        reason=row[15], consumed_at=row[16], escalate_to=request.get("escalate_to", []),
    )


def apply_approval(conn: Any, run_id: str, event: ev.Event, now: float) -> None:
    """Keep the approvals index in step with an approval event being appended. A decision
    on a request that is no longer pending, or a second consumption, is a conflict."""
    match event:
        case ev.ApprovalRequested():
            conn.execute(
                f"INSERT INTO approvals ({APPROVAL_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, 0, NULL, NULL, NULL, NULL)",
                (event.approval_id, run_id, event.step_id, event.tenant, event.requester, event.title,
                 event.tool, event.encoded(), canonical_json(event.approvers), now, event.expires_at),
            )
            return
        case ev.ApprovalGranted() | ev.ApprovalDenied():
            status = "approved" if isinstance(event, ev.ApprovalGranted) else (
                "denied" if event.by is not None else "expired")
            cur = conn.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ? "
                "WHERE approval_id = ? AND run_id = ? AND status = 'pending'",
                (status, event.by, now, event.reason, event.approval_id, run_id),
            )
        case ev.ApprovalEscalated():
            cur = conn.execute(  # the new approvers have not been told yet
                "UPDATE approvals SET approvers = ?, expires_at = ?, escalated = 1, notified_at = NULL "
                "WHERE approval_id = ? AND run_id = ? AND status = 'pending'",
                (canonical_json(event.approvers), event.expires_at, event.approval_id, run_id),
            )
        case ev.ApprovalConsumed():
            cur = conn.execute(
                "UPDATE approvals SET consumed_at = ? "
                "WHERE approval_id = ? AND run_id = ? AND status = 'approved' AND consumed_at IS NULL",
                (now, event.approval_id, run_id),
            )
        case ev.ApprovalWithdrawn():
            cur = conn.execute(
                "UPDATE approvals SET status = 'withdrawn', reason = ? "
                "WHERE approval_id = ? AND run_id = ? AND status IN ('pending', 'approved', 'denied', 'expired') "
                "AND consumed_at IS NULL",
                (event.reason, event.approval_id, run_id),
            )
        case _:
            return
    if cur.rowcount == 1:
        return
    approval_id = getattr(event, "approval_id", "?")
    if isinstance(event, ev.ApprovalGranted | ev.ApprovalDenied) and event.by is not None:
        # Two people deciding at once: the second is a stale writer, like any other.
        raise AppendConflict(f"approval {approval_id} of run {run_id} was already decided", run_id=run_id)
    raise StoreError(f"approval {approval_id} of run {run_id}: the approvals index does not match the "
                     f"journal ({event.type_name}); nothing was written", run_id=run_id)
