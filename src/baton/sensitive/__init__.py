"""Sensitive data: detected or declared, encrypted at rest under a per-run key, masked
wherever it is shown, and erasable by destroying that key."""

from .detect import detect, mask_of, redact
from .keys import DataKey, MasterKey, WrappedKey
from .seal import NO_HINTS, Hints, Sealer, Sensitive, hints_of, is_sealed, masked, masked_event

__all__ = [
    "NO_HINTS",
    "DataKey",
    "Hints",
    "MasterKey",
    "Sealer",
    "Sensitive",
    "WrappedKey",
    "detect",
    "hints_of",
    "is_sealed",
    "mask_of",
    "masked",
    "masked_event",
    "redact",
]
