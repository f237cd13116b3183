"""Deciding a tool step with Cedar: allow, deny, or allow once a person approves.

How a policy asks for approval: a ``forbid`` annotated ``@approval("role:manager")`` is a
*gate*. When the only policies that deny a step are gates, and the step would be allowed
without them, the answer is "approval": a person the gate names may open it, for this
step and these exact arguments. ``@expires("24h")`` and ``@escalate("role:director")``
say how long the request waits and who may decide it after that.

Policies are parsed once (and again only when a file changes), never per call. A forbid
policy that fails to evaluate (a missing attribute, a type error) counts as matching:
Cedar itself would skip it, which would let the step through.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cedarpy

from ..errors import PolicyError
from ..identity import Principal
from .files import PolicySource, load_file

log = logging.getLogger("baton.policy")

Effect = Literal["allow", "deny", "approval"]
_ERRORED = re.compile(r"policy `(policy\d+)`")
_LONG = 2**63


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """What policy is asked before a tool step: one object, so fields can be added later."""

    principal: Principal
    tool: str
    resource: tuple[str, str]
    """(entity type, id), e.g. ``("Order", "98765")``."""
    args: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    """The facts the runtime adds: the tool, the run, the history of earlier calls."""

    # Entity uids in Cedar's JSON form: any id (accents, quotes, newlines) goes through as is.
    @property
    def principal_uid(self) -> dict[str, str]:
        return {"type": self.principal.entity_type, "id": self.principal.id}

    @property
    def action_uid(self) -> dict[str, str]:
        return {"type": "Action", "id": self.tool}

    @property
    def resource_uid(self) -> dict[str, str]:
        return {"type": self.resource[0], "id": self.resource[1]}


@dataclass(frozen=True, slots=True)
class Verdict:
    effect: Effect
    policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()
    expires_after: float | None = None
    escalate_to: tuple[str, ...] = ()
    shadow_effect: Effect | None = None
    shadow_policies: tuple[str, ...] = ()


def cedar_value(value: Any) -> Any:
    """A JSON value as Cedar reads it: floats become ``decimal`` (Cedar has no floats; compare
    with ``.greaterThan(decimal("100.0"))``; four decimal places at most, or the step is
    denied), lists become sets, ``None`` is left out."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_LONG <= value < _LONG else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        rounded = round(value, 4)
        if abs(value - rounded) > 1e-9 * max(1.0, abs(value)):
            # More places than Cedar's decimal holds (float noise aside): rounded, 100.00004
            # would slip under a "> 100.0" gate. Given as is, Cedar refuses the request: denied.
            return {"__extn": {"fn": "decimal", "arg": repr(value)}}
        return {"__extn": {"fn": "decimal", "arg": f"{rounded:.4f}"}}
    if isinstance(value, dict):
        return {str(k): cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [cedar_value(v) for v in value if v is not None]
    return str(value)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A record literal (`{"amount": 5}`): comparing records would see keys the pruning dropped.
_RECORD_LITERAL = re.compile(r'\{\s*"?[A-Za-z_][A-Za-z0-9_]*"?\s*:')


def cedar_context(value: dict[str, Any], keep: Pruning | None) -> dict[str, Any]:
    """The context as Cedar reads it (see :func:`cedar_value`), without the attributes no
    policy names: Cedar reads attributes only by name, so a key no policy text mentions
    cannot change a decision, and leaving it out saves Cedar parsing it (a decimal costs
    more than the rest of a small request). A record a policy uses whole (``context.a ==
    context.b``) is kept whole. One pass, as this runs for every step."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None or (keep is not None and key not in keep.words):
            continue
        if isinstance(item, dict):
            out[key] = cedar_value(item) if keep is not None and key in keep.whole else cedar_context(item, keep)
        elif type(item) is str or type(item) is bool:
            out[key] = item
        else:
            out[key] = cedar_value(item)
    return out


@dataclass(frozen=True, slots=True)
class Pruning:
    words: frozenset[str]
    """Every name in the policies' text: attributes not among them are left out."""
    whole: frozenset[str]
    """Attributes whose value a policy uses as a whole (compared, put in a set)."""


_CONTEXT_PATH = re.compile(r'\bcontext((?:\s*\.\s*[A-Za-z_]\w*|\s*\[\s*"(?:[^"\\]|\\.)*"\s*\])*)(\s*\()?')
_STEP = re.compile(r'\.\s*([A-Za-z_]\w*)|\[\s*"((?:[^"\\]|\\.)*)"\s*\]')
_HAS = re.compile(r"\s*has\b")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def pruning(text: str) -> Pruning | None:
    """What may be left out of the context for these policies; ``None``: nothing (a policy
    compares the whole context, or holds a record literal that could be compared with it)."""
    if _RECORD_LITERAL.search(text):
        return None
    whole: set[str] = set()
    for match in _CONTEXT_PATH.finditer(text):
        names = [a or b for a, b in _STEP.findall(match.group(1))]  # (escaped ``["…"]`` keys: see literals)
        if match.group(2):  # ``.greaterThan(`` and the like: the last name is a method
            names = names[:-1]
        if _HAS.match(text, match.end()):
            continue  # ``context.a has b`` only asks whether ``b`` is there: it is named
        if not names:
            return None  # the context itself, used whole
        whole.add(names[-1])
    # ``context.args has "dry-run"``, ``context["dry-run"]``: a literal may name a key too.
    literals = {bytes(m, "utf-8").decode("unicode_escape") if "\\" in m else m for m in _STRING.findall(text)}
    return Pruning(frozenset(_WORD.findall(text)) | frozenset(literals), frozenset(whole))


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
class _Slice:
    """The policies that can apply to one action, parsed into one Cedar policy set (which
    names them by position: ``policy0``, ``policy1``, …)."""

    def __init__(self, sources: list[PolicySource]) -> None:
        self.sources = sources
        text = "\n".join(s.text for s in sources)
        self.handle = cedarpy.PolicySet.from_str(text) if sources else None
        self.keep = pruning(text)

    def source(self, cedar_id: str) -> PolicySource:
        return self.sources[int(cedar_id.removeprefix("policy"))]

    def name_policies(self, error: str) -> str:
        """Cedar's message with its positional policy names replaced by Baton's ids."""
        return _ERRORED.sub(lambda m: f"policy `{self.source(m.group(1)).id}`", error)


class _Compiled:
    """A list of policies, evaluated one action at a time: only the policies whose scope
    can match the action are given to Cedar (policy slicing)."""

    def __init__(self, sources: Sequence[PolicySource]) -> None:
        self.sources = list(sources)
        self._slices: dict[str, _Slice] = {}
        _Slice(self.sources)  # parse the whole set once, so that a mistake shows at load

    def slice(self, action: str) -> _Slice:
        found = self._slices.get(action)
        if found is None:
            found = self._slices[action] = _Slice(
                [s for s in self.sources if s.actions is None or action in s.actions])
        return found

    def evaluate(self, request: PolicyRequest, context: dict[str, Any], entities: cedarpy.Entities
                 ) -> tuple[bool, list[PolicySource], list[str]]:
        """(allowed, the policies that decided, evaluation errors). Forbids that failed to
        evaluate count among the deciders and make the answer a denial."""
        part = self.slice(request.tool)
        if part.handle is None:
            return False, [], []
        cedar_request = {
            "principal": request.principal_uid,
            "action": request.action_uid,
            "resource": request.resource_uid,
            "context": _ENCODE(cedar_context(context, part.keep)),
        }
        result = cedarpy.is_authorized(cedar_request, part.handle, entities)
        deciders = [part.source(pid) for pid in result.diagnostics.reasons]
        errors = result.diagnostics.errors
        allowed = result.allowed
        for error in errors:
            match = _ERRORED.search(error)
            if match and (failed := part.source(match.group(1))).effect == "forbid":
                if allowed:
                    allowed, deciders = False, []
                deciders.append(failed)
        return allowed, deciders, [part.name_policies(e) for e in errors]


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: Path
    shadow: bool = False


class PolicyEngine:
    """The policies in force (and in shadow mode), reloaded when their files change.

    >>> engine = PolicyEngine([PolicyFile(Path("policies/refunds.cedar"))])  # doctest: +SKIP
    >>> engine.decide(request).effect                                      # doctest: +SKIP
    'approval'
    """

    def __init__(self, files: Sequence[PolicyFile], *, schema: Path | None = None,
                 reload_interval: float = 1.0) -> None:
        self.files = list(files)
        self.schema = schema
        self.reload_interval = reload_interval
        self.last_error: str | None = None
        self._checked = time.monotonic()
        self._entities: dict[str, tuple[Principal, cedarpy.Entities]] = {}
        self._stamp = self._stamps()
        self._load()

    @property
    def active(self) -> bool:
        return bool(self.files)

    def _stamps(self) -> list[tuple[int, int] | None]:
        stamps: list[tuple[int, int] | None] = []
        for f in self.files:
            try:
                st = f.path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return stamps

    def _load(self) -> None:
        enforced: list[PolicySource] = []
        shadow: list[PolicySource] = []
        for f in self.files:
            (shadow if f.shadow else enforced).extend(load_file(f.path))
        if self.schema is not None:
            self._validate(enforced + shadow)
        self.enforced = _Compiled(enforced)
        self.ungated = _Compiled([s for s in enforced if not s.gate])
        self.with_shadow = _Compiled(enforced + shadow) if shadow else None
        self.shadow_ungated = _Compiled([s for s in enforced + shadow if not s.gate]) if shadow else None
        self.sources = enforced + shadow
        self.reads_day_history = any("history" in s.text and re.search(r"\bday\b", s.text) for s in self.sources)
        """Does a policy read ``context.history.day`` (a query per check)?"""

    def _validate(self, sources: list[PolicySource]) -> None:
        assert self.schema is not None
        try:
            schema_text = self.schema.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read schema {self.schema}: {exc.strerror}") from None
        compiled = _Slice(sources)
        try:
            result = cedarpy.validate_policies("\n".join(s.text for s in sources), schema_text)
        except ValueError as exc:
            raise PolicyError(f"{self.schema}: {exc}") from None
        if not result.validation_passed:
            first = result.errors[0]
            where = "schema"
            if first.policy_id.startswith("policy"):
                src = compiled.source(first.policy_id)
                where = f"{src.file}:{src.line}"
            raise PolicyError(f"{where}: does not match the schema {self.schema}: "
                              f"{compiled.name_policies(first.error)}")

    def refresh(self) -> None:
        """Reload the files if they changed (checked at most every ``reload_interval``).
        A change that does not parse is logged and the policies in force stay."""
        now = time.monotonic()
        if now - self._checked < self.reload_interval:
            return
        self._checked = now
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._load()
        except PolicyError as exc:
            self.last_error = exc.message
            log.error("policy files changed but were not reloaded: %s", exc.message)
        else:
            self.last_error = None
            log.info("policies reloaded: %d in force", len(self.enforced.sources))

    # -- deciding -----------------------------------------------------------------------

    def entities(self, principal: Principal) -> cedarpy.Entities:
        cached = self._entities.get(principal.id)
        if cached is not None and (cached[0] is principal or cached[0] == principal):
            return cached[1]
        attrs = {"tenant": principal.tenant, "roles": sorted(principal.roles), "kind": principal.kind,
                 **{k: cedar_value(v) for k, v in principal.attributes.items()}}
        entity = {
            "uid": {"type": principal.entity_type, "id": principal.id},
            "attrs": attrs,
            "parents": [{"type": "Role", "id": r} for r in sorted(principal.roles)],
        }
        found = cedarpy.Entities.from_json_str(json.dumps([entity]))
        self._entities[principal.id] = (principal, found)
        return found

    def decide(self, request: PolicyRequest) -> Verdict:
        self.refresh()
        entities = self.entities(request.principal)
        context = {**request.context, "args": request.args}
        if not self.enforced.sources:
            verdict = Verdict("allow")  # nothing is enforced: shadow policies only watch
        else:
            verdict = self._decide(self.enforced, self.ungated, request, context, entities)
        if self.with_shadow is not None and self.shadow_ungated is not None:
            would = self._decide(self.with_shadow, self.shadow_ungated, request, context, entities)
            if would.effect != verdict.effect:
                verdict = Verdict(
                    verdict.effect, verdict.policies, verdict.errors + would.errors, verdict.approvers,
                    verdict.expires_after, verdict.escalate_to, would.effect, would.policies,
                )
        return verdict

    def _decide(self, full: _Compiled, ungated: _Compiled, request: PolicyRequest,
                context: dict[str, Any], entities: cedarpy.Entities) -> Verdict:
        allowed, deciders, errors = full.evaluate(request, context, entities)
        ids = tuple(sorted(s.id for s in deciders))
        if allowed:
            return Verdict("allow", ids, tuple(errors))
        gates = [s for s in deciders if s.gate]
        if not deciders or len(gates) < len(deciders):
            return Verdict("deny", ids, tuple(errors))
        open_allowed, open_deciders, open_errors = ungated.evaluate(request, context, entities)
        if not open_allowed:
            return Verdict("deny", tuple(sorted(s.id for s in open_deciders)), tuple(errors + open_errors))
        approvers = _all_of(gates)
        if not approvers:
            return Verdict("deny", ids, (*errors, "the approval policies that apply name no approver "
                                                  "in common, so nobody could approve this step"))
        expiries = [g.expires_after for g in gates if g.expires_after is not None]
        escalate = tuple(dict.fromkeys(e for g in gates for e in g.escalate_to))
        return Verdict("approval", ids, tuple(errors), approvers, min(expiries) if expiries else None, escalate)


def _all_of(gates: list[PolicySource]) -> tuple[str, ...]:
    """Approvers that satisfy every gate: with one gate, its list; with several, the
    entries all of them name (a person must be allowed by each)."""
    common = list(gates[0].approvers)
    for gate in gates[1:]:
        common = [a for a in common if a in gate.approvers]
    return tuple(common)
