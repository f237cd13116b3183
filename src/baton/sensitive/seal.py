"""Sealing: sensitive values are encrypted before an event is stored, and opened only by
the engine that replays the run.

An event's user data (a run's input and result, a step's arguments and result, a signal's
data, an approval's arguments and evidence) is walked before it is written. A value is
sealed when it is declared sensitive (``Annotated[str, Sensitive]`` on a parameter or a
model field, a name in ``@tool(sensitive=[...])``, a whole result), when it sits under a
key named like a secret, or when a detector recognises it (:mod:`.detect`). A sealed value
becomes ``{"\\u0000sealed": [kind, base64(nonce ‖ AES-GCM ciphertext)]}``; in stored data a
user key that starts with NUL gets one more, so a marker is never ambiguous.

Free text stored in clear (error messages, reasons, titles, resources) is redacted instead:
detected values, and the run's declared sensitive values, are replaced by their mask.

The hash chain covers what is stored: the ciphertext. Destroying a run's data key leaves
every hash intact and every sealed value unreadable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from cryptography.exceptions import InvalidTag
from pydantic import BaseModel

from ..errors import DataErased, StoreError
from ..journal import canonical_json
from ..journal import events as ev
from .detect import detect, detect_number, mask_of, redact, secret_name
from .keys import DataKey

SEALED = "\u0000sealed"
MIN_KNOWN = 4
"""Declared-sensitive strings this long or longer are sealed, and redacted, wherever else they
turn up in the run (a customer's SSN in the workflow's result, or in an error message)."""


class Sensitive:
    """Marks a value as sensitive: ``def lookup(email: Annotated[str, Sensitive]) -> ...``.

    Works on tool and workflow parameters, on fields of the Pydantic models they take or
    return, and on a return type (the whole result is sensitive)."""


@dataclass(frozen=True, slots=True)
class Hints:
    """What a tool or workflow declares sensitive: keys sealed wherever they appear in its
    arguments and result, and whether its whole result is."""

    names: frozenset[str] = frozenset()
    result: bool = False


NO_HINTS = Hints()


def _marks(metadata: Iterable[Any]) -> bool:
    return any(m is Sensitive or isinstance(m, Sensitive) for m in metadata)


def marked(annotation: Any, depth: int = 0) -> bool:
    """Is ``Sensitive`` anywhere in ``annotation``: ``Annotated[str, Sensitive]``, or inside
    ``Optional[...]``, ``list[...]``, ``dict[str, ...]`` and the like (then the whole value
    under that name is sealed)?"""
    if depth > 8:
        return False
    if get_origin(annotation) is Annotated and _marks(annotation.__metadata__):
        return True
    return any(marked(arg, depth + 1) for arg in get_args(annotation))


def _model_names(annotation: Any, depth: int = 0) -> set[str]:
    """Keys of fields marked sensitive in the models ``annotation`` holds, at any depth: the
    field's name and its alias, since a model may be dumped under either."""
    found: set[str] = set()
    if depth > 8:
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            if _marks(info.metadata) or marked(info.annotation):
                found |= {name, *(a for a in (info.alias, info.serialization_alias) if isinstance(a, str))}
            found |= _model_names(info.annotation, depth + 1)
        return found
    for arg in get_args(annotation):
        found |= _model_names(arg, depth + 1)
    return found


def hints_of(params: dict[str, Any], returns: Any, names: Iterable[str] = ()) -> Hints:
    """The hints of a function: its parameters' annotations (name → annotation), its return
    annotation, and names declared besides."""
    found = set(names)
    for name, annotation in params.items():
        if marked(annotation):
            found.add(name)
        found |= _model_names(annotation)
    found |= _model_names(returns)
    return Hints(frozenset(found), marked(returns))


# Which fields of which events hold user data (walked and sealed) or free text (redacted).
_DATA: dict[type[ev.Event], tuple[str, ...]] = {
    ev.RunStarted: ("input",), ev.RunCompleted: ("result",), ev.StepStarted: ("args",),
    ev.StepRan: ("args", "result"), ev.StepCompleted: ("result",), ev.StepReconciled: ("result",),
    ev.StepResolved: ("result",), ev.SignalReceived: ("data",), ev.PolicyDecided: ("args",),
    ev.ApprovalRequested: ("args", "evidence"),
}
_RESULTS = frozenset({"result"})
_TEXT: dict[type[ev.Event], tuple[str, ...]] = {
    ev.RunCancelled: ("reason",), ev.NeedsAttention: ("reason",), ev.StepResolved: ("note",),
    ev.PolicyDecided: ("resource",), ev.ApprovalRequested: ("title",), ev.ApprovalGranted: ("reason",),
    ev.ApprovalDenied: ("reason",), ev.ApprovalWithdrawn: ("reason",), ev.RunRecovered: ("reason",),
}
_ERRORS = (ev.RunFailed, ev.StepFailed, ev.Compensated)


_PLAIN = frozenset({float, bool, type(None)})
"""Scalar types no detector looks at (an ``int`` may be a card number)."""


def _unescape(key: str) -> str:
    return key[1:] if key.startswith("\u0000") else key


def is_sealed(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and SEALED in value


class Sealer:
    """Seals and opens one run's values. ``key`` is ``None`` once the run's data key has
    been destroyed: sealing is then refused, and opening a sealed value raises
    :class:`~baton.errors.DataErased`."""

    def __init__(self, run_id: str, key: DataKey | None, erased_at: float | None = None) -> None:
        self.run_id = run_id
        self.key = key
        self.erased_at = erased_at
        self.known: set[str] = set()
        """Declared-sensitive strings seen in this run, redacted from its free text."""

    # -- values -------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """Free text with detected values, and the run's declared ones, masked."""
        return redact(text, tuple(self.known))

    def fingerprint(self, value: Any) -> str:
        """A hash of ``value`` under the run's key (plain SHA-256 for a run without one, which
        holds nothing sensitive)."""
        data = canonical_json(value).encode()
        if self.key is None:
            return hashlib.sha256(data).hexdigest()
        return self.key.fingerprint(data)

    def _bound(self, kind: str) -> bytes:
        return f"{self.run_id}\0{kind}".encode()

    def seal_value(self, value: Any, kind: str) -> dict[str, Any]:
        if self.key is None:
            raise DataErased(f"run {self.run_id}'s data key was destroyed; it cannot store sensitive values",
                             run_id=self.run_id)
        if kind in ("sensitive", "secret") and isinstance(value, str) and len(value) >= MIN_KNOWN:
            self.known.add(value)
        sealed = self.key.encrypt(canonical_json(value).encode(), self._bound(kind))
        return {SEALED: [kind, base64.b64encode(sealed).decode("ascii")]}

    def open_value(self, marker: dict[str, Any]) -> Any:
        kind, data = marker[SEALED]
        if self.key is None:
            raise DataErased(f"run {self.run_id}'s sensitive values were erased; they cannot be read",
                             run_id=self.run_id)
        try:
            value = json.loads(self.key.decrypt(base64.b64decode(data), self._bound(kind)))
        except (InvalidTag, binascii.Error, ValueError):
            raise StoreError(f"a sealed {kind} value of run {self.run_id} does not decrypt with the run's key: "
                             "it was changed, or copied from another run", run_id=self.run_id) from None
        if kind in ("sensitive", "secret") and isinstance(value, str) and len(value) >= MIN_KNOWN:
            self.known.add(value)
        return value

    def seal_data(self, value: Any, names: frozenset[str] = frozenset()) -> Any:
        """``value`` with its sensitive parts sealed (detected ones, and those under
        ``names``); the same object if nothing was. Runs on every event of every step, so
        scalars are handled inline rather than by a call each."""
        kind = type(value)
        if kind is str:
            return self._seal_text(value)
        if kind is dict:
            out: dict[str, Any] = {}
            changed = False
            for key, item in value.items():
                if item is None:
                    new: Any = None
                elif key in names:
                    new = self.seal_value(item, "sensitive")
                elif secret_name(key):
                    new = self.seal_value(item, "secret")
                elif type(item) is str:
                    new = item if len(item) < MIN_KNOWN else self._seal_text(item)
                elif type(item) in _PLAIN:
                    new = item
                else:
                    new = self.seal_data(item, names)
                if key[:1] == "\u0000":
                    key, changed = "\u0000" + key, True
                changed = changed or new is not item
                out[key] = new
            return out if changed else value
        if kind is list:
            items = [self.seal_data(item, names) for item in value]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        if kind is int:
            found = detect_number(value)
            return value if found is None else self.seal_value(value, found)
        return value

    def _seal_text(self, text: str) -> Any:
        # Declared sensitive earlier in the run: it stays so, on its own or inside other text
        # (a model that repeats a temporary password in its answer).
        known = self.known
        if known and (text in known or any(value in text for value in known)):
            return self.seal_value(text, "sensitive")
        found = detect(text)
        return text if found is None else self.seal_value(text, found)

    def open_data(self, value: Any) -> Any:
        """``value`` with its sealed parts decrypted; the same object if there were none."""
        if isinstance(value, dict):
            if is_sealed(value):
                return self.open_value(value)
            out = {_unescape(key): self.open_data(item) for key, item in value.items()}
            changed = any(a is not b for a, b in zip(out.values(), value.values(), strict=True)) or any(
                key.startswith("\u0000") for key in value)
            return out if changed else value
        if isinstance(value, list):
            items = [self.open_data(item) for item in value]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    # -- events -------------------------------------------------------------------------

    def seal(self, event: ev.Event, hints: Hints = NO_HINTS) -> ev.Event:
        """``event`` as it is to be stored; ``event`` itself if nothing in it is sensitive."""
        kind = type(event)
        changes: dict[str, Any] = {}
        for name in _DATA.get(kind, ()):
            value = event.__dict__[name]
            if value is None:
                continue
            if name in _RESULTS and hints.result:
                sealed: Any = self.seal_value(value, "sensitive")
            else:
                sealed = self.seal_data(value, hints.names)
            if sealed is not value:
                changes[name] = sealed
        for name in _TEXT.get(kind, ()):
            text = event.__dict__[name]
            if text:
                clean = redact(text, tuple(self.known))
                if clean != text:
                    changes[name] = clean
        if isinstance(event, _ERRORS):
            error: ev.ErrorInfo | None = event.error
            if error is not None:
                clean = redact(error.message, tuple(self.known))
                if clean != error.message:
                    changes["error"] = error.model_copy(update={"message": clean})
        if not changes:
            return event
        return kind.trusted(**{**event.__dict__, **changes})

    def as_recorded(self, event: ev.Event, stored: ev.Event) -> ev.Event:
        """``event`` with its free text as ``stored`` holds it (redacted): what a replay of the
        run will read back, so that the live run sees the same (its values stay open)."""
        if stored is event:
            return event
        changes = {name: stored.__dict__[name] for name in _TEXT.get(type(event), ())
                   if stored.__dict__[name] != event.__dict__[name]}
        if isinstance(event, _ERRORS) and stored.__dict__["error"] != event.__dict__["error"]:
            changes["error"] = stored.__dict__["error"]
        return type(event).trusted(**{**event.__dict__, **changes}) if changes else event

    def open(self, event: ev.Event) -> ev.Event:
        """``event`` with its sealed values decrypted, as the workflow first saw them."""
        fields = _DATA.get(type(event))
        if not fields:
            return event
        changes = {}
        for name in fields:
            value = event.__dict__[name]
            opened = self.open_data(value)
            if opened is not value:
                changes[name] = opened
        return type(event).trusted(**{**event.__dict__, **changes}) if changes else event


def redacted(event: ev.Event) -> ev.Event:
    """An event carrying only free text (a decision's reason), redacted; no key needed."""
    return Sealer("", None).seal(event)


def masked(value: Any) -> Any:
    """``value`` as it may be shown: every sealed value replaced by its mask (``‹email›``)."""
    if isinstance(value, dict):
        if is_sealed(value):
            return mask_of(str(value[SEALED][0]))
        return {_unescape(key): masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def masked_event(event: ev.Event) -> ev.Event:
    """An event with its sealed values replaced by masks, for display."""
    fields = _DATA.get(type(event))
    if not fields:
        return event
    return type(event).trusted(**{**event.__dict__, **{name: masked(event.__dict__[name]) for name in fields}})
