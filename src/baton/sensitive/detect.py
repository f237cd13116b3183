"""Built-in detectors: values that are sensitive whatever the tool declares.

A string is sensitive if it contains an e-mail address, a payment card number (13 to 19
digits, spaces or dashes allowed, passing the Luhn check), a phone number written as one
(``+`` and 8 to 15 digits, or a grouped national form such as ``(415) 555-0100``), an AWS
access key id, an IBAN (passing its mod-97 check), a US social security number written
``NNN-NN-NNNN``, or a JSON Web Token. A value under a key named like a secret
(``password``, ``token``, ``api_key``, ``authorization``, ``aws_secret_access_key``, …) is
sensitive whatever it looks like.

Detectors err on the side of hiding: a 16-digit order number that passes the Luhn check is
masked too. Bare digit runs are not taken for phone numbers (ids would be, constantly).
"""

from __future__ import annotations

import functools
import re

_EMAIL = r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
# Card numbers and SSNs stand on their own: digits inside a longer token (a run id, a hash,
# an idempotency key such as ``1a2192350181555:6``) are part of an identifier, not a card.
_CARD = r"(?P<card>(?<![0-9A-Za-z-])[0-9](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z-]))"
_PHONE = (r"(?P<phone>(?<![\w+])(?:\+[0-9][0-9 ().-]{7,18}[0-9]"
          r"|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}|[0-9]{3}[.-][0-9]{3}[.-][0-9]{4})(?![\w-]))")
_AWS_KEY = r"(?P<aws_key>(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9]))"
_IBAN = r"(?P<iban>(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9]))"
_SSN = (r"(?P<ssn>(?<![0-9A-Za-z-])(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}"
        r"(?![0-9A-Za-z-]))")
_JWT = r"(?P<jwt>eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,})"

# Card before phone: a grouped card number would otherwise be read as a phone number.
_PATTERN = re.compile("|".join((_EMAIL, _JWT, _IBAN, _CARD, _SSN, _PHONE, _AWS_KEY)))
_KIND = {"email": "email", "card": "card", "phone": "phone", "aws_key": "aws-key", "ssn": "ssn", "jwt": "token"}

_SECRET_NAME = re.compile(
    r"(?:^|_)(?:password|passwd|passphrase|secret|client_secret|api_?key|token|access_?token|refresh_?token"
    r"|auth_?token|session_?token|bearer_?token|private_?key|secret_?access_?key|credentials?|authorization"
    r"|cookie|pin)$"
)

MIN_LENGTH = 6
"""No detector matches a shorter string: the common case costs one length check."""
_NO_DIGITS = str.maketrans("", "", "0123456789")
_AWS_HINT = re.compile("A(?:KIA|SIA|BIA|CCA)|eyJ")


def _worth_scanning(text: str) -> bool:
    """Could any detector match? Cheap tests first (each runs in C): most strings are ids,
    names and words, and never reach the full regular expression."""
    return len(text) >= MIN_LENGTH and (
        "@" in text or len(text) - len(text.translate(_NO_DIGITS)) >= 8 or _AWS_HINT.search(text) is not None)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: move the country and check digits to the end, letters to numbers, mod 97."""
    compact = text.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return 15 <= len(compact) <= 34 and int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _phone_digits_ok(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 8 <= digits <= 15


def _accept(match: re.Match[str]) -> str | None:
    """The kind a regex match is, once the checks a regex cannot make are made."""
    group = match.lastgroup
    if group == "card":
        return "card" if luhn_valid(re.sub(r"[ -]", "", match.group())) else None
    if group == "phone":
        return "phone" if _phone_digits_ok(match.group()) else None
    if group == "iban":
        return "iban" if iban_valid(match.group()) else None
    return _KIND.get(group or "")


def detect(text: str) -> str | None:
    """The kind of the first sensitive value in ``text`` (``email``, ``card``, ``phone``,
    ``aws-key``), or ``None``."""
    if not _worth_scanning(text):
        return None
    for match in _PATTERN.finditer(text):
        kind = _accept(match)
        if kind is not None:
            return kind
    return None


def detect_number(value: int) -> str | None:
    """A card number held as an integer."""
    if 10**12 <= value < 10**19 and luhn_valid(str(value)):
        return "card"
    return None


@functools.lru_cache(maxsize=4096)
def secret_name(key: str) -> bool:
    """Does a key's name say its value is a secret (``password``, ``db_password``, ``apiKey``)?"""
    return _SECRET_NAME.search(_snake(key)) is not None


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).replace("-", "_").lower()


def mask_of(kind: str) -> str:
    """How a hidden value is shown: ``‹email›``."""
    return f"\u2039{kind}\u203a"


def redact(text: str, known: tuple[str, ...] = ()) -> str:
    """``text`` with every detected value, and every one of ``known`` (values declared
    sensitive), replaced by its mask. For free text (error messages, reasons) that is
    stored in clear: a detected value is removed, not encrypted."""
    for value in sorted(known, key=len, reverse=True):  # a longer value may contain a shorter one
        if value in text:
            text = text.replace(value, mask_of("sensitive"))
    if not _worth_scanning(text):
        return text

    def replace(match: re.Match[str]) -> str:
        kind = _accept(match)
        return match.group() if kind is None else mask_of(kind)

    return _PATTERN.sub(replace, text)
