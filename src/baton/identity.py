"""Who a run acts for: principals (people and services) with roles, a tenant and attributes.

A run is started on behalf of one principal and keeps it for its whole life: it is written
in the run's first event, and nothing a workflow or a model produces can change it. The
directory is read from the ``[principals]`` table of ``baton.toml``::

    [principals.alice]
    tenant = "acme"
    roles = ["support"]
    attributes = { region = "eu" }

    [principals.billing-bot]
    kind = "service"
    tenant = "acme"
    roles = ["billing"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UsageError

PrincipalKind = Literal["user", "service"]
_ENTITY_TYPE = {"user": "User", "service": "Service"}


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    tenant: str
    roles: frozenset[str] = frozenset()
    kind: PrincipalKind = "user"
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def entity_type(self) -> str:
        """The principal's Cedar entity type: ``User`` or ``Service``."""
        return _ENTITY_TYPE[self.kind]

    def may_act_as(self, approvers: list[str]) -> bool:
        """Does this principal match one of ``role:NAME`` / ``principal:ID`` entries?"""
        for entry in approvers:
            kind, _, name = entry.partition(":")
            if (kind == "role" and name in self.roles) or (kind == "principal" and name == self.id):
                return True
        return False


class Directory:
    """The principals Baton knows, by id."""

    def __init__(self, principals: list[Principal] | None = None) -> None:
        self._by_id = {p.id: p for p in principals or []}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, principal_id: object) -> bool:
        return principal_id in self._by_id

    def get(self, principal_id: str) -> Principal | None:
        return self._by_id.get(principal_id)

    def require(self, principal_id: str | None) -> Principal:
        """The principal, or a :class:`UsageError` a person can act on."""
        if not principal_id:
            raise UsageError(f"say who is acting: --as ID (known principals: {self.names()})")
        found = self._by_id.get(principal_id)
        if found is None:
            raise UsageError(f"unknown principal {principal_id!r} (known principals: {self.names()})")
        return found

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def names(self) -> str:
        return ", ".join(sorted(self._by_id)) or "none (add [principals] to baton.toml)"

    @classmethod
    def from_config(cls, table: Mapping[str, Any], source: str) -> Directory:
        principals = []
        for pid, spec in table.items():
            where = f"{source}: [principals.{pid}]"
            if not isinstance(spec, Mapping):
                raise UsageError(f"{where} must be a table")
            unknown = set(spec) - {"tenant", "roles", "kind", "attributes"}
            if unknown:
                raise UsageError(f"{where}: unknown keys {', '.join(sorted(unknown))} "
                                 "(expected tenant, roles, kind, attributes)")
            tenant, roles = spec.get("tenant"), spec.get("roles", [])
            kind, attributes = spec.get("kind", "user"), spec.get("attributes", {})
            if not isinstance(tenant, str) or not tenant:
                raise UsageError(f"{where} needs tenant = \"NAME\"")
            if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
                raise UsageError(f"{where}: roles must be a list of names")
            if kind not in _ENTITY_TYPE:
                raise UsageError(f"{where}: kind must be \"user\" or \"service\", not {kind!r}")
            if not isinstance(attributes, Mapping):
                raise UsageError(f"{where}: attributes must be a table")
            principals.append(Principal(pid, tenant, frozenset(roles), kind, dict(attributes)))
        return cls(principals)
