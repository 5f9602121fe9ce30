"""Public JWKs, RFC 7638 thumbprints and JWS ES256 signatures of EC P-256 keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.utils import base64url_encode

_ES256 = ec.ECDSA(hashes.SHA256())  # immutable: built once rather than per signature


def _coordinate(value: int) -> str:
    return base64url_encode(value.to_bytes(32, "big")).decode("ascii")


def ec_public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("only P-256 keys are supported")
    numbers = public_key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _coordinate(numbers.x), "y": _coordinate(numbers.y)}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC public key."""
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return base64url_encode(hashlib.sha256(canonical).digest()).decode("ascii")


def signing_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The published JWK: public members, kid = thumbprint, alg and use pinned."""
    jwk = ec_public_jwk(public_key)
    return {**jwk, "kid": thumbprint(jwk), "alg": "ES256", "use": "sig"}


def raw_signature(private: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ES256 signature as the 64-byte r||s of JWS (RFC 7518 §3.4), not DER."""
    r, s = decode_dss_signature(private.sign(data, _ES256))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
