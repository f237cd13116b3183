"""The audit signing key: Ed25519, created by ``baton audit keygen``.

Workers sign checkpoints with the private key; an auditor needs only the public key. The
private key is read from ``BATON_AUDIT_KEY``: a path to a PEM file, or the PEM itself.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UsageError

KEY_ENV = "BATON_AUDIT_KEY"


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a key: the first 16 hex digits of its raw bytes' sha256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(folder: Path) -> tuple[Path, Path]:
    """Write a new key pair as ``baton-audit.key`` (mode 0600) and ``baton-audit.pub``.
    Refuses to overwrite an existing key: checkpoints signed with it would no longer verify."""
    private_path, public_path = folder / "baton-audit.key", folder / "baton-audit.pub"
    if private_path.exists():
        raise UsageError(f"{private_path} exists; keep it (checkpoints signed with it need its public key) "
                         "or move it away first")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


def _pem(source: str, what: str) -> bytes:
    if source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} from {source}: {exc.strerror}") from None


def load_private(source: str | None = None) -> Ed25519PrivateKey | None:
    """The signing key from ``source`` or ``BATON_AUDIT_KEY``; ``None`` if neither is set."""
    source = source or os.environ.get(KEY_ENV)
    if not source:
        return None
    try:
        key = serialization.load_pem_private_key(_pem(source, "audit key"), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: an encrypted key
        raise UsageError(f"the audit key {source} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"the audit key {source} must be an Ed25519 key (baton audit keygen)")
    return key


def load_public(source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_pem(source, "public key"))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{source} must be an Ed25519 public key (baton audit keygen)")
    return key


def signature_valid(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True
