"""Approvals as durable objects.

A request lives in the run's journal (``ApprovalRequested`` … ``ApprovalConsumed``), and
the store keeps an index of requests for listing. Deciding appends ``ApprovalGranted`` or
``ApprovalDenied`` at the head of the run's journal, so a decision is in the hash chain the
moment it is taken (:mod:`baton.approvals.decisions`).
"""

from .notify import Notifier, WebhookNotifier, notice, send
from .requests import ApprovalRecord, args_hash

__all__ = ["ApprovalRecord", "Notifier", "WebhookNotifier", "args_hash", "notice", "send"]
