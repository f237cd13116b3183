"""Policy: Cedar policies checked before every tool step, outside the model."""

from .durations import parse_duration
from .engine import PolicyEngine, PolicyFile, PolicyRequest, Verdict, cedar_value
from .files import PolicySource, parse_approvers, parse_policies

__all__ = [
    "PolicyEngine",
    "PolicyFile",
    "PolicyRequest",
    "PolicySource",
    "Verdict",
    "cedar_value",
    "parse_approvers",
    "parse_duration",
    "parse_policies",
]
