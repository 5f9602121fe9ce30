"""Sealing secrets at rest: AES-256-GCM under a master key, bound to a name.

The associated data is the name the sealed value belongs to (a kid), so a sealed value
copied under another name does not open. A sealed value is ``version || nonce || ciphertext``.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_NONCE = 12


class SealingError(Exception):
    """A master key is malformed, or a sealed value does not open (wrong key, altered)."""


def decode_master_key(text: str) -> bytes:
    """A master key is 32 bytes, base64url (padding optional)."""
    cleaned = text.strip()
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise SealingError("the master key is not base64url") from None
    if len(raw) != 32:
        raise SealingError("the master key must be 32 bytes (base64url of 32 random bytes)")
    return raw


def new_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise SealingError("the master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    def seal(self, plaintext: bytes, name: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, name.encode())

    def open(self, sealed: bytes, name: str) -> bytes:
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            raise SealingError(f"the sealed value of {name} is malformed")
        nonce, ciphertext = sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :]
        try:
            return self._aead.decrypt(nonce, ciphertext, name.encode())
        except InvalidTag:
            raise SealingError(
                f"the sealed value of {name} does not open: wrong master key, or altered"
            ) from None
