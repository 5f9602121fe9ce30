"""``/.well-known/jwks.json`` of a running proxy: the public half of the signing keys, with
the members that pin their use, cacheable for ``keys.jwks_max_age``; refused while the view
of the key set is stale."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.demo.runner import DemoStack

from .support import b64url, b64url_decode, thumbprint_of

JWKS = "/.well-known/jwks.json"


async def fetch(
    http: aiohttp.ClientSession, stack: DemoStack
) -> tuple[aiohttp.ClientResponse, Any]:
    async with http.get(stack.urls["proxy"] + JWKS) as response:
        assert response.status == 200
        return response, json.loads(await response.read())


async def test_jwks_publishes_public_members_only(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    _, document = await fetch(http, stack)
    assert set(document) == {"keys"}
    assert document["keys"]
    for jwk in document["keys"]:
        # The JWK's public members, plus dragoman's timeline members (docs/keys.md).
        timeline = {"active_from", "active_until", "verify_until"}
        assert {"kty", "crv", "x", "y", "kid", "alg", "use", "active_from"} <= set(jwk)
        assert set(jwk) - {"kty", "crv", "x", "y", "kid", "alg", "use"} <= timeline
        assert "d" not in jwk


async def test_jwks_keys_pin_alg_es256_and_use_sig(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    _, document = await fetch(http, stack)
    for jwk in document["keys"]:
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")


async def test_jwks_names_the_current_key_by_its_rfc7638_thumbprint(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    _, document = await fetch(http, stack)
    [jwk] = document["keys"]
    x = int.from_bytes(b64url_decode(jwk["x"]), "big")
    y = int.from_bytes(b64url_decode(jwk["y"]), "big")
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    assert b64url(x.to_bytes(32, "big")) == jwk["x"]
    assert jwk["kid"] == thumbprint_of(public)
    assert jwk["kid"] == stack.proxy.keys.current_key().kid


async def test_jwks_is_served_as_a_jwk_set(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    response, _ = await fetch(http, stack)
    assert response.content_type == "application/jwk-set+json"


async def test_jwks_cache_control_uses_the_default_max_age(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    response, _ = await fetch(http, stack)
    assert response.headers["Cache-Control"] == "public, max-age=300"


async def test_jwks_cache_control_follows_keys_jwks_max_age(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"keys": {"jwks_max_age": "90s"}})
    response, _ = await fetch(http, stack)
    assert response.headers["Cache-Control"] == "public, max-age=90"


async def test_jwks_of_a_stale_key_set_view_is_refused_and_not_cacheable(
    stack: DemoStack, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A view older than three refresh intervals (the key store unreachable since): it may
    # lack a pending key, or list one retired meanwhile, and verifiers would cache it.
    assert stack.proxy is not None
    monkeypatch.setattr(stack.proxy.keys, "fresh", lambda: False)
    async with http.get(stack.urls["proxy"] + JWKS) as response:
        assert response.status == 503
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    assert body == {"status": "unavailable", "failing": ["signing_key"]}
    assert "keys" not in body
