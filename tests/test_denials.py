"""Every denial code of the Denial tree, provoked over real HTTP (SEMANTICS §7).

Each answer is problem+json with the stable code, a sentence, and the audit id of the
request's audit record; and nothing refused reaches the upstream.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from down_key_provider import DownKeyProvider
from dragoman.demo.runner import DemoStack
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import Denial, all_denials
from overload_support import held_upstream

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    method: str,
    path: str,
    headers: dict[str, str],
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, stack.urls["proxy"] + path, headers=headers, **kwargs) as r:
        assert r.content_type == "application/problem+json"
        return r.status, await r.json()


async def path_invalid(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    return stack, await call(
        http, stack, "GET", "/v1/customers/a%2Fb/payment-methods", alice(stack)
    )


async def body_too_large(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make({"server": {"max_body_bytes": 10}})
    body = io.BytesIO(b'{"card_number": "4111111111111111"}')
    return stack, await call(http, stack, "POST", PM, alice(stack), data=body)


async def body_timeout(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    """A chunked body that stops after its first chunk (server.body_timeout)."""
    stack = await make({"server": {"body_timeout": 0.2}})
    host, port = stack.urls["proxy"].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    token = alice(stack)["Authorization"]
    writer.write(
        f"POST {PM} HTTP/1.1\r\nHost: a\r\nAuthorization: {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        '5\r\n{"a":\r\n'.encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    assert b"application/problem+json" in head
    return stack, (int(head.split()[1]), json.loads(body))


async def bad_request(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    host, port = stack.urls["proxy"].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET " + PM.encode() + b" HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    return stack, (int(head.split()[1]), json.loads(body))


async def expectation_failed(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    return stack, await call(http, stack, "GET", PM, {**alice(stack), "Expect": "early-data"})


async def unauthenticated(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    return stack, await call(http, stack, "GET", PM, {})


async def insufficient_user_authentication(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make({"policy": {"step_up": {"read": {"max_age": "1m"}}}})
    claims = stack.issuer.claims("alice", "acct-1001", roles=["billing_admin"])
    claims["auth_time"] -= 3600
    headers = {"Authorization": f"Bearer {stack.issuer.sign(claims)}"}
    return stack, await call(http, stack, "GET", PM, headers)


async def scope_denied(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    bob = stack.issuer.token("bob", "acct-2002", roles=["viewer"])
    path = "/v1/customers/cus_bob/billing-address"
    return stack, await call(http, stack, "PUT", path, {"Authorization": f"Bearer {bob}"}, json={})


async def mapping_missing(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    token = stack.issuer.token("eve", "acct-unknown", roles=["billing_admin"])
    return stack, await call(http, stack, "GET", PM, {"Authorization": f"Bearer {token}"})


async def _set(stack: DemoStack, **changes: Any) -> None:
    assert stack.proxy is not None
    mapping = await stack.proxy.store.find_by_account("acct-1001")
    assert mapping is not None
    await stack.proxy.store.update(
        mapping.id, expected_version=mapping.version, actor="test", **changes
    )


async def mapping_inactive(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    await _set(stack, status="suspended")
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def mapping_stale(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make({"mapping": {"stale_after": "1s"}})
    from datetime import UTC, datetime, timedelta

    await _set(stack, last_validated_at=datetime.now(UTC) - timedelta(seconds=5))
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def customer_mismatch(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    path = "/v1/customers/cus_bob/payment-methods"
    return stack, await call(http, stack, "GET", path, alice(stack))


async def origin_denied(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    headers = {**alice(stack), "Origin": "https://evil.example"}
    return stack, await call(http, stack, "DELETE", f"{PM}/pm_x", headers)


async def operation_unknown(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    return stack, await call(http, stack, "GET", "/v1/customers/cus_alice/charges", alice(stack))


async def identity_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make()
    stack.issuer.jwks_available = False
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def mapping_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    dead = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    stack = await make(
        {"store": {"database_url": dead, "auto_migrate": False, "query_timeout": 1}},
        seed=False,
    )
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def key_unavailable(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    assert stack.proxy is not None
    stack.proxy.keys.provider = DownKeyProvider()
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def audit_unavailable(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is needed to make the audit sink fail for real")
    stack = await make({"audit": {"path": "/dev/full"}})
    # A small answer is read whole and its record written before any of it is sent: the
    # record fails, and the answer is refused (dragoman.forward).
    return stack, await call(http, stack, "GET", PM, alice(stack))


class ExplodingStage:
    name = "exploding"

    async def __call__(self, ctx: RequestContext) -> None:
        raise RuntimeError("a bug")


async def internal_error(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    assert stack.proxy is not None
    stack.proxy.stages = (*stack.proxy.stages[:1], ExplodingStage(), *stack.proxy.stages[1:])
    return stack, await call(http, stack, "GET", PM, alice(stack))


BROWSER = {"browser": {"csrf": "browser"}}


async def csrf_missing(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make(BROWSER)
    headers = {**alice(stack), "Origin": stack.urls["console"]}
    return stack, await call(http, stack, "POST", PM, headers, json={})


async def csrf_invalid(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make(BROWSER)
    proxy, headers = stack.urls["proxy"], alice(stack)
    async with http.post(proxy + "/_dragoman/session", headers=headers) as response:
        token = (await response.json())["csrf_token"]
    sid, randomness, _ = token.split(".")
    guessed = f"{sid}.{randomness}.{'A' * 43}"
    pair = {**headers, "Cookie": f"__Host-dragoman-csrf={token}", "X-CSRF-Token": guessed}
    return stack, await call(http, stack, "POST", PM, pair, json={})


async def csrf_token_rotated(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make(BROWSER)
    proxy, headers = stack.urls["proxy"], alice(stack)
    async with http.post(proxy + "/_dragoman/session", headers=headers) as response:
        t0 = (await response.json())["csrf_token"]
    pair = {**headers, "Cookie": f"__Host-dragoman-csrf={t0}", "X-CSRF-Token": t0}
    for _ in range(2):  # T(0) -> T(1) -> T(2): T(0) is dead at once
        async with http.post(proxy + "/_dragoman/session/refresh", headers=pair) as response:
            fresh = (await response.json())["csrf_token"]
        pair = {**headers, "Cookie": f"__Host-dragoman-csrf={fresh}", "X-CSRF-Token": fresh}
    pair["X-CSRF-Token"] = t0
    return stack, await call(http, stack, "POST", PM, pair, json={})


async def session_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    from dragoman.keys.sealing import new_master_key

    browser = {
        "csrf": "browser",
        "session_backend": "redis",
        "session_redis_url": "redis://127.0.0.1:1/0",
        "csrf_key": new_master_key(),
        "csrf_key_file": None,
    }
    stack = await make({"browser": browser})
    return stack, await call(http, stack, "POST", "/_dragoman/session", alice(stack))


async def upstream_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make({"upstream": {"url": "http://127.0.0.1:1"}})
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def upstream_timeout(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    # An upstream that accepts the connection and never answers.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stack = await make({"upstream": {"url": f"http://127.0.0.1:{port}", "read_timeout": 0.3}})
        return stack, await call(http, stack, "GET", PM, alice(stack))
    finally:
        server.close()


REGISTRATION = "/_dragoman/registration"


def carol(stack: DemoStack, roles: tuple[str, ...] = ("owner",)) -> dict[str, str]:
    token = stack.issuer.token("carol", "acct-3003", roles=list(roles))
    return {"Authorization": f"Bearer {token}"}


async def media_type_unsupported(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make()
    headers = {**carol(stack), "Content-Type": "text/plain"}
    return stack, await call(
        http, stack, "POST", REGISTRATION, headers, data=b'{"customer": "cus_carol"}'
    )


async def registration_forbidden(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make()
    body = {"customer": "cus_carol"}
    return stack, await call(http, stack, "POST", REGISTRATION, carol(stack, ()), json=body)


async def mapping_exists(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    body = {"customer": "cus_alice"}
    return stack, await call(http, stack, "POST", REGISTRATION, alice(stack), json=body)


async def link_refused(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    stack = await make()
    body = {"customer": "cus_bob"}  # acct-2002's, not carol's
    return stack, await call(http, stack, "POST", REGISTRATION, carol(stack), json=body)


async def platform_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make({"upstream": {"url": "http://127.0.0.1:1"}})
    stack.platform.add_customer("cus_carol", "acct-3003")
    body = {"customer": "cus_carol"}
    return stack, await call(http, stack, "POST", REGISTRATION, carol(stack), json=body)


async def rate_limited(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    # The first request uses the only allowance and fails upstream (nothing reaches the
    # platform); the second is refused by the limit.
    rule = {"name": "account", "per": "account", "rate": "1/h", "burst": 1}
    stack = await make({"limits": {"rules": [rule]}, "upstream": {"url": "http://127.0.0.1:1"}})
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as first:
        assert first.status == 502
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def rate_limit_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make({"limits": {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}})
    return stack, await call(http, stack, "GET", PM, alice(stack))


async def anomaly_blocked(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    # The first change is counted and fails upstream (nothing reaches the platform); the
    # second is one more than the threshold and blocks the account.
    rule = {"kind": "threshold", "threshold": 1, "action": "block"}
    stack = await make(
        {"anomaly": {"rules": {"burst": rule}}, "upstream": {"url": "http://127.0.0.1:1"}}
    )
    path = "/v1/customers/cus_alice/default-payment-method"
    async with http.put(stack.urls["proxy"] + path, headers=alice(stack), json={}) as first:
        assert first.status == 502
    return stack, await call(http, stack, "PUT", path, alice(stack))


async def anomaly_unavailable(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    stack = await make({"anomaly": {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}})
    return stack, await call(http, stack, "POST", PM, alice(stack))


async def decision_request_invalid(
    make: MakeStack, http: aiohttp.ClientSession
) -> tuple[DemoStack, Any]:
    """A gateway asking about a method that is no upper-case token (Envoy's contract: the
    real status comes back)."""
    stack = await make({"decision": {"enabled": True}})
    url = stack.decision_url + "/ext_authz" + PM
    async with http.request("M-SEARCH", url, headers=alice(stack)) as answer:
        assert answer.content_type == "application/problem+json"
        return stack, (answer.status, await answer.json())


async def peer_not_allowed(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    """A decision listener asked from an address outside decision.allowed_peers (the test
    connects from 127.0.0.1)."""
    stack = await make({"decision": {"enabled": True, "allowed_peers": ["10.0.0.0/8"]}})
    url = stack.decision_url + "/ext_authz" + PM
    async with http.get(url, headers=alice(stack)) as answer:
        assert answer.content_type == "application/problem+json"
        return stack, (answer.status, await answer.json())


async def overloaded(make: MakeStack, http: aiohttp.ClientSession) -> tuple[DemoStack, Any]:
    """One worker at server.max_in_flight = 1, its one request held at the upstream."""
    async with held_upstream() as upstream:
        stack = await make({"server": {"max_in_flight": 1}, "upstream": {"url": upstream.url}})
        held = asyncio.create_task(http.get(stack.urls["proxy"] + PM, headers=alice(stack)))
        await upstream.wait_for(1)
        refused = await call(http, stack, "GET", PM, alice(stack))
        upstream.release.set()
        (await held).release()
        return stack, refused


PROVOKE: dict[str, tuple[int, Callable[[MakeStack, aiohttp.ClientSession], Awaitable[Any]]]] = {
    "decision_request_invalid": (400, decision_request_invalid),
    "peer_not_allowed": (403, peer_not_allowed),
    "path_invalid": (400, path_invalid),
    "body_too_large": (413, body_too_large),
    "body_timeout": (408, body_timeout),
    "expectation_failed": (417, expectation_failed),
    "bad_request": (400, bad_request),
    "unauthenticated": (401, unauthenticated),
    "insufficient_user_authentication": (401, insufficient_user_authentication),
    "scope_denied": (403, scope_denied),
    "mapping_missing": (403, mapping_missing),
    "mapping_inactive": (403, mapping_inactive),
    "mapping_stale": (403, mapping_stale),
    "customer_mismatch": (403, customer_mismatch),
    "origin_denied": (403, origin_denied),
    "csrf_missing": (403, csrf_missing),
    "csrf_invalid": (403, csrf_invalid),
    "csrf_token_rotated": (403, csrf_token_rotated),
    "session_unavailable": (503, session_unavailable),
    "operation_unknown": (404, operation_unknown),
    "identity_unavailable": (503, identity_unavailable),
    "mapping_unavailable": (503, mapping_unavailable),
    "key_unavailable": (503, key_unavailable),
    "audit_unavailable": (503, audit_unavailable),
    "internal_error": (500, internal_error),
    "upstream_unavailable": (502, upstream_unavailable),
    "upstream_timeout": (504, upstream_timeout),
    "media_type_unsupported": (415, media_type_unsupported),
    "registration_forbidden": (403, registration_forbidden),
    "mapping_exists": (409, mapping_exists),
    "link_refused": (422, link_refused),
    "platform_unavailable": (503, platform_unavailable),
    "rate_limited": (429, rate_limited),
    "rate_limit_unavailable": (503, rate_limit_unavailable),
    "anomaly_blocked": (403, anomaly_blocked),
    "anomaly_unavailable": (503, anomaly_unavailable),
    "overloaded": (503, overloaded),
}
# Registration asks the payment platform (for the customer's record) before it refuses these.
ASKS_THE_PLATFORM = frozenset({"mapping_exists", "link_refused"})


def test_every_denial_code_has_a_test_that_provokes_it() -> None:
    leaves = {cls.code for cls in all_denials() if not cls.__subclasses__()}
    assert leaves == set(PROVOKE)


@pytest.mark.parametrize("code", sorted(PROVOKE))
async def test_denial_answers_problem_json_with_its_code(
    code: str, make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    status, provoke = PROVOKE[code]
    stack, (got_status, body) = await provoke(make_stack, http)
    assert (got_status, body["code"]) == (status, code)
    assert body["type"] == f"urn:dragoman:problem:{code}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    if code in ASKS_THE_PLATFORM:
        # One read of one customer record (customers.get), nothing else.
        seen = [(s.method, s.path.rsplit("/", 1)[0]) for s in stack.platform.seen]
        assert seen == [("GET", "/v1/customers")]
    # A forwarded body streams: the upstream had the head when the body stopped.
    elif code not in (
        "audit_unavailable",
        "upstream_unavailable",
        "upstream_timeout",
        "body_timeout",
    ):
        assert stack.platform.seen == [] or code == "audit_unavailable"
    if code != "audit_unavailable":
        lines = (stack.state_dir / "audit.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        # (A forwarded write has its write-ahead record too, event "forward".)
        (mine,) = [
            r
            for r in records
            if r.get("audit_id") == body["audit_id"] and r.get("event") != "forward"
        ]
        assert (mine["code"], mine["decision"]) == (code, "deny")


def test_denials_carry_stable_codes_and_http_statuses() -> None:
    for cls in all_denials():
        assert issubclass(cls, Denial)
        assert cls.code.isidentifier()
        assert 400 <= cls.status < 600
