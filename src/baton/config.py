"""``baton.toml``: who the principals are, which policies are in force, how approvals
expire and whom they notify, and the default limits of a run.

::

    [principals.alice]
    tenant = "acme"
    roles = ["support"]

    [policies]
    files = ["policies/refunds.cedar"]     # enforced
    shadow = ["policies/next.cedar"]       # journaled as "would deny", never enforced
    schema = "policies/baton.cedarschema"  # optional: policies are validated against it

    [approvals]
    expires_after = "24h"                  # unless a policy's @expires says otherwise
    webhook = "https://hooks.example.com/baton"

    [limits]
    max_steps = 200
    max_spend = 5000

Paths are relative to the file. ``BATON_CONFIG`` names the file; by default it is
``baton.toml`` in the working directory, if there is one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .approvals import Notifier, WebhookNotifier
from .budgets import Limits
from .errors import PolicyError, UsageError
from .identity import Directory
from .policy import PolicyEngine, PolicyFile, parse_approvers, parse_duration

DEFAULT_CONFIG = Path("baton.toml")
_SECTIONS = frozenset({"principals", "policies", "approvals", "limits"})


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    expires_after: float = 86400.0
    escalate_to: tuple[str, ...] = ()


@dataclass
class Governance:
    """Identity, policy, approvals and limits: what a :class:`~baton.Baton` enforces."""

    directory: Directory = field(default_factory=Directory)
    policies: PolicyEngine | None = None
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    notifier: Notifier | None = None
    limits: Limits = field(default_factory=Limits)
    source: str | None = None

    @property
    def enforcing(self) -> bool:
        """Are tool steps checked by policy?"""
        return self.policies is not None and self.policies.active

    @classmethod
    def load(cls, path: str | Path | None = None) -> Governance:
        """Read ``path`` (or ``BATON_CONFIG``, or ``./baton.toml`` if it exists)."""
        if path is None:
            env = os.environ.get("BATON_CONFIG")
            if env:
                path = Path(env)
            elif DEFAULT_CONFIG.exists():
                path = DEFAULT_CONFIG
            else:
                return cls()
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: {exc}") from None
        return cls.from_dict(data, base=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path = Path("."), source: str = "config") -> Governance:
        unknown = set(data) - _SECTIONS
        if unknown:
            raise PolicyError(f"{source}: unknown section [{sorted(unknown)[0]}] "
                              f"(expected {', '.join(sorted(_SECTIONS))})")
        directory = Directory.from_config(_table(data, "principals", source), source)
        policies = _policies(_table(data, "policies", source), base, source)
        approvals, notifier = _approvals(_table(data, "approvals", source), source)
        limits = Limits.from_json(_table(data, "limits", source), f"{source}: [limits]")
        return cls(directory, policies, approvals, notifier, limits, source)


def _table(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise PolicyError(f"{source}: {name} must be a table ([{name}])")
    return value


def _paths(table: Mapping[str, Any], key: str, base: Path, source: str) -> list[Path]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{source}: [policies] {key} must be a list of file paths")
    return [base / v for v in value]


def _policies(table: Mapping[str, Any], base: Path, source: str) -> PolicyEngine | None:
    unknown = set(table) - {"files", "shadow", "schema"}
    if unknown:
        raise PolicyError(f"{source}: [policies] unknown key {sorted(unknown)[0]!r} "
                          "(expected files, shadow, schema)")
    files = [PolicyFile(p) for p in _paths(table, "files", base, source)]
    files += [PolicyFile(p, shadow=True) for p in _paths(table, "shadow", base, source)]
    schema = table.get("schema")
    if schema is not None and not isinstance(schema, str):
        raise PolicyError(f"{source}: [policies] schema must be a file path")
    if not files:
        return None
    return PolicyEngine(files, schema=base / schema if schema else None)


def _approvals(table: Mapping[str, Any], source: str) -> tuple[ApprovalSettings, Notifier | None]:
    where = f"{source}: [approvals]"
    unknown = set(table) - {"expires_after", "escalate_to", "webhook", "webhook_retries"}
    if unknown:
        raise PolicyError(f"{where} unknown key {sorted(unknown)[0]!r}")
    settings = ApprovalSettings()
    if "expires_after" in table:
        try:
            settings = ApprovalSettings(parse_duration(str(table["expires_after"])), settings.escalate_to)
        except ValueError as exc:
            raise PolicyError(f"{where} expires_after: {exc}") from None
    escalate = table.get("escalate_to", [])
    if isinstance(escalate, str):
        escalate = [escalate]
    if not isinstance(escalate, list):
        raise PolicyError(f"{where} escalate_to must be a list like [\"role:director\"]")
    settings = ApprovalSettings(settings.expires_after, parse_approvers(",".join(map(str, escalate)), where))
    notifier: Notifier | None = None
    if "webhook" in table:
        url, retries = table["webhook"], table.get("webhook_retries", 3)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PolicyError(f"{where} webhook must be an http(s) URL")
        if not isinstance(retries, int) or retries < 0:
            raise PolicyError(f"{where} webhook_retries must be 0 or more")
        notifier = WebhookNotifier(url, retries=retries)
    return settings, notifier
