"""Helpers of the key tests, written independently of dragoman.keys: they read and write the
key file format and compute RFC 7638 thumbprints with hashlib and json only."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def es256_verifies(public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """``signature`` (JWS ES256: the 64-byte r||s) verifies ``data``, checked with
    cryptography alone, not with dragoman.keys."""
    assert len(signature) == 64
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def jwk_public_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of an EC JWK."""
    x, y = (int.from_bytes(b64url_decode(jwk[c]), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def jwk_verifies(jwk: dict[str, Any], data: bytes, signature: bytes) -> bool:
    return es256_verifies(jwk_public_key(jwk), data, signature)


def read_document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return document


def write_document(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2), "utf-8")


def thumbprint_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace."""
    numbers = public_key.public_numbers()
    x = b64url(numbers.x.to_bytes(32, "big"))
    y = b64url(numbers.y.to_bytes(32, "big"))
    canonical = '{"crv":"P-256","kty":"EC","x":"' + x + '","y":"' + y + '"}'
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def unseal(master_key: bytes, entry: dict[str, Any]) -> bytes:
    """The PKCS#8 DER of a key file entry: AES-256-GCM, the entry's kid as associated data."""
    sealed = entry["private_key"]
    return AESGCM(master_key).decrypt(
        base64.b64decode(sealed["nonce"]),
        base64.b64decode(sealed["ciphertext"]),
        entry["kid"].encode(),
    )


def seal(
    master_key: bytes, private: ec.EllipticCurvePrivateKey, *, kid: str | None = None
) -> dict[str, Any]:
    """A key file entry for ``private`` (kid: its thumbprint unless given)."""
    kid = kid if kid is not None else thumbprint_of(private.public_key())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = secrets.token_bytes(12)
    numbers = private.public_key().public_numbers()
    return {
        "kid": kid,
        "alg": "ES256",
        "created_at": "2026-01-01T00:00:00+00:00",
        "public_jwk": {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
        },
        "private_key": {
            "enc": "A256GCM",
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "ciphertext": base64.b64encode(
                AESGCM(master_key).encrypt(nonce, der, kid.encode())
            ).decode("ascii"),
        },
    }


def key_file_document(entries: list[dict[str, Any]], active_kid: str | None) -> dict[str, Any]:
    return {"format": "dragoman-keys/1", "active_kid": active_kid, "keys": entries}
