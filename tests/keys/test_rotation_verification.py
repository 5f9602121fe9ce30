"""Issue 3's acceptance, end to end: the proxy's key ring, its minter and the upstream
verifier library share one injected clock, and the verifier reads the JWKS over HTTP from a
real proxy application (``build_app(settings, clock=clock)``), on SQLite and PostgreSQL.

Timeline of these tests (keys.prepublish 2 min, overlap 60 s, jwks max-age 60 s): K1 signs
from T0; ``ring.rotate()`` at T0 schedules K2, published at once, signing from R = T0 + 120;
K1 verifies until R + 60. The verifier caches the JWKS for the advertised 60 s and has seen
K1 (it verified a token at T0), as an upstream in service would have.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.utils import base64url_encode

from dragoman.app import PROXY_KEY, build_app, proxy_runner
from dragoman.demo.console import console_app
from dragoman.demo.platform import PaymentPlatform
from dragoman.demo.runner import (
    AUDIENCE,
    TOKEN_ISSUER,
    DemoPorts,
    DemoStack,
    demo_settings,
)
from dragoman.keys.jwk import ec_public_jwk, raw_signature, thumbprint
from dragoman.keys.ring import KeyRing
from dragoman.keys.sealing import new_master_key
from dragoman.keys.timeline import KeyRecord
from dragoman.settings import load_settings
from dragoman.tokens.mint import MintedToken, TokenMinter, TokenRequest
from dragoman.tokens.verify import (
    DEFAULT_JWKS_MAX_STALE,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
)

T0 = 1_700_000_000.0
PREPUBLISH = 120.0
OVERLAP = 60.0
JWKS_MAX_AGE = 60.0
R = T0 + PREPUBLISH
"""The switch: K2 starts to sign, K1 becomes previous."""
UPSTREAM = "http://127.0.0.1:8090"
PM = "/v1/customers/cus_alice/payment-methods"
KEYS = {
    "prepublish": f"{int(PREPUBLISH)}s",
    "overlap": f"{int(OVERLAP)}s",
    "jwks_max_age": f"{int(JWKS_MAX_AGE)}s",
    # Rotation here is driven by the test (ring.rotate / `keys rotate`), never by a timer.
    "auto_rotate": False,
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_for(state_dir: Path, database_url: str, **urls: str) -> Any:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "master.key").write_text(new_master_key() + "\n")
    data = demo_settings(
        proxy=urls.get("proxy", "http://127.0.0.1:8080"),
        platform=urls.get("platform", UPSTREAM),
        issuer=urls.get("issuer", "http://127.0.0.1:8070"),
        console=urls.get("console", "http://127.0.0.1:8060"),
        state_dir=state_dir,
    )
    data["keys"].update(KEYS)
    data["tokens"]["ttl"] = "5m"
    data["store"]["database_url"] = database_url
    return load_settings(overrides=data)


@dataclasses.dataclass
class Deployment:
    """A running proxy (its JWKS over HTTP) and an upstream verifier, on one clock."""

    clock: Clock
    ring: KeyRing
    minter: TokenMinter
    verifier: TokenVerifier

    async def mint(self) -> MintedToken:
        return await self.minter.mint(
            TokenRequest(
                customer="cus_alice",
                scope="payment_methods:list",
                principal="alice",
                principal_issuer="http://127.0.0.1:8070",
                cloud_account="acct-1001",
                method="GET",
                url=UPSTREAM + PM,
            )
        )

    async def verify(self, token: str) -> VerifiedToken:
        return await self.verifier.verify(
            token, method="GET", path=PM, scope="payment_methods:list", customer="cus_alice"
        )

    async def refusal(self, token: str) -> str:
        with pytest.raises(TokenRejected) as caught:
            await self.verify(token)
        return caught.value.reason

    def record(self, kid: str) -> KeyRecord:
        [found] = [k for k in self.ring.keys if k.kid == kid]
        return found

    async def rotate(self) -> KeyRecord:
        """K2, scheduled now; it activates prepublish later."""
        made = await self.ring.rotate()
        assert made is not None
        return made

    async def forge(
        self, *, sign: Callable[[bytes], Any], kid: str, iat: float, ttl: int = 300
    ) -> str:
        """A token like the minter's, for ``kid``, issued at ``iat``, signed by ``sign``."""
        claims = {
            "iss": TOKEN_ISSUER,
            "aud": AUDIENCE,
            "sub": "cus_alice",
            "scope": "payment_methods:list",
            "act": {"sub": "alice", "iss": "http://127.0.0.1:8070"},
            "cloud_account": "acct-1001",
            "iat": int(iat),
            "nbf": int(iat),
            "exp": int(iat) + ttl,
            "jti": base64url_encode(b"forged-token-jti-0123").decode(),
            "htm": "GET",
            "htu": UPSTREAM + PM,
        }
        header = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
        signing_input = b".".join(
            base64url_encode(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims)
        )
        signature = await sign(signing_input)
        return (signing_input + b"." + base64url_encode(signature)).decode("ascii")

    async def forge_with(self, record: KeyRecord, *, iat: float) -> str:
        """A token signed through the provider with ``record``'s key, whatever its state."""

        async def sign(data: bytes) -> bytes:
            return await self.ring.provider.sign(record.ref, data)

        return await self.forge(sign=sign, kid=record.kid, iat=iat)


@pytest.fixture
async def deployment(database_url: str, tmp_path: Path, serve: Any) -> AsyncIterator[Deployment]:
    clock = Clock(T0)
    app = build_app(settings_for(tmp_path / "proxy", database_url), clock=clock)
    proxy = app[PROXY_KEY]
    async with serve(app) as url:
        verifier = TokenVerifier(
            jwks_url=url + "/.well-known/jwks.json",
            issuer=TOKEN_ISSUER,
            audience=AUDIENCE,
            origin=UPSTREAM,
            jwks_ttl=JWKS_MAX_AGE,
            clock=clock,
            monotonic=clock,
        )
        made = Deployment(clock, proxy.keys, proxy.minter, verifier)
        # The upstream is in service: it has verified a K1 token, so it knows K1.
        first = await made.mint()
        await made.verify(first.value)
        try:
            yield made
        finally:
            await verifier.close()


# -- the overlap ---------------------------------------------------------------------------------


async def test_previous_key_token_verifies_at_rotation_plus_59_seconds(
    deployment: Deployment,
) -> None:
    k2 = await deployment.rotate()
    assert k2.activates_at == R
    deployment.clock.now = R - 1
    token = await deployment.mint()
    k1 = deployment.record(token.kid)
    assert k1.kid != k2.kid
    deployment.clock.now = R + 59
    verified = await deployment.verify(token.value)
    assert verified.kid == k1.kid


async def test_previous_key_token_is_refused_at_rotation_plus_61_seconds(
    deployment: Deployment,
) -> None:
    await deployment.rotate()
    deployment.clock.now = R - 1
    token = await deployment.mint()
    deployment.clock.now = R + 61
    assert await deployment.refusal(token.value) == "key_retired"


async def test_cached_previous_key_stops_verifying_when_its_overlap_ends(
    deployment: Deployment,
) -> None:
    # The verifier fetched the key set at R + 59 (K1 still in it, with verify_until); two
    # seconds later its cache is fresh, yet K1 must be refused by the timeline itself.
    await deployment.rotate()
    deployment.clock.now = R - 1
    token = await deployment.mint()
    deployment.clock.now = R + 59
    await deployment.verify(token.value)
    fetches = deployment.verifier.keys.fetches
    deployment.clock.now = R + 61
    assert await deployment.refusal(token.value) == "key_retired"
    assert deployment.verifier.keys.fetches == fetches


async def test_token_from_two_keys_back_is_refused_although_its_exp_is_in_the_future(
    deployment: Deployment,
) -> None:
    await deployment.rotate()
    deployment.clock.now = R - 1
    old = await deployment.mint()
    deployment.clock.now = R
    k3 = await deployment.rotate()
    deployment.clock.now = k3.activates_at + 1
    assert (await deployment.mint()).kid == k3.kid
    assert old.expires_at > deployment.clock()
    assert await deployment.refusal(old.value) == "key_retired"


# -- a pending key -------------------------------------------------------------------------------


async def test_minter_keeps_the_current_kid_while_the_successor_is_pending(
    deployment: Deployment,
) -> None:
    k1 = (await deployment.mint()).kid
    k2 = await deployment.rotate()
    kids = set()
    for now in (T0, T0 + 60, R - 1, R - 0.001):
        deployment.clock.now = now
        kids.add((await deployment.mint()).kid)
    assert kids == {k1}
    assert k2.kid not in kids


async def test_minter_switches_to_the_successor_at_its_activation(
    deployment: Deployment,
) -> None:
    k2 = await deployment.rotate()
    deployment.clock.now = R
    token = await deployment.mint()
    assert token.kid == k2.kid
    assert (await deployment.verify(token.value)).kid == k2.kid


async def test_successor_is_served_in_the_jwks_before_it_signs(deployment: Deployment) -> None:
    k2 = await deployment.rotate()
    deployment.clock.now = T0 + JWKS_MAX_AGE  # the verifier's cache has just expired
    await deployment.verify((await deployment.mint()).value)
    cached = await deployment.verifier.keys.key(k2.kid)
    assert cached.active_from == R


async def test_token_forged_with_the_pending_key_is_refused_as_key_pending(
    deployment: Deployment,
) -> None:
    k2 = await deployment.rotate()
    deployment.clock.now = T0 + 10
    forged = await deployment.forge_with(k2, iat=deployment.clock())
    assert await deployment.refusal(forged) == "key_pending"


# -- a token must be signed while its key was current -------------------------------------------


async def test_token_issued_after_its_keys_active_until_is_refused_as_key_not_current(
    deployment: Deployment,
) -> None:
    # A stale signer still using K1 after the switch (beyond the 30 s leeway), while K1 is
    # still within its overlap: the token is refused for when it was issued.
    k1 = deployment.record((await deployment.mint()).kid)
    await deployment.rotate()
    deployment.clock.now = R + 40
    forged = await deployment.forge_with(k1, iat=deployment.clock())
    assert await deployment.refusal(forged) == "key_not_current"


async def test_token_issued_before_its_key_became_current_is_refused_as_key_not_current(
    deployment: Deployment,
) -> None:
    k2 = await deployment.rotate()
    forged = await deployment.forge_with(k2, iat=R - 100)
    deployment.clock.now = R + 10
    assert await deployment.refusal(forged) == "key_not_current"


# -- retired and unknown kids --------------------------------------------------------------------


async def test_retired_kid_and_unknown_kid_are_refused_with_distinct_reasons(
    deployment: Deployment,
) -> None:
    old = await deployment.mint()
    await deployment.ring.retire(old.kid)
    stranger = ec.generate_private_key(ec.SECP256R1())
    unknown = await deployment.forge(
        sign=lambda data: _async(raw_signature(stranger, data)),
        kid=thumbprint(ec_public_jwk(stranger.public_key())),
        iat=T0 + 1,
    )
    deployment.clock.now = T0 + JWKS_MAX_AGE + 1  # past the verifier's cache of the key set
    assert await deployment.refusal(old.value) == "key_retired"
    assert await deployment.refusal(unknown) == "kid_unknown"


async def test_replacement_of_a_retired_current_key_verifies_before_the_cache_expires(
    deployment: Deployment,
) -> None:
    # An unknown kid makes the verifier fetch the key set again (at most once per refetch
    # interval, 10 s): its 60 s cache of the key set does not delay the replacement.
    old = await deployment.mint()
    await deployment.ring.retire(old.kid)
    deployment.clock.now = T0 + 11
    fresh = await deployment.mint()
    assert fresh.kid != old.kid
    assert (await deployment.verify(fresh.value)).kid == fresh.kid


async def test_verifier_accepts_the_replacement_of_a_retired_key_at_once(
    deployment: Deployment,
) -> None:
    # The verifier has cached K1 and the pending K2; K1 is retired in an emergency. The
    # replacement must verify without waiting for the verifier's cache to expire.
    await deployment.rotate()
    deployment.clock.now = T0 + JWKS_MAX_AGE
    old = await deployment.mint()
    await deployment.verify(old.value)  # refetched: K1 current, K2 pending
    deployment.clock.now = T0 + JWKS_MAX_AGE + 10
    await deployment.ring.retire(old.kid)
    deployment.clock.now = T0 + JWKS_MAX_AGE + 11
    fresh = await deployment.mint()
    assert fresh.kid != old.kid
    assert (await deployment.verify(fresh.value)).kid == fresh.kid


async def test_current_keys_tokens_verify_after_its_pending_successor_is_retired_late(
    deployment: Deployment,
) -> None:
    # The verifier cached K1 ending at R (K2 pending). K2 is retired 20 s before R: K1 goes
    # on signing past R. Its tokens must verify although the cached copy says K1 ended:
    # the verifier fetches the key set again before refusing on a timeline.
    k2 = await deployment.rotate()
    deployment.clock.now = R - 25
    await deployment.verify((await deployment.mint()).value)  # cached: K1 until R, K2
    deployment.clock.now = R - 20
    await deployment.ring.retire(k2.kid)
    deployment.clock.now = R + 31  # past K1's cached end and the leeway, within the cache
    late = await deployment.mint()
    assert late.kid != k2.kid
    assert (await deployment.verify(late.value)).kid == late.kid


async def test_a_timeline_refusal_still_holds_after_the_key_set_is_fetched_again(
    deployment: Deployment,
) -> None:
    # A stale signer's K1 token after the switch: refused, fresh key set or not.
    k1 = deployment.record((await deployment.mint()).kid)
    await deployment.rotate()
    deployment.clock.now = R + 40
    fetches = deployment.verifier.keys.fetches
    forged = await deployment.forge_with(k1, iat=deployment.clock())
    assert await deployment.refusal(forged) == "key_not_current"
    assert deployment.verifier.keys.fetches == fetches + 1
    assert await deployment.refusal(forged) == "key_not_current"
    assert deployment.verifier.keys.fetches == fetches + 1  # at most once per refetch interval


# -- the key set out of reach ----------------------------------------------------------------


class KeySetRelay:
    """The upstream's path to the proxy's JWKS, which a test can cut."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.reachable = True

    async def handle(self, request: web.Request) -> web.Response:
        if not self.reachable:
            return web.Response(status=503)
        async with aiohttp.ClientSession() as http, http.get(self.target) as answer:
            return web.Response(body=await answer.read(), content_type="application/json")


@pytest.fixture
async def relayed(
    database_url: str, tmp_path: Path, serve: Any
) -> AsyncIterator[tuple[Deployment, KeySetRelay]]:
    """A deployment whose verifier reads the key set through a :class:`KeySetRelay`, with
    the verifier's default ``jwks_max_stale``."""
    clock = Clock(T0)
    app = build_app(settings_for(tmp_path / "proxy", database_url), clock=clock)
    proxy = app[PROXY_KEY]
    async with serve(app) as url:
        relay = KeySetRelay(url + "/.well-known/jwks.json")
        relay_app = web.Application()
        relay_app.router.add_get("/jwks.json", relay.handle)
        async with serve(relay_app) as relay_url:
            verifier = TokenVerifier(
                jwks_url=relay_url + "/jwks.json",
                issuer=TOKEN_ISSUER,
                audience=AUDIENCE,
                origin=UPSTREAM,
                jwks_ttl=JWKS_MAX_AGE,
                clock=clock,
                monotonic=clock,
            )
            made = Deployment(clock, proxy.keys, proxy.minter, verifier)
            await made.verify((await made.mint()).value)  # fetched at T0
            try:
                yield made, relay
            finally:
                await verifier.close()


async def test_key_retired_while_the_key_set_is_out_of_reach_stops_verifying_past_ttl_and_overlap(
    relayed: tuple[Deployment, KeySetRelay],
) -> None:
    # A compromised key is retired while the upstream cannot fetch the key set: it cannot
    # learn of the retirement, so the stolen key verifies until its copy is too stale to
    # use. That must be the cache time plus the overlap, not the hour it once was.
    deployment, relay = relayed
    k1 = deployment.record((await deployment.mint()).kid)
    stolen = await deployment.forge_with(k1, iat=T0 + 1)
    relay.reachable = False
    await deployment.ring.retire(k1.kid)
    deployment.clock.now = T0 + JWKS_MAX_AGE + DEFAULT_JWKS_MAX_STALE + 1
    assert await deployment.refusal(stolen) == "jwks_unavailable"
    relay.reachable = True
    deployment.clock.now += 11  # past the refetch interval
    assert await deployment.refusal(stolen) == "key_retired"


async def test_a_key_set_out_of_reach_for_less_than_the_overlap_refuses_no_genuine_token(
    relayed: tuple[Deployment, KeySetRelay],
) -> None:
    deployment, relay = relayed
    relay.reachable = False
    deployment.clock.now = T0 + JWKS_MAX_AGE + DEFAULT_JWKS_MAX_STALE - 1
    token = await deployment.mint()
    assert (await deployment.verify(token.value)).kid == token.kid


async def _async(value: bytes) -> bytes:
    return value


# -- through the running demo stack over HTTP ---------------------------------------------------


class ClockedStack(DemoStack):
    """The demo stack (issuer, platform, console, proxy) with the proxy and the platform's
    verifier on an injected clock. Caller tokens come from the dev issuer on the real clock,
    so the injected clock starts at the real time and moves a few minutes at most."""

    def __init__(self, state_dir: Path, clock: Clock, database_url: str) -> None:
        super().__init__("127.0.0.1", DemoPorts(0, 0, 0, 0), state_dir)
        self.clock = clock
        self.platform = PaymentPlatform(
            TokenVerifier(
                jwks_url=self.urls["proxy"] + "/.well-known/jwks.json",
                issuer=TOKEN_ISSUER,
                audience=AUDIENCE,
                origin=self.urls["platform"],
                jwks_ttl=JWKS_MAX_AGE,
                clock=clock,
                monotonic=clock,
            )
        )
        self.platform.seed()
        self.settings = settings_for(state_dir, database_url, **self.urls)

    async def start(self) -> None:
        assert self.settings is not None
        proxy_app = build_app(self.settings, clock=self.clock)
        self.proxy = proxy_app[PROXY_KEY]
        apps = {
            "issuer": self.issuer.app(),
            "platform": self.platform.app(),
            "console": console_app(self.issuer, self.urls["proxy"]),
            "proxy": proxy_app,
        }
        for name, app in apps.items():
            runner = (
                proxy_runner(app, self.settings)
                if name == "proxy"
                else web.AppRunner(app, access_log=None)
            )
            await runner.setup()
            await web.SockSite(runner, self.sockets[name]).start()
            self.runners.append(runner)
        await self.seed_mappings()


@pytest.fixture
async def clocked_stack(tmp_path: Path, database_url: str) -> AsyncIterator[ClockedStack]:
    stack = ClockedStack(tmp_path / "stack", Clock(float(int(time.time()))), database_url)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def list_payment_methods(
    http: aiohttp.ClientSession, stack: ClockedStack, caller: str
) -> tuple[int, str | None]:
    """alice's list request through the proxy; the status and the kid the audit names."""
    async with http.get(
        stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {caller}"}
    ) as response:
        status = response.status
        await response.read()
    audit = (stack.state_dir / "audit.jsonl").read_text().splitlines()
    return status, json.loads(audit[-1]).get("kid")


async def test_upstream_keeps_accepting_requests_across_a_rotation_without_restart(
    clocked_stack: ClockedStack, http: aiohttp.ClientSession
) -> None:
    stack = clocked_stack
    assert stack.proxy is not None
    ring = stack.proxy.keys
    caller = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"], ttl=3600)
    start = stack.clock()
    before = await list_payment_methods(http, stack, caller)
    k2 = await ring.rotate()
    assert k2 is not None
    kids = [before]
    for offset in (PREPUBLISH - 1, PREPUBLISH, PREPUBLISH + OVERLAP + 1, PREPUBLISH + 200):
        stack.clock.now = start + offset
        kids.append(await list_payment_methods(http, stack, caller))
    k1 = before[1]
    assert kids == [(200, k1), (200, k1), (200, k2.kid), (200, k2.kid), (200, k2.kid)]
    assert all(seen.accepted for seen in stack.platform.seen)
    assert len(stack.platform.seen) == 5
