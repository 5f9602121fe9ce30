"""decision.tls: the decision listener over HTTPS, and the gateway pinned by its client
certificate (mutual TLS) in the handshake, before any request is read.

Real listeners on 127.0.0.1 and real HTTPS; every certificate is made at test time
(``certs``): the listener's own, for 127.0.0.1, from a server CA the gateway trusts; the
gateway's, from the CA of ``client_ca_file``; and a stranger CA's. The last tests run
Debian's nginx asking the listener over TLS with its client certificate (they skip locally
without nginx and fail under CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from decision_support import alice, audit
from nginx_support import DecisionTls, Tap, host_port, nginx_binary, running_nginx
from yarl import URL

from binding_support import ALICE
from certs import Issued, Pki, make_pki, name
from ci_support import service_missing
from dragoman.decision import DecisionListener
from dragoman.demo.runner import DemoStack
from dragoman.observability import MetricsListener, exposition
from dragoman.settings import DecisionSettings, MetricsSettings
from settings_support import settings_problems

PM = "/v1/customers/cus_alice/payment-methods"
PROBLEM = "application/problem+json"

MakeStack = Callable[..., Awaitable[DemoStack]]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def server_only(pki: Pki) -> dict[str, str]:
    """decision.tls without client certificates: HTTPS, nothing more."""
    return {"cert_file": pki.tls["cert_file"], "key_file": pki.tls["key_file"]}


def gateway_required(pki: Pki) -> dict[str, str]:
    """decision.tls admitting only gateways with a certificate from ``pki.trusted``."""
    return {**pki.tls, "client_auth": "required"}


def decision_over(tls: dict[str, str], **decision: Any) -> dict[str, Any]:
    return {"decision": {"enabled": True, "tls": tls, **decision}}


def gateway_certificate(pki: Pki) -> Issued:
    return pki.trusted.issue(subject=name("nginx gateway"))


def gateway_context(pki: Pki) -> ssl.SSLContext:
    """The gateway's client side: trusts the listener's CA, presents its certificate."""
    return pki.context(gateway_certificate(pki), "gateway")


async def ask(
    stack: DemoStack, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, str]:
    """An nginx-style check of ``GET PM`` on a fresh connection made with ``context``."""
    sent = {"X-Original-Method": "GET", "X-Original-URI": PM, **(headers or {})}
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(stack.decision_url + "/auth_request", headers=sent) as answer,
    ):
        return answer, await answer.text()


def decision_records(stack: DemoStack) -> list[dict[str, Any]]:
    """The decision records so far (none: the audit file may not exist yet)."""
    if not (stack.state_dir / "audit.jsonl").exists():
        return []
    return [record for record in audit(stack) if record["event"] == "decision"]


def minted_claims(answer: aiohttp.ClientResponse) -> dict[str, Any]:
    scheme, _, token = answer.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def handshake(url: str, context: ssl.SSLContext) -> None:
    """A TLS handshake with the listener at ``url``, and nothing more."""
    parsed = URL(url)
    _, writer = await asyncio.open_connection(parsed.host, parsed.port, ssl=context)
    writer.close()
    await writer.wait_closed()


async def assert_handshake_refused(stack: DemoStack, pki: Pki, presented: Issued | None) -> None:
    """A gateway presenting ``presented`` (None: nothing) fails the handshake: pinned to TLS
    1.2, the handshake itself fails (the server hangs up before its Finished); under TLS
    1.3, whose client side of the handshake ends before the server judges the certificate,
    the check request gets no answer. Either way nothing is decided or recorded."""
    tls12 = pki.context(presented, "refused")
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(stack.decision_url, tls12)
    with pytest.raises((aiohttp.ClientConnectionError, ssl.SSLError)):
        await ask(stack, pki.context(presented, "refused"), alice(stack))
    assert decision_records(stack) == []


# -- HTTPS -----------------------------------------------------------------------------------


async def test_https_decision_with_a_valid_token_is_allowed_with_the_minted_token(
    make_stack: MakeStack, pki: Pki
) -> None:
    stack = await make_stack(decision_over(server_only(pki)))
    assert stack.decision_url.startswith("https://127.0.0.1:")
    answer, _ = await ask(stack, pki.context(None), alice(stack))
    assert answer.status == 200
    minted = minted_claims(answer)
    assert minted["sub"] == ALICE
    assert minted["scope"] == "payment_methods:list"
    assert minted["htu"] == stack.urls["platform"] + PM
    assert answer.headers["Cache-Control"] == "no-store"
    (record,) = decision_records(stack)
    assert record["decision"] == "allow"


async def test_plain_http_to_the_tls_listener_gets_no_answer(
    make_stack: MakeStack, pki: Pki
) -> None:
    stack = await make_stack(decision_over(server_only(pki)))
    parsed = URL(stack.decision_url)
    request = (
        f"GET /auth_request HTTP/1.1\r\nHost: {parsed.raw_authority}\r\n"
        f"X-Original-Method: GET\r\nX-Original-URI: {PM}\r\n"
        f"Authorization: {alice(stack)['Authorization']}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    answer = b""
    try:
        writer.write(request.encode())
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert not answer.startswith(b"HTTP/"), answer[:80]
    assert decision_records(stack) == []


# -- the gateway's client certificate --------------------------------------------------------


async def test_gateway_without_a_certificate_fails_the_handshake(
    make_stack: MakeStack, pki: Pki
) -> None:
    stack = await make_stack(decision_over(gateway_required(pki)))
    await assert_handshake_refused(stack, pki, None)


async def test_gateway_with_a_certificate_from_another_ca_fails_the_handshake(
    make_stack: MakeStack, pki: Pki
) -> None:
    stack = await make_stack(decision_over(gateway_required(pki)))
    stranger = pki.untrusted.issue(subject=name("nginx gateway"))
    await assert_handshake_refused(stack, pki, stranger)


async def test_gateway_with_a_certificate_from_client_ca_file_gets_its_decision(
    make_stack: MakeStack, pki: Pki
) -> None:
    stack = await make_stack(decision_over(gateway_required(pki)))
    answer, _ = await ask(stack, gateway_context(pki), alice(stack))
    assert answer.status == 200
    assert minted_claims(answer)["sub"] == ALICE
    (record,) = decision_records(stack)
    assert record["decision"] == "allow"


async def test_allowed_peers_still_apply_on_the_tls_listener(
    make_stack: MakeStack, pki: Pki
) -> None:
    # 127.0.0.1, where the tests connect from, is outside 10/8.
    stack = await make_stack(decision_over(gateway_required(pki), allowed_peers=["10.0.0.0/8"]))
    answer, body = await ask(stack, gateway_context(pki), alice(stack))
    assert answer.status == 403
    assert answer.content_type == PROBLEM
    assert "Authorization" not in answer.headers
    assert '"code":"peer_not_allowed"' in body.replace(" ", "")
    (record,) = decision_records(stack)
    assert record["decision"] == "deny"


# -- the listeners ---------------------------------------------------------------------------


async def test_decision_listener_with_tls_announces_an_https_url_and_answers_there(
    make_stack: MakeStack, pki: Pki
) -> None:
    stack = await make_stack()
    assert stack.proxy is not None
    settings = DecisionSettings.model_validate(
        {"enabled": True, "host": "127.0.0.1", "port": 0, "tls": server_only(pki)}
    )
    listener = DecisionListener(stack.proxy, settings, shared=False)
    url = await listener.start()
    try:
        assert url.startswith("https://127.0.0.1:")
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.context(None))) as http,
            http.get(url + "/livez") as answer,
        ):
            assert answer.status == 200
    finally:
        await listener.close()


async def test_metrics_listener_still_serves_plain_http(make_stack: MakeStack) -> None:
    stack = await make_stack()
    assert stack.proxy is not None
    settings = MetricsSettings(enabled=True, host="127.0.0.1", port=0)
    listener = MetricsListener(settings, exposition(stack.proxy.keys), shared=False)
    url = await listener.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as answer:
            assert answer.status == 200
    finally:
        await listener.close()


# -- settings --------------------------------------------------------------------------------


def test_decision_tls_with_a_missing_certificate_file_is_refused_naming_the_key(
    tmp_path: Path, pki: Pki
) -> None:
    tls = {**server_only(pki), "cert_file": str(tmp_path / "nope.pem")}
    problems = settings_problems(tmp_path, overrides=decision_over(tls))
    assert problems["decision.tls.cert_file"].endswith("file not found")


def test_decision_tls_with_client_ca_file_but_optional_client_auth_is_refused(
    tmp_path: Path, pki: Pki
) -> None:
    problems = settings_problems(tmp_path, overrides=decision_over(pki.tls))
    assert problems["decision.tls"].startswith('client_auth must be "required" with client_ca')


# -- nginx -----------------------------------------------------------------------------------


@pytest.fixture
def nginx() -> str:
    binary = nginx_binary()
    if binary is None:
        service_missing("nginx", "not installed; `make nginx` installs it")
    assert binary is not None
    return binary


OpenNginx = Callable[..., Awaitable[tuple[str, DemoStack]]]


@pytest.fixture
async def open_nginx(
    nginx: str, make_stack: MakeStack, serve: Callable[..., Any], pki: Pki, tmp_path: Path
) -> AsyncIterator[OpenNginx]:
    """``open_nginx(certificate)``: a stack whose decision listener requires a gateway
    certificate from ``pki.trusted``, and nginx on the shipped configuration asking it over
    TLS, presenting ``certificate`` (None: none). Returns nginx's URL and the stack."""
    async with AsyncExitStack() as exits:

        async def open_(certificate: Issued | None) -> tuple[str, DemoStack]:
            stack = await make_stack(decision_over(gateway_required(pki)))
            tap_url = await exits.enter_async_context(serve(Tap(stack.urls["platform"]).app()))
            written = None if certificate is None else certificate.write(pki.directory, "nginx")
            tls = DecisionTls(trusted_ca=pki.server_ca, name="127.0.0.1", certificate=written)
            url = await exits.enter_async_context(
                running_nginx(
                    nginx,
                    tmp_path / "nginx",
                    decision=host_port(stack.decision_url),
                    upstream=host_port(tap_url),
                    tls=tls,
                )
            )
            return url, stack

        yield open_


async def test_nginx_with_its_client_certificate_gets_decisions_over_tls(
    open_nginx: OpenNginx, pki: Pki, http: aiohttp.ClientSession
) -> None:
    url, stack = await open_nginx(gateway_certificate(pki))
    async with http.get(url + PM, headers=alice(stack)) as response:
        assert response.status == 200
        assert (await response.json())["data"][0]["last4"] == "4242"
    (seen,) = stack.platform.seen
    assert seen.accepted
    (record,) = decision_records(stack)
    assert record["decision"] == "allow"


async def test_nginx_without_a_client_certificate_gets_no_decision_and_forwards_nothing(
    open_nginx: OpenNginx, http: aiohttp.ClientSession
) -> None:
    url, stack = await open_nginx(None)
    async with http.get(url + PM, headers=alice(stack)) as response:
        assert response.status == 503
        assert response.content_type == PROBLEM
        problem = await response.json()
    assert problem["code"] == "decision_unavailable"
    assert stack.platform.seen == []
    assert decision_records(stack) == []
