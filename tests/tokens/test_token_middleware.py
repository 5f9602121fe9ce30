"""``TokenMiddleware`` in front of a tiny ASGI application, served by a real uvicorn server on
127.0.0.1, with tokens minted over the running proxy's key and verified against its JWKS."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp

from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack
from dragoman.tokens.verify import TokenMiddleware, TokenVerifier, VerifiedToken

from .support import PM, GuardedApp, Tokens, resolve_demo_route, run_uvicorn

BOB_PM = "/v1/customers/cus_bob/payment-methods"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code
    assert body["status"] == status
    error = "insufficient_scope" if status == 403 else "invalid_token"
    assert response.headers["WWW-Authenticate"] == f'Bearer error="{error}"'
    return body


async def test_valid_token_reaches_the_app_with_the_verified_token_in_scope_state(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    minted = await guarded.mint(PM)
    async with http.get(guarded.url + PM, headers=bearer(minted.value)) as response:
        assert response.status == 200
        assert await response.json() == {"jti": minted.jti, "customer": "cus_alice"}
    [token] = guarded.reached
    assert isinstance(token, VerifiedToken)
    assert (token.jti, token.customer, token.scope, token.principal) == (
        minted.jti,
        "cus_alice",
        "payment_methods:list",
        "alice",
    )


async def test_request_without_a_token_is_refused_before_the_app(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    async with http.get(guarded.url + PM) as response:
        await refused(response, 401, "token_missing")
    assert guarded.reached == []


async def test_non_bearer_authorization_is_refused(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    minted = await guarded.mint(PM)
    async with http.get(
        guarded.url + PM, headers={"Authorization": f"Basic {minted.value}"}
    ) as response:
        await refused(response, 401, "token_missing")
    assert guarded.reached == []


async def test_token_for_another_operation_is_refused_with_insufficient_scope(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    list_token = (await guarded.mint(PM)).value
    async with http.post(guarded.url + PM, headers=bearer(list_token), json={}) as response:
        await refused(response, 403, "scope_mismatch")
    assert guarded.reached == []


async def test_token_for_another_customer_is_refused_with_insufficient_scope(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    alice_token = (await guarded.mint(PM)).value
    async with http.get(guarded.url + BOB_PM, headers=bearer(alice_token)) as response:
        await refused(response, 403, "customer_mismatch")
    assert guarded.reached == []


async def test_route_the_app_does_not_serve_is_refused(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    minted = await guarded.mint("/admin")
    async with http.get(guarded.url + "/admin", headers=bearer(minted.value)) as response:
        await refused(response, 403, "scope_unknown")
    assert guarded.reached == []


async def test_token_minted_for_another_server_is_refused(
    stack: DemoStack, tokens: Tokens, guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    # Same issuer, audience, operation, customer and path: only the origin differs.
    platform_token = (await tokens.mint()).value
    async with http.get(guarded.url + PM, headers=bearer(platform_token)) as response:
        await refused(response, 401, "url_mismatch")
    assert guarded.reached == []


async def test_token_for_another_method_is_refused(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    post_token = (await guarded.mint(PM, method="POST", scope="payment_methods:list")).value
    async with http.get(guarded.url + PM, headers=bearer(post_token)) as response:
        await refused(response, 401, "method_mismatch")
    assert guarded.reached == []


async def test_expired_token_is_refused(
    guarded: GuardedApp, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    minter = tokens.minter(clock=lambda: 1_000_000_000)
    token = (await minter.mint(tokens.request(url=guarded.url + PM))).value
    async with http.get(guarded.url + PM, headers=bearer(token)) as response:
        await refused(response, 401, "token_expired")
    assert guarded.reached == []


async def test_query_string_is_outside_the_url_binding(
    guarded: GuardedApp, http: aiohttp.ClientSession
) -> None:
    # dragoman binds htu to the path (as DPoP's htu does); the query is not part of it.
    minted = await guarded.mint(PM)
    async with http.get(guarded.url + PM + "?limit=1", headers=bearer(minted.value)) as response:
        assert response.status == 200
    assert [t.jti for t in guarded.reached] == [minted.jti]


async def test_websocket_connection_is_refused_without_reaching_the_app(
    stack: DemoStack, tokens: Tokens
) -> None:
    """A WebSocket handshake is never let through unchecked.

    uvicorn in this environment has no WebSocket library (it would treat the upgrade as
    plain HTTP), so the middleware is called as the ASGI server would call it.
    """
    reached: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    verifier = TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=stack.urls["platform"],
    )
    middleware = TokenMiddleware(app, verifier, resolve_demo_route)
    token = (await tokens.mint()).value
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": PM,
        "raw_path": PM.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "subprotocols": [],
    }
    try:
        await middleware(scope, inbox.get, send)
    finally:
        await verifier.close()
    assert reached == []
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_lifespan_events_still_reach_the_app(
    stack: DemoStack, free_socket: socket.socket
) -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    verifier = TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=f"http://127.0.0.1:{free_socket.getsockname()[1]}",
    )
    middleware = TokenMiddleware(app, verifier, resolve_demo_route)
    try:
        async with run_uvicorn(middleware, free_socket, lifespan="on"):
            assert events == ["lifespan.startup"]
    finally:
        await verifier.close()
    assert events == ["lifespan.startup", "lifespan.shutdown"]
