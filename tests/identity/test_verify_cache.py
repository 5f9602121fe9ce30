"""Verified tokens are remembered (keyed on the whole token), but never past their key."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from identity_helpers import PM, issuer_table

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack


async def status(http: aiohttp.ClientSession, stack: DemoStack, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
        return response.status


@pytest.mark.parametrize(
    "kid",
    ["another", "the same"],
    ids=["its-kid-leaves-the-key-set", "another-key-takes-its-kid"],
)
async def test_a_remembered_token_is_refused_once_its_key_leaves_the_key_set(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    http: aiohttp.ClientSession,
    kid: str,
) -> None:
    """The issuer rotates its RSA key out. Under the same kid too ("main", "1": a
    compromised key replaced), where the cache, asking only whether the kid was still
    there, kept accepting the old key's tokens until verify_cache_ttl ran out."""
    issuer = await serve_issuer()
    table = issuer_table(issuer, jwks_cache_ttl=1, jwks_refetch_interval=1)
    stack = await make_stack({"identity": {"oidc": [table], "verify_cache_ttl": 600}})
    token = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    assert await status(http, stack, token) == 200
    assert await status(http, stack, token) == 200  # from the cache
    issuer.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kid == "another":
        issuer.rsa_kid = "rsa-" + secrets.token_hex(4)
    for _ in range(100):
        if await status(http, stack, token) == 401:
            break
        await asyncio.sleep(0.05)
    assert await status(http, stack, token) == 401
    fresh = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    assert await status(http, stack, fresh) == 200


@pytest.mark.parametrize(
    "change", [{"use": "enc"}, {"alg": "PS256"}], ids=["now-for-encryption", "now-for-another-alg"]
)
async def test_a_remembered_token_is_refused_once_its_key_may_no_longer_sign_it(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    http: aiohttp.ClientSession,
    change: dict[str, str],
) -> None:
    """The same public key under the same kid, republished for another use or algorithm:
    a fresh verification refuses the token (key_mismatch), so the cache must not serve it."""
    issuer = await serve_issuer()
    table = issuer_table(issuer, jwks_cache_ttl=1, jwks_refetch_interval=1)
    stack = await make_stack({"identity": {"oidc": [table], "verify_cache_ttl": 600}})
    token = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    assert await status(http, stack, token) == 200
    published = issuer.jwks()
    for jwk in published["keys"]:
        jwk.update(change)
    issuer.jwks = lambda: published  # type: ignore[method-assign]
    for _ in range(100):
        if await status(http, stack, token) == 401:
            break
        await asyncio.sleep(0.05)
    assert await status(http, stack, token) == 401


async def test_a_remembered_token_is_refused_while_the_key_set_is_unusable(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    http: aiohttp.ClientSession,
) -> None:
    issuer = await serve_issuer()
    table = issuer_table(issuer, jwks_cache_ttl=1, jwks_refetch_interval=1, jwks_max_stale=0)
    stack = await make_stack({"identity": {"oidc": [table], "verify_cache_ttl": 600}})
    token = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    assert await status(http, stack, token) == 200
    issuer.jwks_available = False
    for _ in range(100):
        if await status(http, stack, token) == 503:
            break
        await asyncio.sleep(0.05)
    assert await status(http, stack, token) == 503
