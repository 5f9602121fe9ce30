"""Attacks on dragoman.jose.strict's read-once verification (read_jws / verify_jws).

Rules pinned here that test_strict_policy.py does not already pin: the signature covers the
segments as sent (not a re-encoding), duplicate header members are read one way only, the
ECDSA and EdDSA signature edge cases, algorithm spellings, and that junk of any shape ends in
a JoseError, never another exception.

A bearer token holding a byte that is not UTF-8 reaches read_jws as a lone surrogate (aiohttp
decodes header values with ``surrogateescape``); PyJWT's ``str.encode("utf-8")`` raised
UnicodeEncodeError on it, which is not a PyJWTError, and the request was answered 500. A
compact JWS is ASCII only, and read_jws now refuses anything else as ``token_malformed``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from dragoman.demo.runner import DemoStack
from dragoman.jose.strict import (
    HeaderPolicy,
    JoseError,
    TrustedKey,
    read_jws,
    unverified_issuer,
    verify_jws,
)
from dragoman.tokens.verify import TokenVerifier, verify_aiohttp

NOW = 1_700_000_000
ISSUER = "https://login.example"
AUDIENCE = "api"
CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": NOW, "exp": NOW + 300}
POLICY = HeaderPolicy(
    algorithms=frozenset({"ES256", "ES384", "EdDSA"}), accepted_types=frozenset({"at+jwt"})
)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
ED25519 = ed25519.Ed25519PrivateKey.generate()
ED448 = ed448.Ed448PrivateKey.generate()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def es256(data: bytes) -> bytes:
    r, s = decode_dss_signature(P256.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def header(alg: str = "ES256", kid: str = "p256", **extra: Any) -> dict[str, Any]:
    return {"alg": alg, "kid": kid, "typ": "at+jwt", **extra}


def signed(
    signer: Callable[[bytes], bytes] = es256,
    *,
    head: str | None = None,
    body: str | None = None,
) -> str:
    """A compact JWS whose signature covers ``head.body`` exactly as given."""
    head = segment(header()) if head is None else head
    body = segment(CLAIMS) if body is None else body
    return f"{head}.{body}.{b64url(signer(f'{head}.{body}'.encode()))}"


class Keys:
    """A fixed, trusted key set."""

    def __init__(self) -> None:
        self.keys = {
            "p256": TrustedKey("p256", P256.public_key(), None, None),
            "p384": TrustedKey("p384", P384.public_key(), None, None),
            "ed25519": TrustedKey("ed25519", ED25519.public_key(), None, None),
            "ed448": TrustedKey("ed448", ED448.public_key(), None, None),
        }

    async def key(self, kid: str) -> TrustedKey:
        if kid not in self.keys:
            raise JoseError("kid_unknown", "token names a key that is not in the key set")
        return self.keys[kid]


async def verify(token: str) -> dict[str, Any]:
    verified = await verify_jws(
        token,
        policy=POLICY,
        keys=Keys(),
        issuer=ISSUER,
        audiences={AUDIENCE},
        now=NOW,
        leeway=30,
        max_lifetime=900,
    )
    return verified.claims


async def refusal(token: str) -> str:
    with pytest.raises(JoseError) as refused:
        await verify(token)
    return refused.value.reason


def padded(segment_text: str) -> str:
    """``segment_text`` with the '=' padding PyJWT still reads (the same decoded bytes)."""
    return segment_text + "=" * (-len(segment_text) % 4)


async def test_baseline_tokens_verify() -> None:
    assert (await verify(signed()))["sub"] == "alice"
    assert (await verify(signed(ED25519.sign, head=segment(header("EdDSA", "ed25519")))))[
        "sub"
    ] == "alice"
    assert (await verify(signed(ED448.sign, head=segment(header("EdDSA", "ed448")))))[
        "sub"
    ] == "alice"


# -- the signature covers the segments as sent ------------------------------------------------


@pytest.mark.parametrize("which", ["header", "payload"])
async def test_padding_added_to_a_genuine_segment_breaks_the_signature(which: str) -> None:
    # PyJWT reads a padded segment to the same bytes; a verifier that re-encoded what it
    # read would still accept the token. The signing input is the text as sent, so no.
    for size in range(8):  # lengths that need padding, so the padded form is readable
        head, body = segment(header(pad="x" * size)), segment({**CLAIMS, "pad": "x" * size})
        if len(head if which == "header" else body) % 4 in (2, 3):
            break
    genuine = signed(head=head, body=body)
    h, p, s = genuine.split(".")
    tampered = f"{padded(h)}.{p}.{s}" if which == "header" else f"{h}.{padded(p)}.{s}"
    assert tampered != genuine
    assert read_jws(tampered, 16_384).claims == read_jws(genuine, 16_384).claims
    assert await refusal(tampered) == "signature_invalid"


async def test_duplicate_alg_is_read_once_and_the_last_one_counts() -> None:
    # One reading serves the policy and the signature check: the member the policy sees is
    # the member the verifier uses. A header whose last alg is "none" is refused.
    head = b64url(b'{"alg":"ES256","kid":"p256","typ":"at+jwt","alg":"none"}')
    assert await refusal(signed(head=head)) == "alg_not_allowed"


# -- algorithms, keys and signature encodings -------------------------------------------------


@pytest.mark.parametrize(
    "alg", ["es256", "Es256", "ES256 ", " ES256", "EDDSA", "eddsa", "Ed25519", "Ed448", "ES256K"]
)
async def test_algorithm_spelling_variants_are_refused(alg: str) -> None:
    assert await refusal(signed(head=segment(header(alg)))) == "alg_not_allowed"


@pytest.mark.parametrize(
    ("alg", "kid"),
    [("ES384", "p256"), ("EdDSA", "p256"), ("ES256", "ed25519"), ("EdDSA", "p384")],
)
async def test_allowed_algorithm_naming_a_key_of_another_family_or_curve_is_refused(
    alg: str, kid: str
) -> None:
    assert await refusal(signed(head=segment(header(alg, kid)))) == "key_mismatch"


def _p256_signature_variants() -> dict[str, Callable[[bytes], bytes]]:
    def der(data: bytes) -> bytes:
        return P256.sign(data, ec.ECDSA(hashes.SHA256()))

    def zeros(data: bytes) -> bytes:
        return bytes(64)

    def order(data: bytes) -> bytes:
        return P256_ORDER.to_bytes(32, "big") * 2

    def r_only(data: bytes) -> bytes:
        return es256(data)[:32] + bytes(32)

    def long(data: bytes) -> bytes:
        return es256(data) + b"\x00"

    def der_padded_to_64(data: bytes) -> bytes:
        r, s = decode_dss_signature(der(data))
        return encode_dss_signature(r, s).ljust(64, b"\x00")[:64]

    return {
        "der": der,
        "r=s=0": zeros,
        "r=s=n": order,
        "s=0": r_only,
        "65-bytes": long,
        "der-in-64-bytes": der_padded_to_64,
        "empty": lambda data: b"",
    }


@pytest.mark.parametrize("variant", list(_p256_signature_variants()))
async def test_malformed_es256_signature_is_refused(variant: str) -> None:
    token = signed(_p256_signature_variants()[variant])
    assert await refusal(token) == "signature_invalid"


@pytest.mark.parametrize(
    ("kid", "signer"),
    [
        ("ed25519", lambda data: ED448.sign(data)),
        ("ed448", lambda data: ED25519.sign(data)),
        ("ed25519", lambda data: ED25519.sign(data)[:63]),
        ("ed25519", lambda data: ED25519.sign(data) + b"\x00"),
    ],
    ids=["ed448-sig-ed25519-key", "ed25519-sig-ed448-key", "truncated", "extended"],
)
async def test_eddsa_signature_of_the_wrong_curve_or_length_is_refused(
    kid: str, signer: Callable[[bytes], bytes]
) -> None:
    assert await refusal(signed(signer, head=segment(header("EdDSA", kid)))) == (
        "signature_invalid"
    )


# -- payloads that verify but cannot be read --------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"exp": ' + b"9" * 5000 + b"}",  # beyond Python's int digit limit
        b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # RecursionError in the reader
        b"\xff\xfe\x00",  # not a JSON text in any encoding
        b"",
        b"null",
        b'"claims"',
    ],
    ids=["huge-int", "deep-nesting", "not-text", "empty", "null", "string"],
)
async def test_signed_payload_that_is_not_a_json_object_is_refused_as_malformed(
    payload: bytes,
) -> None:
    assert await refusal(signed(body=b64url(payload))) == "token_malformed"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_signed_non_finite_exp_literal_is_refused(literal: bytes) -> None:
    claims = json.dumps({k: v for k, v in CLAIMS.items() if k != "exp"}).encode()
    body = b64url(claims[:-1] + b', "exp": ' + literal + b"}")
    assert await refusal(signed(body=body)) == "claim_invalid"


# -- junk of any shape ends in a JoseError ----------------------------------------------------


def _junk(rnd: random.Random) -> str:
    choice = rnd.random()
    if choice < 0.3:  # any code point but a surrogate (those are the open bug below)
        return "".join(
            chr(rnd.choice([rnd.randrange(0x20, 0xD800), rnd.randrange(0xE000, 0x110000)]))
            for _ in range(rnd.randrange(40))
        )
    if choice < 0.6:
        alphabet = "AZaz09-_=.+/ \t!\x00"
        return ".".join(
            "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(20))) for _ in range(3)
        )
    values: list[Any] = [
        {},
        [],
        None,
        1,
        "s",
        header(),
        header(crit=rnd.choice([[], ["b64"], "b64", [1]])),
        header(b64=rnd.choice([False, 0, None, "false"])),
        {"alg": ["ES256"], "kid": "p256"},
        {"alg": "ES256", "kid": {"a": 1}},
    ]
    signature = bytes(rnd.randrange(256) for _ in range(rnd.randrange(80)))
    return f"{segment(rnd.choice(values))}.{segment(rnd.choice(values))}.{b64url(signature)}"


async def test_junk_tokens_end_in_a_jose_error_and_nothing_else() -> None:
    rnd = random.Random(20261130)
    for _ in range(3000):
        token = _junk(rnd)
        with pytest.raises(JoseError):
            await verify(token)
        unverified_issuer(token)  # None or a string; never an exception


# -- a byte that is not UTF-8: a lone surrogate, refused like any malformed token ------------

SURROGATE_TOKENS = ["a\udcff.b.c", "e30.e30.\udcff", "\udce9." + b64url(b"{}") + ".c"]


@pytest.mark.parametrize("token", SURROGATE_TOKENS, ids=["header", "signature", "latin-1"])
def test_token_with_a_lone_surrogate_is_refused_as_malformed(token: str) -> None:
    with pytest.raises(JoseError) as refused:
        read_jws(token, 16_384)
    assert refused.value.reason == "token_malformed"


@pytest.mark.parametrize("token", SURROGATE_TOKENS, ids=["header", "signature", "latin-1"])
async def test_verify_jws_refuses_a_token_with_a_lone_surrogate(token: str) -> None:
    assert await refusal(token) == "token_malformed"


def test_unverified_issuer_of_a_token_with_a_lone_surrogate_is_none() -> None:
    assert unverified_issuer(SURROGATE_TOKENS[0]) is None


async def _raw_get(url: str, path: str, authorization: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request with an Authorization header of raw bytes (no client library
    would send a non-UTF-8 header); the status and the body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: test\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_upstream_verifier_refuses_a_non_utf8_bearer_with_401(
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
    dead_port: int,
) -> None:
    # The key set is never fetched: the token is refused before any key is looked up.
    verifier = TokenVerifier(
        jwks_url=f"http://127.0.0.1:{dead_port}/jwks.json",
        issuer="dragoman",
        audience="payments",
        origin="http://payments.test",
    )

    async def handler(request: web.Request) -> web.Response:
        await verify_aiohttp(verifier, request, scope="payments:read", customer=None)
        return web.Response(text="served")

    app = web.Application()
    app.router.add_get("/pay", handler)
    try:
        async with serve(app) as url:
            status, body = await _raw_get(url, "/pay", b"Bearer a\xff.b.c")
    finally:
        await verifier.close()
    assert status == 401
    assert json.loads(body)["code"] == "token_malformed"


async def test_proxy_refuses_a_non_utf8_bearer_as_unauthenticated(stack: DemoStack) -> None:
    status, body = await _raw_get(
        stack.urls["proxy"], "/v1/customers/cus_alice/payment-methods", b"Bearer a\xff.b.c"
    )
    assert status == 401
    assert json.loads(body)["code"] == "unauthenticated"
