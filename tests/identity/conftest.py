"""Fixtures for attacking step 1 (authentication) through the running proxy.

- ``client``: talks to the proxy of the default ``stack`` and reads its audit file.
- ``client_for(stack)``: the same for a stack built with ``make_stack``.
- ``serve_issuer(**fields)``: another DevIssuer on a free loopback port (its ``issuer`` is its
  URL), for stacks configured with several issuers or with non-default issuer settings.
- ``attacker_rsa`` / ``attacker_ec``: keys no issuer ever published.
- ``pki`` / ``client_with(stack, ssl_context)``: certificates for the mTLS tests, and a
  client whose connections present one.

Token forging and settings helpers live in ``identity_helpers``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from identity_helpers import ProxyClient
from mtls_support import TRUST_DOMAIN

from certs import Pki, make_pki
from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack


@pytest.fixture
def client_for(http: aiohttp.ClientSession) -> Callable[[DemoStack], ProxyClient]:
    return lambda stack: ProxyClient(stack, http)


@pytest.fixture
def client(stack: DemoStack, client_for: Callable[[DemoStack], ProxyClient]) -> ProxyClient:
    return client_for(stack)


@pytest.fixture
async def serve_issuer(
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
) -> AsyncIterator[Callable[..., Awaitable[DevIssuer]]]:
    async with AsyncExitStack() as servers:

        async def start(**fields: Any) -> DevIssuer:
            issuer = DevIssuer(**fields)
            issuer.issuer = await servers.enter_async_context(serve(issuer.app()))
            return issuer

        yield start


@pytest.fixture(scope="session")
def attacker_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def attacker_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path, trust_domain=TRUST_DOMAIN)


@pytest.fixture
async def client_with(
    pki: Pki,
) -> AsyncIterator[Callable[[DemoStack, ssl.SSLContext], ProxyClient]]:
    """A ProxyClient whose connections present the context's client certificate."""
    sessions: list[aiohttp.ClientSession] = []

    def make(stack: DemoStack, context: ssl.SSLContext) -> ProxyClient:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        sessions.append(session)
        return ProxyClient(stack, session)

    yield make
    for session in sessions:
        await session.close()
