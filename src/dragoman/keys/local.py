"""The embedded key provider: ES256 keys in a local file, private keys encrypted at rest.

Each private key is stored as PKCS#8 DER sealed with AES-256-GCM under the master key, with
the key's ``kid`` as associated data (a sealed key cannot be moved under another kid). The
file names its active key explicitly (``active_kid``), never by position. Writes go to a
temporary file that is fsynced and renamed over the old one, under an exclusive lock, so a
crash leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dragoman.keys.jwk import signing_jwk
from dragoman.keys.provider import KeyUnavailableError, SigningKey

FORMAT = "dragoman-keys/1"


class KeyFileError(Exception):
    """The key file or the master key is unusable; the message says which and why."""


def decode_master_key(text: str) -> bytes:
    """A master key is 32 bytes, base64url (padding optional)."""
    cleaned = text.strip()
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise KeyFileError("the master key is not base64url") from None
    if len(raw) != 32:
        raise KeyFileError("the master key must be 32 bytes (base64url of 32 random bytes)")
    return raw


def new_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class _LoadedKey:
    public: SigningKey
    private: ec.EllipticCurvePrivateKey
    created_at: str


class LocalKeyFile:
    """KeyProvider over one encrypted key file."""

    def __init__(self, path: Path, master_key: bytes) -> None:
        self._path = path
        self._aead = AESGCM(master_key)
        self._keys: dict[str, _LoadedKey] = {}
        self._active: str | None = None

    # -- the KeyProvider contract ------------------------------------------------------------

    async def current(self) -> SigningKey:
        if self._active is None:
            raise KeyUnavailableError("no active signing key")
        return self._keys[self._active].public

    async def sign(self, kid: str, data: bytes) -> bytes:
        if kid != self._active:
            # Only the active key signs, whatever a caller asks for.
            raise KeyUnavailableError("only the active key signs")
        der = self._keys[kid].private.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(k.public.public_jwk) for k in self._keys.values()]}

    def ready(self) -> bool:
        return self._active is not None

    # -- file handling -----------------------------------------------------------------------

    def load(self, *, create: bool) -> None:
        """Read the key file; with ``create``, make one holding a fresh key if there is none."""
        with self._locked():
            if not self._path.exists():
                if not create:
                    raise KeyFileError(f"{self._path}: no key file (run `dragoman keys init`)")
                private = ec.generate_private_key(ec.SECP256R1())
                document: dict[str, Any] = {"format": FORMAT, "active_kid": None, "keys": []}
                kid = self._append(document, private)
                document["active_kid"] = kid
                self._write(document)
            self._read()

    def describe(self) -> list[dict[str, Any]]:
        """kid, created_at and whether it is active, for `dragoman keys list`."""
        return [
            {
                "kid": kid,
                "alg": k.public.alg,
                "created_at": k.created_at,
                "active": kid == self._active,
            }
            for kid, k in self._keys.items()
        ]

    def _read(self) -> None:
        try:
            document = json.loads(self._path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise KeyFileError(
                f"{self._path}: unreadable key file ({type(exc).__name__})"
            ) from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise KeyFileError(f"{self._path}: not a {FORMAT} key file")
        keys: dict[str, _LoadedKey] = {}
        entries = document.get("keys", [])
        if not isinstance(entries, list):
            raise KeyFileError(f"{self._path}: 'keys' is not a list")
        for entry in entries:
            # A malformed (or edited) file is a KeyFileError, never a bare KeyError/TypeError.
            try:
                kid = entry["kid"]
                sealed = entry["private_key"]
                nonce = base64.b64decode(sealed["nonce"], validate=True)
                ciphertext = base64.b64decode(sealed["ciphertext"], validate=True)
                created_at = entry["created_at"]
                if not isinstance(kid, str) or not isinstance(created_at, str):
                    raise TypeError("kid and created_at are strings")
            except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
                raise KeyFileError(f"{self._path}: malformed key entry") from None
            try:
                der = self._aead.decrypt(nonce, ciphertext, kid.encode())
            except (InvalidTag, ValueError):  # ValueError: a nonce of the wrong length
                raise KeyFileError(
                    f"{self._path}: key {kid} does not decrypt: wrong master key, or the file"
                    " was altered"
                ) from None
            private = serialization.load_der_private_key(der, password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise KeyFileError(f"{self._path}: key {kid} is not an EC key")
            jwk = signing_jwk(private.public_key())
            if jwk["kid"] != kid:
                raise KeyFileError(f"{self._path}: key {kid} does not match its kid")
            keys[kid] = _LoadedKey(SigningKey(kid, "ES256", jwk), private, created_at)
        active = document.get("active_kid")
        if active not in keys:
            raise KeyFileError(f"{self._path}: the active key is not in the file")
        self._keys, self._active = keys, active

    def _append(self, document: dict[str, Any], private: ec.EllipticCurvePrivateKey) -> str:
        jwk = signing_jwk(private.public_key())
        kid = str(jwk["kid"])
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = secrets.token_bytes(12)
        document["keys"].append(
            {
                "kid": kid,
                "alg": "ES256",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "public_jwk": jwk,
                "private_key": {
                    "enc": "A256GCM",
                    "nonce": _b64(nonce),
                    "ciphertext": _b64(self._aead.encrypt(nonce, der, kid.encode())),
                },
            }
        )
        return kid

    def _write(self, document: dict[str, Any]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_name(f".{self._path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
