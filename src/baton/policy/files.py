"""Reading Cedar policy files: each policy with its file, line, id and approval annotations.

Cedar's parser says what is wrong but not where, so a file is split into its policies
(top-level ``;``) and a policy that fails is parsed again line by line: the first prefix
that fails for a reason other than "end of input" holds the mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cedarpy
from cedarpy import pst

from ..errors import PolicyError
from .durations import parse_duration

_ANNOTATIONS = frozenset({"id", "approval", "expires", "escalate"})


@dataclass(frozen=True, slots=True)
class PolicySource:
    """One policy of a file. ``id`` is its ``@id`` annotation, or ``FILE:LINE``."""

    id: str
    file: str
    line: int
    text: str
    effect: Literal["permit", "forbid"]
    approvers: tuple[str, ...] = ()
    """From ``@approval("role:manager")``: this forbid is a gate a person may open."""
    expires_after: float | None = None
    escalate_to: tuple[str, ...] = ()
    actions: frozenset[str] | None = None
    """The actions (tools) the policy's scope names; ``None``: any action."""

    @property
    def gate(self) -> bool:
        return bool(self.approvers)


def split_policies(text: str) -> list[tuple[int, str]]:
    """The policies of a file as (first line, text), split at ``;`` outside strings and
    comments. Text after the last ``;`` is returned too, so that it fails to parse."""
    found: list[tuple[int, str]] = []
    start = line = 1
    begun = False
    in_string = escaped = in_comment = False
    chunk: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        chunk.append(ch)
        if in_comment:
            if ch == "\n":
                in_comment = False
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == "/" and text[i + 1 : i + 2] == "/":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch == ";":
            found.append((start, "".join(chunk)))
            chunk, begun = [], False
        if not begun and not ch.isspace() and not in_comment and ch != ";":
            begun, start = True, line
        if ch == "\n":
            line += 1
        i += 1
    if begun:
        found.append((start, "".join(chunk)))
    return found


def _error_line(text: str, first_line: int) -> int:
    """The line of a policy (that fails to parse) where the mistake is."""
    lines = text.split("\n")
    offset = 0
    while offset < len(lines) - 1 and (not lines[offset].strip() or lines[offset].strip().startswith("//")):
        offset += 1  # the text starts after the previous policy's ``;``: blank lines and comments
    for count in range(offset + 1, len(lines) + 1):
        try:
            cedarpy.PolicySet.from_str("\n".join(lines[:count]))
        except ValueError as exc:
            if "end of input" not in str(exc):
                return first_line + count - 1 - offset
    last = len(lines) - 1
    while last > offset and not lines[last].strip():
        last -= 1  # the policy runs out of text: its last line that has any
    return first_line + last - offset


def load_file(path: Path) -> list[PolicySource]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    return parse_policies(text, str(path))


def parse_policies(text: str, file: str) -> list[PolicySource]:
    """Parse policy text; a mistake raises :class:`PolicyError` naming ``file:line``."""
    sources = []
    for line, chunk in split_policies(text):
        try:
            parsed = cedarpy.PolicySet.from_str(chunk).to_pst()
        except ValueError as exc:
            raise PolicyError(f"{file}:{_error_line(chunk, line)}: {exc}") from None
        if parsed.templates:
            raise PolicyError(f"{file}:{line}: policy templates (?principal, ?resource) are not supported")
        (policy,) = parsed.static_policies.values()
        source = _source(policy.annotations, policy.effect, chunk.strip(), file, line)
        sources.append(replace(source, actions=_actions(policy.action)))
    return sources


def _actions(scope: object) -> frozenset[str] | None:
    """The action ids a policy's scope can match. Baton defines no action groups, so
    ``action in [Action::"a", Action::"b"]`` matches exactly those actions."""
    if isinstance(scope, pst.ActionEq):
        return frozenset({scope.entity.id})
    if isinstance(scope, pst.ActionIn):
        return frozenset(e.id for e in scope.entities)
    return None  # any action, or a scope this version does not know: always evaluated


def _source(annotations: Mapping[str, str], effect: str, text: str, file: str, line: int) -> PolicySource:
    where = f"{file}:{line}"
    unknown = set(annotations) - _ANNOTATIONS
    if unknown:
        raise PolicyError(f"{where}: unknown annotation @{sorted(unknown)[0]} "
                          f"(Baton reads @{', @'.join(sorted(_ANNOTATIONS))})")
    approvers = parse_approvers(annotations.get("approval", ""), where)
    escalate = parse_approvers(annotations.get("escalate", ""), where)
    if approvers and effect != "forbid":
        raise PolicyError(f"{where}: @approval belongs on a forbid policy (a gate that an approver "
                          "may open), not on a permit")
    if "approval" in annotations and not approvers:
        raise PolicyError(f"{where}: @approval needs approvers, e.g. @approval(\"role:manager\")")
    if ("expires" in annotations or escalate) and not approvers:
        raise PolicyError(f"{where}: @expires and @escalate only apply to a policy with @approval")
    expires = None
    if "expires" in annotations:
        try:
            expires = parse_duration(annotations["expires"])
        except ValueError as exc:
            raise PolicyError(f"{where}: @expires: {exc}") from None
    return PolicySource(
        id=annotations.get("id") or where, file=file, line=line, text=text,
        effect="forbid" if effect == "forbid" else "permit",
        approvers=approvers, expires_after=expires, escalate_to=escalate,
    )


def parse_approvers(spec: str, where: str) -> tuple[str, ...]:
    """``"manager, principal:carol"`` → ``("role:manager", "principal:carol")``."""
    entries = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        kind, sep, name = item.partition(":")
        if not sep:
            kind, name = "role", item
        if kind not in ("role", "principal") or not name.strip():
            raise PolicyError(f"{where}: approver {item!r} must be role:NAME or principal:ID")
        entries.append(f"{kind}:{name.strip()}")
    return tuple(entries)
