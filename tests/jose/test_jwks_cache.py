"""JwksCache and HttpKeySetFetcher against a real development issuer over HTTP, with an
injected clock (SEMANTICS §6: keys within their max age still verify; then fail closed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jose_helpers import MAX_STALE, REFETCH_INTERVAL, TTL, ManualClock

from dragoman.demo.issuer import DevIssuer
from dragoman.jose.jwks import (
    MAX_DOCUMENT_BYTES,
    FetchError,
    HttpKeySetFetcher,
    JwksCache,
    JwksUnavailable,
)
from dragoman.jose.strict import JoseError
from dragoman.settings import check_http_url

Serve = Callable[[web.Application], AbstractAsyncContextManager[str]]
MakeCache = Callable[..., JwksCache]


def json_app(documents: dict[str, Any]) -> web.Application:
    """An app answering GET <path> with the JSON document ``documents[path]``.

    A callable document is called with the server's own origin (to name itself).
    """
    app = web.Application()
    for path, document in documents.items():

        async def handler(request: web.Request, document: Any = document) -> web.Response:
            body = document(str(request.url.origin())) if callable(document) else document
            return web.json_response(body)

        app.router.add_get(path, handler)
    return app


DISCOVERY = "/.well-known/openid-configuration"


def rotate_rsa_key(issuer: DevIssuer) -> str:
    """The issuer replaces its RSA key (and kid); returns the old kid."""
    old = issuer.rsa_kid
    issuer.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.rsa_kid = "rsa-rotated"
    return old


# -- caching within the TTL -------------------------------------------------------------------


async def test_first_lookup_fetches_the_issuers_public_key(
    dev_issuer: DevIssuer, make_cache: MakeCache
) -> None:
    key = await make_cache(dev_issuer).key(dev_issuer.rsa_kid)
    assert key.kid == dev_issuer.rsa_kid
    assert key.alg == "RS256"
    assert key.use == "sig"
    assert isinstance(key.public_key, rsa.RSAPublicKey)
    assert key.public_key.public_numbers() == dev_issuer.rsa_key.public_key().public_numbers()
    assert dev_issuer.jwks_fetches == 1


async def test_keys_are_reused_within_the_ttl(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    clock.advance(TTL - 1)
    await cache.key(dev_issuer.rsa_kid)
    await cache.key(dev_issuer.ec_kid)
    assert dev_issuer.jwks_fetches == 1
    assert cache.fetches == 1


async def test_keys_are_refetched_once_the_ttl_has_passed(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    clock.advance(TTL)
    await cache.key(dev_issuer.rsa_kid)
    assert dev_issuer.jwks_fetches == 2


async def test_key_removed_by_the_issuer_is_retired_after_the_refetch(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    old_kid = dev_issuer.rsa_kid
    await cache.key(old_kid)
    rotate_rsa_key(dev_issuer)
    clock.advance(TTL)
    with pytest.raises(JoseError) as refused:
        await cache.key(old_kid)
    # A key seen in the set and then dropped is told apart from one never seen.
    assert refused.value.reason == "key_retired"
    with pytest.raises(JoseError) as never_seen:
        await cache.key("never-seen")
    assert never_seen.value.reason == "kid_unknown"


async def test_new_key_is_found_once_the_refetch_interval_has_passed(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    rotate_rsa_key(dev_issuer)
    clock.advance(REFETCH_INTERVAL)
    assert (await cache.key("rsa-rotated")).kid == "rsa-rotated"
    assert dev_issuer.jwks_fetches == 2


# -- provider outages -------------------------------------------------------------------------


async def test_stale_keys_verify_while_the_provider_answers_errors(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    dev_issuer.jwks_available = False
    clock.advance(TTL + MAX_STALE)  # the last moment the stale keys may be used
    assert (await cache.key(dev_issuer.rsa_kid)).kid == dev_issuer.rsa_kid
    assert dev_issuer.jwks_fetches == 2  # it did try


async def test_stale_keys_verify_while_the_provider_is_unreachable(
    serve: Serve, make_cache: MakeCache, clock: ManualClock
) -> None:
    issuer = DevIssuer()
    async with serve(issuer.app()) as url:
        issuer.issuer = url
        cache = make_cache(issuer)
        await cache.key(issuer.rsa_kid)
    clock.advance(TTL + MAX_STALE / 2)
    assert (await cache.key(issuer.rsa_kid)).kid == issuer.rsa_kid
    assert cache.fetches == 2


async def test_keys_beyond_max_stale_are_unavailable(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    dev_issuer.jwks_available = False
    clock.advance(TTL + MAX_STALE + 1)
    with pytest.raises(JwksUnavailable):
        await cache.key(dev_issuer.rsa_kid)


async def test_keys_beyond_max_stale_are_unavailable_when_the_provider_is_unreachable(
    serve: Serve, make_cache: MakeCache, clock: ManualClock
) -> None:
    issuer = DevIssuer()
    async with serve(issuer.app()) as url:
        issuer.issuer = url
        cache = make_cache(issuer)
        await cache.key(issuer.rsa_kid)
    clock.advance(TTL + MAX_STALE + 1)
    with pytest.raises(JwksUnavailable):
        await cache.key(issuer.rsa_kid)


async def test_zero_max_stale_fails_closed_as_soon_as_the_ttl_has_passed(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer, max_stale=0)
    await cache.key(dev_issuer.rsa_kid)
    dev_issuer.jwks_available = False
    clock.advance(TTL + 1)
    with pytest.raises(JwksUnavailable):
        await cache.key(dev_issuer.rsa_kid)


async def test_provider_down_before_any_fetch_is_unavailable(
    dev_issuer: DevIssuer, make_cache: MakeCache
) -> None:
    dev_issuer.jwks_available = False
    with pytest.raises(JwksUnavailable):
        await make_cache(dev_issuer).key(dev_issuer.rsa_kid)


async def test_recovered_provider_makes_keys_usable_again(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    dev_issuer.jwks_available = False
    clock.advance(TTL + MAX_STALE + 1)
    with pytest.raises(JwksUnavailable):
        await cache.key(dev_issuer.rsa_kid)
    dev_issuer.jwks_available = True
    clock.advance(REFETCH_INTERVAL)
    assert (await cache.key(dev_issuer.rsa_kid)).kid == dev_issuer.rsa_kid


async def test_failing_provider_is_retried_at_most_once_per_refetch_interval(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    dev_issuer.jwks_available = False
    clock.advance(TTL)
    for _ in range(20):
        await cache.key(dev_issuer.rsa_kid)
        clock.advance(1)
    assert dev_issuer.jwks_fetches == 2


# -- concurrency and unknown kids -------------------------------------------------------------


@pytest.mark.parametrize("refetch_interval", [REFETCH_INTERVAL, 0.0])
async def test_concurrent_lookups_on_a_cold_cache_cause_a_single_fetch(
    dev_issuer: DevIssuer, make_cache: MakeCache, refetch_interval: float
) -> None:
    cache = make_cache(dev_issuer, refetch_interval=refetch_interval)
    kids = [dev_issuer.rsa_kid, dev_issuer.ec_kid] * 10
    keys = await asyncio.gather(*(cache.key(kid) for kid in kids))
    assert [k.kid for k in keys] == kids
    assert dev_issuer.jwks_fetches == 1


@pytest.mark.parametrize("refetch_interval", [REFETCH_INTERVAL, 0.0])
async def test_concurrent_lookups_after_the_ttl_cause_a_single_refetch(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock, refetch_interval: float
) -> None:
    cache = make_cache(dev_issuer, refetch_interval=refetch_interval)
    await cache.key(dev_issuer.rsa_kid)
    clock.advance(TTL)
    await asyncio.gather(*(cache.key(dev_issuer.rsa_kid) for _ in range(20)))
    assert dev_issuer.jwks_fetches == 2


async def test_unknown_kid_is_refused(dev_issuer: DevIssuer, make_cache: MakeCache) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    with pytest.raises(JoseError) as refused:
        await cache.key("kid-nobody-published")
    assert refused.value.reason == "kid_unknown"


async def test_unknown_kids_cause_at_most_one_fetch_per_refetch_interval(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)

    async def flood() -> None:
        for n in range(100):
            with pytest.raises(JoseError):
                await cache.key(f"random-{n}")

    await flood()
    assert dev_issuer.jwks_fetches == 1
    clock.advance(REFETCH_INTERVAL - 1)
    await flood()
    assert dev_issuer.jwks_fetches == 1
    clock.advance(1)
    await flood()
    assert dev_issuer.jwks_fetches == 2


async def test_concurrent_unknown_kids_cause_at_most_one_fetch(
    dev_issuer: DevIssuer, make_cache: MakeCache, clock: ManualClock
) -> None:
    cache = make_cache(dev_issuer)
    await cache.key(dev_issuer.rsa_kid)
    clock.advance(REFETCH_INTERVAL)
    outcomes = await asyncio.gather(
        *(cache.key(f"random-{n}") for n in range(100)), return_exceptions=True
    )
    assert all(isinstance(o, JoseError) and o.reason == "kid_unknown" for o in outcomes)
    assert dev_issuer.jwks_fetches == 2


# -- what the key set may contain -------------------------------------------------------------


async def test_private_symmetric_and_unnamed_keys_in_the_set_are_skipped(
    serve: Serve, make_cache: MakeCache
) -> None:
    issuer = DevIssuer()
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.rsa_key))
    published = issuer.jwks()["keys"]
    document = {
        "keys": [
            {**private, "kid": "private", "alg": "RS256"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "symmetric", "alg": "HS256"},
            {**published[0], "kid": ""},
            "not-a-key",
            {"kty": "RSA", "kid": "broken", "n": "AA", "e": "AQAB"},
            {**published[0], "kid": "alg-none", "alg": "none"},
            published[1],
        ]
    }
    async with serve(json_app({"/jwks.json": document})) as url:
        issuer.issuer = url
        cache = make_cache(issuer, jwks_uri=f"{url}/jwks.json")
        assert (await cache.key(issuer.ec_kid)).kid == issuer.ec_kid
        for kid in ("private", "symmetric", "broken", "alg-none"):
            with pytest.raises(JoseError) as refused:
                await cache.key(kid)
            assert refused.value.reason == "kid_unknown"


# -- the fetcher ------------------------------------------------------------------------------


async def test_discovery_finds_the_key_set(dev_issuer: DevIssuer, make_cache: MakeCache) -> None:
    cache = make_cache(dev_issuer, discover=True)
    assert (await cache.key(dev_issuer.ec_kid)).kid == dev_issuer.ec_kid
    assert dev_issuer.jwks_fetches == 1


async def test_discovery_naming_another_issuer_is_refused(
    dev_issuer: DevIssuer, session: aiohttp.ClientSession
) -> None:
    fetcher = HttpKeySetFetcher(session=lambda: session, timeout=5.0, issuer=dev_issuer.issuer)
    dev_issuer.issuer = "https://login.attacker.example"
    with pytest.raises(FetchError, match="names another issuer"):
        await fetcher.fetch()
    assert dev_issuer.jwks_fetches == 0


async def test_discovery_naming_another_issuer_leaves_the_cache_unavailable(
    dev_issuer: DevIssuer, make_cache: MakeCache
) -> None:
    cache = make_cache(dev_issuer, discover=True)
    dev_issuer.issuer += "/"  # discovery now names a different string
    with pytest.raises(JwksUnavailable):
        await cache.key(dev_issuer.rsa_kid)


async def test_discovered_plain_http_jwks_uri_on_a_remote_host_is_refused(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    def discovery(origin: str) -> dict[str, str]:
        return {"issuer": origin, "jwks_uri": "http://keys.attacker.example/jwks.json"}

    async with serve(json_app({DISCOVERY: discovery})) as url:
        fetcher = HttpKeySetFetcher(
            session=lambda: session,
            timeout=5.0,
            issuer=url,
            check_uri=lambda uri: check_http_url(uri, require_tls=True),
        )
        with pytest.raises(FetchError, match="jwks_uri"):
            await fetcher.fetch()


async def test_discovery_without_jwks_uri_is_refused(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    async with serve(json_app({DISCOVERY: lambda origin: {"issuer": origin}})) as url:
        fetcher = HttpKeySetFetcher(session=lambda: session, timeout=5.0, issuer=url)
        with pytest.raises(FetchError, match="no jwks_uri"):
            await fetcher.fetch()


async def test_redirects_are_not_followed(
    serve: Serve, dev_issuer: DevIssuer, session: aiohttp.ClientSession
) -> None:
    app = web.Application()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{dev_issuer.issuer}/jwks.json")

    app.router.add_get("/jwks.json", redirect)
    async with serve(app) as url:
        fetcher = HttpKeySetFetcher(
            session=lambda: session, timeout=5.0, jwks_uri=f"{url}/jwks.json"
        )
        with pytest.raises(FetchError, match="302"):
            await fetcher.fetch()
    assert dev_issuer.jwks_fetches == 0


async def test_oversized_key_set_document_is_refused(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    document = {"keys": [], "padding": "x" * MAX_DOCUMENT_BYTES}
    async with serve(json_app({"/jwks.json": document})) as url:
        fetcher = HttpKeySetFetcher(
            session=lambda: session, timeout=5.0, jwks_uri=f"{url}/jwks.json"
        )
        with pytest.raises(FetchError, match="too large"):
            await fetcher.fetch()


async def test_large_key_set_document_within_the_limit_is_read_whole(
    serve: Serve, make_cache: MakeCache
) -> None:
    # Providers that publish certificate chains (x5c) serve key sets of tens of kilobytes;
    # they arrive in several network reads.
    issuer = DevIssuer()
    document = {**issuer.jwks(), "padding": "x" * (MAX_DOCUMENT_BYTES // 2)}
    async with serve(json_app({"/jwks.json": document})) as url:
        issuer.issuer = url
        cache = make_cache(issuer)
        assert (await cache.key(issuer.rsa_kid)).kid == issuer.rsa_kid


@pytest.mark.parametrize(
    ("document", "problem"),
    [([{"kty": "RSA"}], "not an object"), ({"keys": "none"}, "no 'keys' list")],
)
async def test_key_set_document_of_the_wrong_shape_is_refused(
    serve: Serve, session: aiohttp.ClientSession, document: Any, problem: str
) -> None:
    async with serve(json_app({"/jwks.json": document})) as url:
        fetcher = HttpKeySetFetcher(
            session=lambda: session, timeout=5.0, jwks_uri=f"{url}/jwks.json"
        )
        with pytest.raises(FetchError, match=problem):
            await fetcher.fetch()


async def test_key_set_and_discovery_fetches_ask_caches_on_the_way_to_revalidate(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    # A shared cache between dragoman and the issuer (or an upstream and dragoman) must
    # not answer a refetch for an unknown kid with the key set it held: a new key would
    # stay unknown, a removed one would stay trusted, for that cache's max-age.
    asked: list[str | None] = []

    async def jwks(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Cache-Control"))
        return web.json_response({"keys": []})

    async def discovery(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Cache-Control"))
        origin = str(request.url.origin())
        return web.json_response({"issuer": origin, "jwks_uri": origin + "/jwks.json"})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_get(DISCOVERY, discovery)
    async with serve(app) as url:
        await HttpKeySetFetcher(session=lambda: session, timeout=5.0, issuer=url).fetch()
    assert asked == ["no-cache", "no-cache"]
