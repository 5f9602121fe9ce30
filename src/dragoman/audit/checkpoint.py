"""Signed checkpoints: a record that vouches for the whole chain before it.

A checkpoint is a chained record with ``event: "checkpoint"``, ``count`` (the number of
records before it, which is its own ``seq``), ``last_hash`` (the hash of the record before
it, which is its own ``prev``), ``time``, ``kid``, ``alg: "ES256"`` and ``signature``: the
base64url (unpadded) 64-byte ``r || s`` of an ECDSA P-256 / SHA-256 signature over the
canonical encoding of the checkpoint without its ``signature`` member.

The key is a dedicated audit key (``audit.checkpoint_key_file``, an EC P-256 PEM the
operator provides) rather than the token signing key ring: the ring rotates hourly and
drops retired keys from the JWKS, signs asynchronously through a remote provider, and
would tie every audit write to the key store being up. A checkpoint must stay verifiable
for years with one public key the auditor keeps. ``kid`` is the key's RFC 7638
thumbprint, so a verifier can tell which of several keys (rotated by the operator) signed.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dragoman.audit.chain import Tail, canonical, digest
from dragoman.keys.jwk import ec_public_jwk, raw_signature, thumbprint

EVENT = "checkpoint"
ALG = "ES256"
_SIZE = 32


class CheckpointKeyError(Exception):
    """The checkpoint key cannot be loaded (the message names the file, never the key)."""


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    return thumbprint(ec_public_jwk(public_key))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CheckpointSigner:
    """Signs checkpoints with one EC P-256 private key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise CheckpointKeyError("the checkpoint key must be an EC P-256 key")
        self._key = private_key
        self.kid = key_id(private_key.public_key())

    @classmethod
    def from_pem_file(cls, path: Path) -> CheckpointSigner:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise CheckpointKeyError(f"cannot read {path} ({exc.strerror})") from None
        except (ValueError, TypeError):
            raise CheckpointKeyError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CheckpointKeyError(f"{path} is not an EC P-256 private key")
        return cls(key)

    def sign(self, data: bytes) -> str:
        return _b64(raw_signature(self._key, data))


def signing_input(record: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: the record without ``signature``."""
    return canonical({k: v for k, v in record.items() if k != "signature"})


def checkpoint_line(
    tail: Tail, signer: CheckpointSigner, *, time: str, fields: dict[str, Any]
) -> tuple[bytes, Tail]:
    """The signed checkpoint after ``tail`` (its line, newline included) and the new tail.
    ``fields`` are the PCI fields every record carries (user, source, resource...)."""
    record: dict[str, Any] = {
        **fields,
        "time": time,
        "event": EVENT,
        "outcome": "ok",
        "count": tail.next_seq,
        "last_hash": tail.last_hash,
        "kid": signer.kid,
        "alg": ALG,
        "chain": tail.chain,
        "seq": tail.next_seq,
        "prev": tail.last_hash,
    }
    record["signature"] = signer.sign(signing_input(record))
    line = canonical(record)
    return line + b"\n", Tail(tail.chain, tail.next_seq + 1, digest(line), EVENT)


def load_public_keys(paths: list[Path]) -> dict[str, ec.EllipticCurvePublicKey]:
    """Verification keys by kid, from PEM files (public keys, or private keys whose public
    half is taken)."""
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointKeyError(f"cannot read {path} ({exc.strerror})") from None
        public: object
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                public = serialization.load_pem_private_key(data, password=None).public_key()
            except (ValueError, TypeError):
                raise CheckpointKeyError(f"{path} is not a PEM key") from None
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise CheckpointKeyError(f"{path} is not an EC P-256 key")
        keys[key_id(public)] = public
    return keys


def signature_valid(record: dict[str, Any], key: ec.EllipticCurvePublicKey) -> bool:
    signature = record.get("signature")
    if record.get("alg") != ALG or not isinstance(signature, str):
        return False
    try:
        raw = _unb64(signature)
    except (binascii.Error, ValueError):
        return False
    if len(raw) != 2 * _SIZE:
        return False
    der = encode_dss_signature(
        int.from_bytes(raw[:_SIZE], "big"), int.from_bytes(raw[_SIZE:], "big")
    )
    try:
        key.verify(der, signing_input(record), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
