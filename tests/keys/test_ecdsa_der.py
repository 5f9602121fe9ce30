"""Strict DER -> r||s (dragoman.keys.ecdsa) on Project Wycheproof's ECDSA P-256 vectors.

For every vector, ``der_to_raw`` either refuses the bytes, or the r||s it returns, re-encoded
canonically and verified with ``cryptography``, gives the vector's result. Every vector whose
encoding is wrong (by its flags, or by cryptography's own DER parser) is refused, and every
valid vector converts and verifies.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from dragoman.keys.ecdsa import der_to_raw, raw_to_der

VECTORS = Path(__file__).parent / "vectors" / "ecdsa_secp256r1_sha256_test.json"
VECTORS_SHA256 = "182db4f3e230f6f9fa9f800d2a614dede30284b8e8438bbfe1171905402e9332"

ENCODING_FLAGS = {
    "BerEncodedSignature",
    "InvalidEncoding",
    "MissingZero",
    "InvalidTypesInSignature",
}
"""Wycheproof flags that mark a signature whose ASN.1 encoding is wrong."""


def _load() -> tuple[dict[str, Any], list[tuple[ec.EllipticCurvePublicKey, dict[str, Any]]]]:
    document: dict[str, Any] = json.loads(VECTORS.read_text("utf-8"))
    cases: list[tuple[ec.EllipticCurvePublicKey, dict[str, Any]]] = []
    for group in document["testGroups"]:
        key = serialization.load_der_public_key(bytes.fromhex(group["publicKeyDer"]))
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert group["sha"] == "SHA-256"
        cases.extend((key, test) for test in group["tests"])
    return document, cases


DOCUMENT, CASES = _load()


def _case_id(case: tuple[ec.EllipticCurvePublicKey, dict[str, Any]]) -> str:
    return f"tc{case[1]['tcId']}"


def _verifies(key: ec.EllipticCurvePublicKey, message: bytes, raw: bytes) -> bool:
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _cryptography_refuses(signature: bytes) -> bool:
    """cryptography's DER parser refuses the bytes, or they are not its canonical encoding."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return True
    return r < 0 or s < 0 or encode_dss_signature(r, s) != signature


def _has_encoding_problem(test: dict[str, Any]) -> bool:
    return bool(ENCODING_FLAGS & set(test["flags"])) or _cryptography_refuses(
        bytes.fromhex(test["sig"])
    )


def _convert(test: dict[str, Any]) -> bytes | None:
    try:
        return der_to_raw(bytes.fromhex(test["sig"]))
    except ValueError:
        return None


def test_the_vendored_vectors_are_the_pinned_file() -> None:
    assert hashlib.sha256(VECTORS.read_bytes()).hexdigest() == VECTORS_SHA256
    assert DOCUMENT["algorithm"] == "ECDSA"
    assert DOCUMENT["numberOfTests"] == len(CASES) == 484


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_vector_is_refused_or_verifies_as_expected(
    case: tuple[ec.EllipticCurvePublicKey, dict[str, Any]],
) -> None:
    key, test = case
    raw = _convert(test)
    if raw is None:
        assert test["result"] == "invalid", "a valid signature was refused"
        return
    assert len(raw) == 64
    assert raw_to_der(raw) == bytes.fromhex(test["sig"]), "accepted a non-canonical encoding"
    if test["result"] != "acceptable":
        assert _verifies(key, bytes.fromhex(test["msg"]), raw) == (test["result"] == "valid")


@pytest.mark.parametrize(
    "case", [case for case in CASES if _has_encoding_problem(case[1])], ids=_case_id
)
def test_every_encoding_problem_is_refused(
    case: tuple[ec.EllipticCurvePublicKey, dict[str, Any]],
) -> None:
    with pytest.raises(ValueError, match=r"\w"):  # refused, with a reason
        der_to_raw(bytes.fromhex(case[1]["sig"]))


def test_vector_counts() -> None:
    """The numbers behind the two tests above, pinned so a change in either is noticed."""
    counts: Counter[str] = Counter()
    for key, test in CASES:
        raw = _convert(test)
        counts[test["result"]] += 1
        if _has_encoding_problem(test):
            counts["encoding problem"] += 1
        if ENCODING_FLAGS & set(test["flags"]):
            counts["encoding flag"] += 1
        if raw is None:
            counts[f"{test['result']}: refused"] += 1
        elif _verifies(key, bytes.fromhex(test["msg"]), raw):
            counts[f"{test['result']}: converted, verifies"] += 1
        else:
            counts[f"{test['result']}: converted, does not verify"] += 1
    assert counts == {
        "valid": 174,
        "invalid": 310,
        "encoding flag": 163,
        "encoding problem": 219,
        "valid: converted, verifies": 174,
        "invalid: refused": 251,
        "invalid: converted, does not verify": 59,
    }


# Hand-made cases: the same rules, one at a time, with the reason.

R = bytes.fromhex("2ba3a8be6b94d5ec80a6d9d1190a436effe50d85a1eee859b8cc6af9bd5c2e18")
S = bytes.fromhex("b329f479a2bbd0a5c384ee1493b1f5186a87139cac5df4087c134b49156847db")
GOOD = bytes.fromhex("30450220" + R.hex() + "022100" + S.hex())


def test_a_canonical_signature_converts() -> None:
    assert der_to_raw(GOOD) == R + S
    assert raw_to_der(R + S) == GOOD


@pytest.mark.parametrize(
    ("hex_signature", "reason"),
    [
        ("", "missing signature"),
        ("31450220" + R.hex() + "022100" + S.hex(), "wrong tag"),
        ("3080" + "0220" + R.hex() + "022100" + S.hex() + "0000", "indefinite length"),
        ("308145" + "0220" + R.hex() + "022100" + S.hex(), "short form is required"),
        ("30820045" + "0220" + R.hex() + "022100" + S.hex(), "leading zero"),
        ("3083000045" + "0220" + R.hex() + "022100" + S.hex(), "length too long"),
        ("3045" + "0220" + R.hex() + "022100" + S.hex() + "00", "trailing bytes after"),
        ("3047" + "0220" + R.hex() + "022100" + S.hex() + "0500", "trailing bytes inside"),
        ("3046" + "0220" + R.hex() + "022100" + S.hex(), "length beyond the data"),
        ("3044" + "0220" + R.hex() + "0220" + S.hex(), "negative integer"),
        ("3046" + "022100" + R.hex() + "022100" + S.hex(), "non-minimal integer"),
        ("3025" + "0220" + R.hex() + "020100", "s is zero"),
        ("3025" + "0200" + "022100" + S.hex(), "empty integer"),
        ("3046" + "0221" + "01" + R.hex() + "022100" + S.hex(), "r is too long"),
        ("3045" + "0320" + R.hex() + "022100" + S.hex(), "wrong tag 0x03"),
        ("3022" + "0220" + R.hex(), "missing s"),
        ("3000", "missing r"),
        ("30", "truncated length"),
    ],
)
def test_malformed_der_is_refused_with_a_reason(hex_signature: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        der_to_raw(bytes.fromhex(hex_signature))


def test_small_integers_are_left_padded() -> None:
    raw = der_to_raw(bytes.fromhex("3006020105020101"))
    assert raw == (5).to_bytes(32, "big") + (1).to_bytes(32, "big")
    assert raw_to_der(raw) == bytes.fromhex("3006020105020101")


def test_other_sizes_use_long_form_lengths_only_when_needed() -> None:
    """P-521's 66-byte integers make a sequence longer than 127 bytes: 0x81 NN is DER there."""
    r = (1 << 520) | 7
    s = (1 << 519) | 9
    der = encode_dss_signature(r, s)
    assert der[1] == 0x81
    raw = der_to_raw(der, size=66)
    assert raw == r.to_bytes(66, "big") + s.to_bytes(66, "big")
    assert raw_to_der(raw, size=66) == der
    with pytest.raises(ValueError, match="too long"):
        der_to_raw(der, size=32)
    with pytest.raises(ValueError, match="size"):
        der_to_raw(der, size=0)


def test_raw_to_der_refuses_wrong_lengths_and_zero() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        raw_to_der(R + S + b"\0")
    with pytest.raises(ValueError, match="zero"):
        raw_to_der(bytes(32) + S)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_round_trip_of_real_signatures(curve: ec.EllipticCurve) -> None:
    size = (curve.key_size + 7) // 8
    key = ec.generate_private_key(curve)
    for _ in range(50):
        message = secrets.token_bytes(16)
        der = key.sign(message, ec.ECDSA(hashes.SHA256()))
        raw = der_to_raw(der, size=size)
        assert len(raw) == 2 * size
        assert raw_to_der(raw, size=size) == der
        key.public_key().verify(raw_to_der(raw, size=size), message, ec.ECDSA(hashes.SHA256()))
