"""The keys that encrypt sensitive values: one data key per run, wrapped by a master key.

Each run gets a random 256-bit data key when it starts. It is stored only wrapped (AES key
wrap, RFC 3394) by the master key, next to the run, so that erasing a run's values is
destroying 40 bytes (``baton runs forget``), and changing the master key never means
re-encrypting a journal.

The master key comes from ``BATON_MASTER_KEY``: 32 bytes in base64, or the path of a file
holding them. Without it, an SQLite database gets a key file beside it
(``baton.db.master-key``, mode 0600), created on first use: zero set-up, and erasure works,
but whoever copies both files can read the values. In production, keep the master key in a
secret manager and pass it in the environment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ..errors import UsageError

ENV = "BATON_MASTER_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A run's data key as it is stored: wrapped, with the id of the master key that did it."""

    master_id: str
    wrapped: bytes


class MasterKey:
    """Wraps and unwraps runs' data keys."""

    def __init__(self, secret: bytes, source: str = "") -> None:
        if len(secret) != KEY_BYTES:
            raise UsageError(f"the master key{f' in {source}' if source else ''} must be {KEY_BYTES} bytes, "
                             f"not {len(secret)}")
        self._secret = secret
        self.source = source
        self.id = hashlib.sha256(b"baton master key id\0" + secret).hexdigest()[:16]
        """Names the key without revealing it: stored with every data key it wraps."""

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES), "a new key")

    @classmethod
    def load(cls, default_file: Path | None) -> MasterKey:
        """From ``BATON_MASTER_KEY``, else ``default_file`` (created if missing), else a key
        that lives as long as this process (an in-memory database)."""
        configured = os.environ.get(ENV, "").strip()
        if configured:
            secret = _decode(configured)
            if secret is not None:
                return cls(secret, ENV)
            if _base64_of_some_length(configured) or not (os.sep in configured or Path(configured).exists()):
                # Never echo it: it may be a key in the wrong form.
                raise UsageError(f"{ENV} must be {KEY_BYTES} bytes in base64, or the path of a file holding them")
            return cls.from_file(Path(configured), create=False)
        if default_file is None:
            return cls.generate()
        return cls.from_file(default_file, create=True)

    @classmethod
    def from_file(cls, path: Path, *, create: bool) -> MasterKey:
        if create and not path.exists():
            _create_key_file(path)
        try:
            text = path.read_bytes().decode("ascii").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the master key {path} ({ENV}): {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            text = ""
        secret = _decode(text)
        if secret is None:
            raise UsageError(f"{path} does not hold a master key ({KEY_BYTES} bytes in base64)")
        return cls(secret, str(path))

    def wrap(self, data_key: bytes) -> WrappedKey:
        return WrappedKey(self.id, aes_key_wrap(self._secret, data_key))

    def unwrap(self, stored: WrappedKey, run_id: str) -> bytes:
        if stored.master_id != self.id:
            raise UsageError(f"run {run_id}'s data key was wrapped by master key {stored.master_id}, but "
                             f"this process has {self.id} (from {self.source}); set {ENV} to the right key")
        try:
            return aes_key_unwrap(self._secret, stored.wrapped)
        except InvalidUnwrap:
            raise UsageError(f"run {run_id}'s data key does not unwrap with master key {self.id}: "
                             "it was damaged") from None


def _create_key_file(path: Path) -> None:
    """Write a new key to a private temporary file, then link it into place: another
    process starting at the same moment, or a crash half-way, never leaves an empty or
    partial key behind (the link fails if the file appeared meanwhile: theirs is used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    temporary = Path(name)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # theirs came first: it is the one used
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _base64_of_some_length(text: str) -> bool:
    """Meant as a key rather than a path (a path has dots, or does not pad to base64)?"""
    try:
        return len(text) >= 16 and len(text) % 4 == 0 and bool(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return False


def _decode(text: str) -> bytes | None:
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return secret if len(secret) == KEY_BYTES else None


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


class DataKey:
    """AES-256-GCM under one run's data key, with a synthetic nonce.

    The nonce is an HMAC of the plaintext (and of what it is bound to), so the same value
    encrypts to the same bytes within one run: a large sensitive value repeated on every
    step is still stored once, and a nonce is never reused for two different plaintexts.
    What this reveals is only which sealed values of the same run are equal."""

    def __init__(self, key: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=None,
                       info=b"baton sealed values v1").derive(key)
        self._aead = AESGCM(derived[:KEY_BYTES])
        self._nonce_key = derived[KEY_BYTES:]
        self._digest_key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                                info=b"baton fingerprints v1").derive(key)

    def fingerprint(self, data: bytes) -> str:
        """A keyed hash (HMAC-SHA256): comparable within the run, and, unlike a plain hash,
        no way to test guesses once the key is destroyed."""
        return hmac.new(self._digest_key, data, hashlib.sha256).hexdigest()

    def encrypt(self, plaintext: bytes, bound_to: bytes) -> bytes:
        nonce = hmac.new(self._nonce_key, bound_to + b"\0" + plaintext, hashlib.sha256).digest()[:NONCE_BYTES]
        return nonce + self._aead.encrypt(nonce, plaintext, bound_to)

    def decrypt(self, sealed: bytes, bound_to: bytes) -> bytes:
        """Raises ``cryptography.exceptions.InvalidTag`` if the bytes were changed, or were
        sealed under another key or for another place."""
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], bound_to)
