"""Replay protection of the upstream verifier (issue 7, part 3): a write token opens one
request only, and so does its malleated (r, n - s) twin, because the cache keys on the jti.

Tokens are genuine ones of a running proxy, verified against its real JWKS on loopback; the
caches are the memory one and a real Redis (127.0.0.1:6379; the Redis cases skip locally
when it is down and fail under CI=true). Time moves by an injected clock, never by sleeping.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as redis
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.utils import base64url_decode, base64url_encode

from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack
from dragoman.tokens.mint import MintedToken
from dragoman.tokens.replay import (
    KEY_PREFIX,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    replay_key,
)
from dragoman.tokens.verify import TokenRejected, TokenVerifier, VerifiedToken, verify_aiohttp

from .support import PM, Tokens

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""n, the order of the P-256 group: (r, n - s) is the twin of the ES256 signature (r, s)."""
CREATE = "payment_methods:create"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}


class Clock:
    """A wall clock that tests move by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cache(request: pytest.FixtureRequest) -> ReplayCache:
    """Each behaviour test runs with the memory cache and with the Redis one."""
    if request.param == "redis":
        return RedisReplayCache.from_url(request.getfixturevalue("redis_url"))
    return MemoryReplayCache()


def make_verifier(stack: DemoStack, **options: Any) -> TokenVerifier:
    """A verifier like the demo platform's, with ``options`` (replay_cache, clock...)."""
    return TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=stack.urls["platform"],
        **options,
    )


@pytest.fixture
async def verifiers(stack: DemoStack) -> AsyncIterator[Callable[..., TokenVerifier]]:
    """Build verifiers for the running stack; each is closed (with its cache) at the end."""
    made: list[TokenVerifier] = []

    def build(**options: Any) -> TokenVerifier:
        made.append(make_verifier(stack, **options))
        return made[-1]

    yield build
    for verifier in made:
        await verifier.close()


@pytest.fixture
def once(verifiers: Callable[..., TokenVerifier], cache: ReplayCache) -> TokenVerifier:
    """A verifier with the parametrised replay cache."""
    return verifiers(replay_cache=cache)


# -- helpers -------------------------------------------------------------------------------


async def write_token(tokens: Tokens) -> MintedToken:
    """alice's genuine token to add a payment method on the demo platform."""
    return await tokens.mint(method="POST", scope=CREATE)


async def write(verifier: TokenVerifier, token: str, **options: Any) -> VerifiedToken:
    return await verifier.verify(
        token, method="POST", path=PM, scope=CREATE, customer="cus_alice", **options
    )


async def read(verifier: TokenVerifier, token: str, **options: Any) -> VerifiedToken:
    return await verifier.verify(
        token, method="GET", path=PM, scope="payment_methods:list", customer="cus_alice", **options
    )


async def refusal(call: Awaitable[VerifiedToken]) -> tuple[str, int]:
    with pytest.raises(TokenRejected) as caught:
        await call
    return caught.value.reason, caught.value.status


def twin_of(token: str) -> str:
    """The same header and payload with the malleated signature (r, n - s)."""
    signing_input, _, signature = token.rpartition(".")
    raw = base64url_decode(signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin = r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big")
    return f"{signing_input}.{base64url_encode(twin).decode('ascii')}"


async def public_key(tokens: Tokens, token: str) -> ec.EllipticCurvePublicKey:
    """The published key named by the token's kid, as a cryptography key."""
    key = jwt.PyJWKSet.from_dict(await tokens.jwks())[jwt.get_unverified_header(token)["kid"]]
    assert isinstance(key.key, ec.EllipticCurvePublicKey)
    return key.key


def signature_verifies(key: ec.EllipticCurvePublicKey, token: str) -> bool:
    signing_input, _, signature = token.rpartition(".")
    raw = base64url_decode(signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# -- once-only writes (both caches) --------------------------------------------------------


async def test_a_write_token_verifies_once_and_its_replay_is_refused(
    tokens: Tokens, once: TokenVerifier
) -> None:
    minted = await write_token(tokens)
    assert (await write(once, minted.value)).jti == minted.jti
    assert await refusal(write(once, minted.value)) == ("token_replayed", 401)


async def test_the_malleated_twin_verifies_but_is_refused_after_the_original_was_used(
    tokens: Tokens, once: TokenVerifier
) -> None:
    token = (await write_token(tokens)).value
    twin = twin_of(token)
    key = await public_key(tokens, token)
    assert twin != token
    # Two different byte strings, two valid signatures: only the jti says they are one token.
    assert signature_verifies(key, token) and signature_verifies(key, twin)

    await write(once, token)
    assert await refusal(write(once, twin)) == ("token_replayed", 401)


async def test_the_original_is_refused_after_its_malleated_twin_was_used_first(
    tokens: Tokens, once: TokenVerifier
) -> None:
    token = (await write_token(tokens)).value
    twin = twin_of(token)
    assert (await write(once, twin)).jti == (await tokens.decode(token))["jti"]
    assert await refusal(write(once, token)) == ("token_replayed", 401)


async def test_a_read_token_may_be_used_several_times(tokens: Tokens, once: TokenVerifier) -> None:
    token = (await tokens.mint()).value
    for _ in range(3):
        await read(once, token)


async def test_a_read_token_is_once_only_when_the_call_asks_for_it(
    tokens: Tokens, once: TokenVerifier
) -> None:
    token = (await tokens.mint()).value
    await read(once, token, once=True)
    assert await refusal(read(once, token, once=True)) == ("token_replayed", 401)


async def test_two_write_tokens_with_different_jtis_both_pass(
    tokens: Tokens, once: TokenVerifier
) -> None:
    first, second = await write_token(tokens), await write_token(tokens)
    assert first.jti != second.jti
    assert (await write(once, first.value)).jti == first.jti
    assert (await write(once, second.value)).jti == second.jti


async def test_a_token_refused_for_another_reason_is_not_spent(
    tokens: Tokens, once: TokenVerifier
) -> None:
    # The replay check runs last: a refused token leaves nothing in the cache.
    token = (await write_token(tokens)).value
    wrong_customer = once.verify(token, method="POST", path=PM, scope=CREATE, customer="cus_bob")
    assert await refusal(wrong_customer) == ("customer_mismatch", 403)
    await write(once, token)


# -- the choice of calls -------------------------------------------------------------------


async def test_a_write_may_skip_the_check_when_the_call_says_not_once(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier]
) -> None:
    verifier = verifiers(replay_cache=MemoryReplayCache())
    token = (await write_token(tokens)).value
    await write(verifier, token, once=False)
    await write(verifier, token, once=False)


async def test_without_a_replay_cache_writes_are_not_once_only(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier]
) -> None:
    verifier = verifiers()
    token = (await write_token(tokens)).value
    await write(verifier, token)
    await write(verifier, token)


async def test_once_without_a_replay_cache_is_refused_not_allowed(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier]
) -> None:
    verifier = verifiers()
    token = (await write_token(tokens)).value
    assert await refusal(write(verifier, token, once=True)) == ("replay_cache_unavailable", 503)


async def test_a_checked_call_refuses_a_jti_that_is_not_base64url(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier]
) -> None:
    cache = MemoryReplayCache()
    verifier = verifiers(replay_cache=cache)
    token = await tokens.forge(claims={"htm": "POST", "scope": CREATE, "jti": "%" * 22})
    assert await refusal(write(verifier, token)) == ("claim_invalid", 401)
    assert len(cache) == 0


# -- expiry ---------------------------------------------------------------------------------


async def test_the_memory_entry_expires_with_the_token(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier]
) -> None:
    minted = await write_token(tokens)
    clock = Clock(minted.issued_at)
    cache = MemoryReplayCache(clock=clock)
    verifier = verifiers(replay_cache=cache, clock=clock)
    await write(verifier, minted.value)

    clock.now = minted.expires_at - 0.5  # the token still verifies ...
    assert await refusal(write(verifier, minted.value)) == ("token_replayed", 401)
    clock.now = minted.expires_at + 30 - 0.5  # ... and may on a clock 30 s behind ...
    assert await refusal(write(verifier, minted.value)) == ("token_expired", 401)
    assert len(cache) == 1  # ... so its entry is still there

    clock.now = minted.expires_at + 30  # dead on every clock within the leeway: so is its entry
    assert len(cache) == 0


@pytest.mark.redis
async def test_the_redis_entry_expires_with_the_token(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier], redis_url: str
) -> None:
    minted = await write_token(tokens)
    verifier = verifiers(
        replay_cache=RedisReplayCache.from_url(redis_url), clock=lambda: minted.issued_at
    )
    await write(verifier, minted.value)
    client = redis.Redis.from_url(redis_url)
    try:
        pttl = await client.pttl(KEY_PREFIX + replay_key(TOKEN_ISSUER, minted.jti))
    finally:
        await client.aclose()
    life_ms = (minted.expires_at + 30 - minted.issued_at) * 1000  # exp - now + leeway
    assert life_ms - 10_000 < pttl <= life_ms


async def test_the_redis_key_is_a_hash_of_the_issuer_and_the_jti() -> None:
    key = replay_key(TOKEN_ISSUER, "A" * 22)
    assert len(key) == 64 and int(key, 16) >= 0
    assert "A" * 22 not in key
    assert replay_key("dragoman-demoA", "A" * 21) != replay_key("dragoman-demo", "A" * 22)


# -- limits and failures --------------------------------------------------------------------


async def test_a_full_memory_cache_refuses_new_tokens_instead_of_evicting_live_ones(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier]
) -> None:
    verifier = verifiers(replay_cache=MemoryReplayCache(max_entries=2))
    minted = [await write_token(tokens) for _ in range(3)]
    await write(verifier, minted[0].value)
    await write(verifier, minted[1].value)
    assert await refusal(write(verifier, minted[2].value)) == ("replay_cache_full", 503)
    # The live entries stayed: both used tokens are still refused as replays.
    assert await refusal(write(verifier, minted[0].value)) == ("token_replayed", 401)
    assert await refusal(write(verifier, minted[1].value)) == ("token_replayed", 401)


async def test_a_full_memory_cache_makes_room_by_sweeping_expired_entries() -> None:
    clock = Clock(1000.0)
    cache = MemoryReplayCache(max_entries=1, clock=clock)
    assert await cache.first_use("a", 60)
    clock.now += 60
    assert await cache.first_use("b", 60)
    assert len(cache) == 1


async def test_with_redis_down_a_write_is_refused_as_unavailable(
    tokens: Tokens, verifiers: Callable[..., TokenVerifier], closed_port: int
) -> None:
    verifier = verifiers(
        replay_cache=RedisReplayCache.from_url(f"redis://127.0.0.1:{closed_port}/0")
    )
    token = (await write_token(tokens)).value
    assert await refusal(write(verifier, token)) == ("replay_cache_unavailable", 503)
    assert await refusal(write(verifier, token)) == ("replay_cache_unavailable", 503)


async def test_an_unavailable_cache_is_a_503_problem_over_http(
    stack: DemoStack,
    tokens: Tokens,
    closed_port: int,
    serve: Callable[[web.Application], Any],
    http: aiohttp.ClientSession,
) -> None:
    holder: dict[str, TokenVerifier] = {}

    async def create(request: web.Request) -> web.Response:
        await verify_aiohttp(holder["verifier"], request, scope=CREATE, customer="cus_alice")
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post(PM, create)
    async with serve(app) as url:
        holder["verifier"] = TokenVerifier(
            jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
            issuer=TOKEN_ISSUER,
            audience=AUDIENCE,
            origin=url,
            replay_cache=RedisReplayCache.from_url(f"redis://127.0.0.1:{closed_port}/0"),
        )
        try:
            minter = tokens.minter()
            minted = await minter.mint(tokens.request(method="POST", scope=CREATE, url=url + PM))
            headers = {"Authorization": f"Bearer {minted.value}"}
            async with http.post(url + PM, headers=headers, json=CARD) as response:
                assert response.status == 503
                assert response.content_type == "application/problem+json"
                assert (await response.json(content_type=None))["code"] == (
                    "replay_cache_unavailable"
                )
                assert response.headers["WWW-Authenticate"] == "Bearer"
        finally:
            await holder["verifier"].close()


# -- through real HTTP: dragoman in front of the demo platform -------------------------------


def caller(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def test_writes_through_dragoman_succeed_with_a_fresh_token_each_time(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    for _ in range(2):
        async with http.post(
            stack.urls["proxy"] + PM, headers=caller(stack), json=CARD
        ) as response:
            assert response.status == 201
    accepted = [s.jti for s in stack.platform.seen if s.method == "POST"]
    assert len(accepted) == 2 and accepted[0] != accepted[1]
    assert all(s.accepted for s in stack.platform.seen)


async def test_the_token_the_platform_saw_is_refused_when_replayed_directly(
    stack: DemoStack, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keep the exact bearer the platform received from dragoman (a spy on its verifier).
    received: list[str | None] = []
    genuine = stack.platform.verifier.verify

    async def spy(token: str | None, **request: Any) -> VerifiedToken:
        received.append(token)
        return await genuine(token, **request)

    monkeypatch.setattr(stack.platform.verifier, "verify", spy)
    async with http.post(stack.urls["proxy"] + PM, headers=caller(stack), json=CARD) as response:
        assert response.status == 201
    methods_before = len(stack.platform.customers["cus_alice"].payment_methods)

    [token] = received
    assert token is not None
    async with http.post(
        stack.urls["platform"] + PM, headers={"Authorization": f"Bearer {token}"}, json=CARD
    ) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert (await response.json(content_type=None))["code"] == "token_replayed"
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert len(stack.platform.customers["cus_alice"].payment_methods) == methods_before
    assert [(s.accepted, s.reason) for s in stack.platform.seen[-1:]] == [(False, "token_replayed")]
