"""The fail-closed matrix's stack: every dependency behind a FaultProxy (tests/faults).

``make_faulty(overrides)`` (a fixture of tests/faults/conftest.py) starts the demo stack
(``make_stack``) with:

- the mapping store and key set in a fresh PostgreSQL database, through ``pg``;
- rate limits, browser sessions and anomaly state in the test Redis, each through a relay
  of its own (``limits``, ``sessions``, ``anomaly``), so a cell can take one of them down
  and a test can take all three down (one Redis for everything);
- the OIDC issuer (discovery and JWKS) through ``jwks``: the issuer's URL is the relay's;
- signing keys in KMS (moto's server, see tests/keys/contract/aws_kms_fixture.py) through
  ``kms``: the ``aws-kms`` provider, whose private keys never leave KMS;
- the demo payment platform behind ``upstream`` (its token verifier is bound to the relay's
  origin, which is what dragoman forwards to).

PostgreSQL and Redis are the real servers of the test run (``pg_url``, ``redis_url``: a
local run skips when they are down, CI=true fails).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from fault_proxy import FaultProxy
from sqlalchemy.engine import make_url

from dragoman.demo.platform import Seen
from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack
from dragoman.identity.oidc import OidcAuthenticator
from dragoman.jose.jwks import JwksCache
from dragoman.tokens.replay import MemoryReplayCache
from dragoman.tokens.verify import TokenVerifier
from keys.contract.aws_kms_fixture import REGION, unique_name

PM = "/v1/customers/cus_alice/payment-methods"
ADDRESS = "/v1/customers/cus_alice/billing-address"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}
NEW_ADDRESS = {"line1": "2 Elm Street", "city": "Springfield", "country": "US"}
COOKIE = "__Host-dragoman-csrf"
RECOVERY_DEADLINE = 20.0
"""Longest wait for a healed dependency to be used again (a bound, not a performance
claim: recovery usually takes one health interval or one request)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    request_id: str


@dataclass(frozen=True, slots=True)
class BrowserPair:
    """A browser session's CSRF pair, from the handshake."""

    token: str
    origin: str

    def headers(self) -> dict[str, str]:
        return {
            "Origin": self.origin,
            "Sec-Fetch-Site": "same-origin",
            "Cookie": f"{COOKIE}={self.token}",
            "X-CSRF-Token": self.token,
        }


@dataclass
class Faulty:
    """The stack, its relays, and the requests the tests make."""

    stack: DemoStack
    http: aiohttp.ClientSession
    pg: FaultProxy
    limits: FaultProxy
    sessions: FaultProxy
    anomaly: FaultProxy
    jwks: FaultProxy
    kms: FaultProxy
    upstream: FaultProxy
    relays: list[FaultProxy] = field(default_factory=list)

    # -- requests ----------------------------------------------------------------------------

    def token(self) -> str:
        """A fresh access token of alice (billing_admin of acct-1001 -> cus_alice)."""
        return self.stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Answer:
        rid = "flt-" + uuid.uuid4().hex  # letters and digits; no Luhn-valid digit run
        sent = {"X-Request-Id": rid, "Authorization": f"Bearer {token or self.token()}"}
        sent |= headers or {}
        async with self.http.request(
            method, self.stack.urls["proxy"] + path, headers=sent, json=body
        ) as response:
            raw = await response.read()
            parsed = json.loads(raw) if raw else {}
            return Answer(
                response.status,
                parsed if isinstance(parsed, dict) else {"items": parsed},
                dict(response.headers),
                rid,
            )

    async def handshake(self) -> BrowserPair:
        origin = self.stack.urls["proxy"]
        answer = await self.call(
            "POST",
            "/_dragoman/session",
            headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"},
        )
        assert answer.status == 201, answer.body
        return BrowserPair(answer.body["csrf_token"], origin)

    # -- what happened -----------------------------------------------------------------------

    @property
    def seen(self) -> list[Seen]:
        return list(self.stack.platform.seen)

    def audit(self) -> list[dict[str, Any]]:
        path = self.stack.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]

    async def record_of(self, answer: Answer) -> dict[str, Any]:
        """The one audit record of the request that got ``answer`` (an allowed request's
        record is written just after its answer has streamed back: wait for it). Records
        of other events that name the request (a write's write-ahead ``forward`` record,
        the mapping trail's ``mapping`` records) are not it."""
        deadline = time.monotonic() + 5
        while True:
            found = [
                r
                for r in self.audit()
                if r.get("request_id") == answer.request_id
                and r.get("event") not in ("forward", "mapping")
            ]
            if found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert len(found) == 1, found
        return found[0]

    async def assert_refused(
        self, answer: Answer, status: int, code: str, reason: str | None = None
    ) -> dict[str, Any]:
        """A problem+json refusal with this status and code, audited as a denial."""
        assert (answer.status, answer.body.get("code")) == (status, code), answer.body
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["status"] == status
        record = await self.record_of(answer)
        assert (record["decision"], record["code"], record["status"]) == ("deny", code, status)
        if reason is not None:
            assert record["reason"] == reason, record["reason"]
        return record

    async def eventually(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        status: int = 200,
    ) -> Answer:
        """Repeat the request until it gets ``status`` (automatic recovery: nothing is
        restarted); fail after RECOVERY_DEADLINE seconds."""
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while True:
            answer = await self.call(method, path, body=body, headers=headers, token=token)
            if answer.status == status or time.monotonic() > deadline:
                assert answer.status == status, answer.body
                return answer
            await asyncio.sleep(0.1)

    def assert_nothing_unsigned(self) -> None:
        """SEMANTICS §6: whatever reached the platform carried a valid scoped token."""
        refused = [s for s in self.stack.platform.seen if not s.accepted]
        assert refused == [], refused

    # -- internals the cells look at ---------------------------------------------------------

    def jwks_cache(self) -> JwksCache:
        assert self.stack.proxy is not None
        oidc = next(a for a in self.stack.proxy.authenticators if isinstance(a, OidcAuthenticator))
        return oidc.issuers[self.jwks.url].keys


def _with_address(url: str, relay: FaultProxy) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=relay.address))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


async def start_faulty(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    *,
    fresh_pg_url: str,
    redis_url: str,
    kms_endpoint: str,
    overrides: dict[str, Any] | None = None,
    oidc: dict[str, Any] | None = None,
) -> Faulty:
    """The stack with every dependency behind a relay (see the module docstring);
    ``overrides`` are merged into its settings, ``oidc`` into its issuer's table."""
    pg_target = make_url(fresh_pg_url)
    redis_target = urlsplit(redis_url)
    kms_target = urlsplit(kms_endpoint)
    relays = {
        "pg": FaultProxy((pg_target.host or "127.0.0.1", pg_target.port or 5432), name="pg"),
        "limits": FaultProxy(
            (redis_target.hostname or "127.0.0.1", redis_target.port or 6379), name="limits"
        ),
        "sessions": FaultProxy(
            (redis_target.hostname or "127.0.0.1", redis_target.port or 6379),
            name="sessions",
        ),
        "anomaly": FaultProxy(
            (redis_target.hostname or "127.0.0.1", redis_target.port or 6379),
            name="anomaly",
        ),
        "jwks": FaultProxy(name="jwks"),  # the issuer's port is known once it runs
        "kms": FaultProxy((kms_target.hostname or "127.0.0.1", kms_target.port or 80), name="kms"),
        "upstream": FaultProxy(name="upstream"),  # likewise the platform's
    }
    for relay in relays.values():
        await relay.start()
    issuer = {
        "name": "console",
        "issuer": relays["jwks"].url,
        "audiences": ["dragoman"],
        "algorithms": ["RS256", "ES256"],
        "jwks_cache_ttl": 1,
        "jwks_refetch_interval": 1,
        "http_timeout": 0.5,
        **(oidc or {}),
    }
    settings: dict[str, Any] = {
        "store": {
            "database_url": make_url(fresh_pg_url)
            .set(host="127.0.0.1", port=relays["pg"].port)
            .render_as_string(hide_password=False),
            "health_interval": 0.2,
            "query_timeout": 1,
        },
        "limits": {
            "backend": "redis",
            "redis_url": _with_address(redis_url, relays["limits"]),
            "fallback": "refuse",
            # The stack's first decision connects and loads the script through the relay: on a
            # loaded machine that took longer than the default 0.5 s. Below SLOW in the matrix.
            "timeout": 1.5,
        },
        "browser": {
            "csrf": "browser",
            "session_backend": "redis",
            "session_redis_url": _with_address(redis_url, relays["sessions"]),
        },
        "anomaly": {
            "backend": "redis",
            "redis_url": _with_address(redis_url, relays["anomaly"]),
        },
        "identity": {"oidc": [issuer]},
        "keys": {
            "provider": "aws-kms",
            "aws_kms": {
                "region": REGION,
                "endpoint_url": relays["kms"].url,
                "alias": f"alias/{unique_name('dragoman-faults')}",
            },
        },
        "upstream": {
            "url": relays["upstream"].url,
            "connect_timeout": 1,
            # Above what a stack's first forwarded request may take on a loaded machine (the
            # platform fetches dragoman's key set then); below SLOW in the matrix.
            "read_timeout": 1.5,
        },
        "reconcile": {"schedule": False},
    }
    stack = await make_stack(_merge(settings, overrides or {}))
    # The issuer is reached, and named, through its relay; tokens it mints from now on
    # carry the relay's URL as `iss`, which is the issuer dragoman is configured with.
    issuer_url = urlsplit(stack.urls["issuer"])
    relays["jwks"].retarget(issuer_url.hostname or "127.0.0.1", issuer_url.port or 80)
    stack.issuer.issuer = relays["jwks"].url
    # dragoman forwards to the upstream relay: the platform checks `htu` against it.
    platform_url = urlsplit(stack.urls["platform"])
    relays["upstream"].retarget(platform_url.hostname or "127.0.0.1", platform_url.port or 80)
    old = stack.platform.verifier
    stack.platform.verifier = TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=relays["upstream"].url,
        replay_cache=MemoryReplayCache(),  # write tokens are usable once
    )
    await old.close()
    faulty = Faulty(stack=stack, http=http, relays=list(relays.values()), **relays)
    return faulty


async def stop_faulty(faulty: Faulty) -> None:
    # Heal first so the stack shuts down like any other (pools close their connections).
    for relay in faulty.relays:
        await relay.heal()
    await faulty.stack.stop()
    for relay in faulty.relays:
        await relay.close()


MakeFaulty = Callable[..., Awaitable[Faulty]]
