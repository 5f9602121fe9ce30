"""Fixtures for the scoped-token tests.

- ``tokens``: genuine dragoman tokens from the running ``stack`` (its own minter and key
  provider), plus forgeries signed with that same key, so that a test breaks exactly one
  rule and everything else about the token stays genuine.
- ``verifier``: a :class:`TokenVerifier` like the demo platform's, reading the real JWKS
  of the running proxy.
- ``free_socket``: a loopback port known before the application served on it is built
  (``support.run_uvicorn`` serves an ASGI application there with a real uvicorn server).
- ``guarded``: a tiny ASGI application wrapped in ``TokenMiddleware``, served by uvicorn,
  whose verifier reads the running proxy's JWKS.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack
from dragoman.tokens.verify import TokenMiddleware, TokenVerifier

from .support import GuardedApp, Tokens, resolve_demo_route, run_uvicorn


@pytest.fixture
def tokens(stack: DemoStack) -> Tokens:
    return Tokens(stack)


@pytest.fixture
async def verifier(stack: DemoStack) -> AsyncIterator[TokenVerifier]:
    """A verifier configured like the demo platform's (origin: the platform's URL)."""
    made = TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=stack.urls["platform"],
    )
    yield made
    await made.close()


@pytest.fixture
def free_socket() -> Iterator[socket.socket]:
    """A listening-ready socket bound to a free loopback port (its URL is known up front)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
async def guarded(
    stack: DemoStack, tokens: Tokens, free_socket: socket.socket
) -> AsyncIterator[GuardedApp]:
    url = f"http://127.0.0.1:{free_socket.getsockname()[1]}"
    guarded = GuardedApp(tokens, url)
    verifier = TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=url,
    )
    middleware = TokenMiddleware(guarded.app, verifier, resolve_demo_route)
    try:
        async with run_uvicorn(middleware, free_socket):
            yield guarded
    finally:
        await verifier.close()
