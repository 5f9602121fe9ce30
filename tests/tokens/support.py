"""Helpers of the scoped-token tests (used by conftest.py and the test modules)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
)
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
import jwt
import uvicorn
from jwt.utils import base64url_decode, base64url_encode

from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack
from dragoman.tokens.mint import MintedToken, TokenMinter, TokenRequest
from dragoman.tokens.verify import ASGIApp, Requirement

PM = "/v1/customers/cus_alice/payment-methods"
"""The path of alice's payment methods on the demo platform (operation payment_methods.list)."""


def segment(data: Mapping[str, Any]) -> str:
    return base64url_encode(json.dumps(data, separators=(",", ":")).encode()).decode("ascii")


def parts_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified (for building forgeries)."""
    header, claims, _ = token.split(".")
    return json.loads(base64url_decode(header)), json.loads(base64url_decode(claims))


@dataclasses.dataclass
class Tokens:
    """Genuine tokens of one running stack, and forgeries signed with its current key."""

    stack: DemoStack

    def request(self, **changes: str) -> TokenRequest:
        """alice's list request on the demo platform, with ``changes`` applied."""
        base = TokenRequest(
            customer="cus_alice",
            scope="payment_methods:list",
            principal="alice",
            principal_issuer=self.stack.urls["issuer"],
            cloud_account="acct-1001",
            method="GET",
            url=self.stack.urls["platform"] + PM,
        )
        return dataclasses.replace(base, **changes)

    @property
    def proxy_minter(self) -> TokenMinter:
        assert self.stack.proxy is not None
        return self.stack.proxy.minter

    def minter(
        self,
        *,
        issuer: str = TOKEN_ISSUER,
        audience: str = AUDIENCE,
        ttl: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> TokenMinter:
        """A minter over the stack's own key provider, with other settings."""
        assert self.stack.proxy is not None
        return TokenMinter(
            self.stack.proxy.keys, issuer=issuer, audience=audience, ttl=ttl, clock=clock
        )

    async def mint(self, **changes: str) -> MintedToken:
        """A genuine token from the proxy's own minter."""
        return await self.proxy_minter.mint(self.request(**changes))

    async def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """Sign ``header``.``claims`` with the stack's current key (a real ES256 signature)."""
        assert self.stack.proxy is not None
        signing_input = f"{segment(header)}.{segment(claims)}"
        _, signature = await self.stack.proxy.keys.sign(lambda _key: signing_input.encode())
        return f"{signing_input}.{base64url_encode(signature).decode('ascii')}"

    async def forge(
        self,
        *,
        header: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        drop_header: Iterable[str] = (),
        drop_claims: Iterable[str] = (),
    ) -> str:
        """A genuine token with header or claim members changed or removed, then re-signed
        with the genuine key: only the changed rule can make it fail."""
        genuine_header, genuine_claims = parts_of((await self.mint()).value)
        new_header = {**genuine_header, **(header or {})}
        new_claims = {**genuine_claims, **(claims or {})}
        for name in drop_header:
            new_header.pop(name)
        for name in drop_claims:
            new_claims.pop(name)
        return await self.sign(new_header, new_claims)

    async def jwks(self) -> dict[str, Any]:
        """The proxy's key set, as published over HTTP."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.stack.urls["proxy"] + "/.well-known/jwks.json") as response,
        ):
            assert response.status == 200
            document: dict[str, Any] = json.loads(await response.read())
            return document

    async def decode(self, token: str) -> dict[str, Any]:
        """PyJWT's own verification with the published key named by the token's kid."""
        key_set = jwt.PyJWKSet.from_dict(await self.jwks())
        key = key_set[jwt.get_unverified_header(token)["kid"]]
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience=AUDIENCE,
            issuer=TOKEN_ISSUER,
            options={"require": ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]},
        )
        return claims


@asynccontextmanager
async def run_uvicorn(
    app: ASGIApp, sock: socket.socket, *, lifespan: Literal["on", "off"] = "off"
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on ``sock``; yield its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what made the server fail
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


PM_ROUTE = re.compile(r"/v1/customers/([^/]+)/payment-methods")


def resolve_demo_route(method: str, path: str) -> Requirement | None:
    """The guarded app's routes: list and create payment methods of the customer in the path."""
    match = PM_ROUTE.fullmatch(path)
    if match is None:
        return None
    if method == "GET":
        return Requirement("payment_methods:list", match.group(1))
    if method == "POST":
        return Requirement("payment_methods:create", match.group(1))
    return None


@dataclasses.dataclass
class GuardedApp:
    """A tiny ASGI application behind ``TokenMiddleware``, and what it saw.

    ``reached`` holds ``scope["state"]["dragoman_token"]`` of every request that got through.
    """

    tokens: Tokens
    url: str = ""
    reached: list[Any] = dataclasses.field(default_factory=list)

    async def app(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        token = scope["state"]["dragoman_token"]
        self.reached.append(token)
        body = json.dumps({"jti": token.jti, "customer": token.customer}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def mint(self, path: str, *, method: str = "GET", **changes: str) -> MintedToken:
        """A genuine token bound to ``method`` ``path`` on this app's server."""
        minter = self.tokens.minter()
        return await minter.mint(self.tokens.request(method=method, url=self.url + path, **changes))
