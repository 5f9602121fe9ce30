"""Request bytes that are not UTF-8, and odd code points, in every input dragoman reads.

aiohttp decodes header values with ``surrogateescape``: a byte that is not UTF-8 reaches
dragoman as a lone surrogate (``b"\\xff"`` -> ``"\\udcff"``), which every ``.encode()`` raises
on. Each such input must end in its own stable refusal (or be served, when nothing reads it),
with its audit record written; never a 500, a traceback, or an audit trail left broken.
Found this way, and pinned here:

- an ``Origin`` header with such a byte made its request's audit record unwritable: the
  record was lost and the trail refused the next request (``audit_unavailable``);
- a customer header binding compared the value with ``value.encode()``: a 500;
- the decision listener re-addresses the check request with ``request.clone(headers=...)``,
  which re-encodes every header as strict UTF-8: any header with such a byte was a bare 500,
  unrecorded;
- a registration body nested a thousand arrays deep raised RecursionError: a 500;
- the demo platform read a body of an unknown charset with LookupError: a 500.

Every request here is written byte for byte on a raw socket (no HTTP client sends a header
that is not UTF-8) to real servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from binding_support import ALICE, Recorder, overrides, unchunk
from dragoman.demo.runner import DemoStack
from dragoman.tokens.verify import Requirement, TokenMiddleware, TokenVerifier
from tokens.support import run_uvicorn

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = b"/v1/customers/cus_alice/payment-methods"
CSRF_COOKIE = b"__Host-dragoman-csrf"
NOT_UTF8 = b"\xff"
"""A byte that is never UTF-8 (aiohttp hands it over as ``"\\udcff"``)."""


# -- raw HTTP/1.1 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    """Header names lower-cased; the last line of a name wins."""
    body: bytes

    @property
    def problem(self) -> dict[str, Any]:
        media_type = self.headers.get("content-type", "").partition(";")[0]
        assert media_type == "application/problem+json", self.headers
        document: dict[str, Any] = json.loads(self.body)
        return document

    def refusal(self) -> tuple[int, str]:
        return self.status, self.problem["code"]


async def send(
    url: str,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
) -> Answer:
    """One request on its own connection, every byte as given."""
    parts = URL(url)
    assert parts.host is not None and parts.port is not None
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: test", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        found[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if found.get("transfer-encoding", "").lower() == "chunked":
        payload = unchunk(payload)
    return Answer(int(status_line.split()[1]), found, payload)


# -- the stacks, their callers and their records ---------------------------------------------


def bearer(
    stack: DemoStack, subject: str = "alice", account: str = "acct-1001"
) -> tuple[bytes, bytes]:
    token = stack.issuer.token(subject, account, roles=["billing_admin"])
    return b"Authorization", b"Bearer " + token.encode()


def origin(stack: DemoStack) -> bytes:
    return stack.urls["proxy"].encode()


def records(stack: DemoStack) -> list[dict[str, Any]]:
    """The audit file's records; it must be UTF-8 throughout."""
    text = (stack.state_dir / "audit.jsonl").read_bytes().decode("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def record_of(stack: DemoStack, answer: Answer) -> dict[str, Any]:
    """The one record of the request ``answer`` answers (by audit id, or request id)."""
    if answer.status >= 400:
        key, value = "audit_id", answer.problem["audit_id"]
    else:
        key, value = "request_id", answer.headers["x-request-id"]
    (mine,) = [r for r in records(stack) if r.get(key) == value and r.get("event") != "forward"]
    return mine


@pytest.fixture(autouse=True)
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test here may log an error (a traceback of an unexpected exception, an audit sink
    failing)."""
    yield
    logged = caplog.get_records("setup") + caplog.get_records("call")
    assert [r.getMessage() for r in logged if r.levelno >= logging.ERROR] == []


@pytest.fixture
async def bound(
    serve: Callable[[web.Application], Any], make_stack: MakeStack
) -> AsyncIterator[tuple[Recorder, DemoStack]]:
    """A stack whose operations name the customer in the path, query, a header, the body
    (binding_support), with the decision listener on; the upstream records what reaches it."""
    upstream = Recorder()
    async with serve(upstream.app()) as url:
        yield upstream, await make_stack({**overrides(url), "decision": {"enabled": True}})


@pytest.fixture
async def decision(make_stack: MakeStack) -> DemoStack:
    return await make_stack({"decision": {"enabled": True}})


async def session_token(stack: DemoStack) -> bytes:
    """A live CSRF token of a session of alice's (the handshake, over a plain client)."""
    _, value = bearer(stack)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            stack.urls["proxy"] + "/_dragoman/session",
            headers={"Authorization": value.decode(), "Origin": stack.urls["proxy"]},
        ) as answer,
    ):
        assert answer.status == 201
        token: str = (await answer.json())["csrf_token"]
        return token.encode()


async def pair(stack: DemoStack) -> list[tuple[bytes, bytes]]:
    """The CSRF pair of a live session of alice's, as a browser sends it."""
    token = await session_token(stack)
    return [(b"Cookie", CSRF_COOKIE + b"=" + token), (b"X-CSRF-Token", token)]


# -- Origin: refused or served, always recorded ----------------------------------------------


async def test_write_with_a_non_utf8_origin_is_refused_origin_denied(stack: DemoStack) -> None:
    answer = await send(
        stack.urls["proxy"],
        "DELETE",
        PM + b"/pm_x",
        [bearer(stack), (b"Origin", origin(stack) + NOT_UTF8)],
    )
    assert answer.refusal() == (403, "origin_denied")


async def test_refusal_of_a_non_utf8_origin_is_recorded_with_the_byte_escaped(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "DELETE",
        PM + b"/pm_x",
        [bearer(stack), (b"Origin", origin(stack) + NOT_UTF8)],
    )
    mine = record_of(stack, answer)
    assert (mine["code"], mine["reason"]) == ("origin_denied", "origin_not_allowed")
    assert mine["origin"] == stack.urls["proxy"] + "\\xff"


async def test_read_with_a_non_utf8_origin_is_served_and_recorded(stack: DemoStack) -> None:
    headers = [bearer(stack), (b"Origin", b"https://a" + NOT_UTF8), *await pair(stack)]
    answer = await send(stack.urls["proxy"], "GET", PM, headers)
    assert answer.status == 200
    mine = record_of(stack, answer)
    assert (mine["decision"], mine["origin"]) == ("allow", "https://a\\xff")


async def test_request_after_a_non_utf8_origin_is_not_refused_audit_unavailable(
    stack: DemoStack,
) -> None:
    await send(stack.urls["proxy"], "GET", PM, [bearer(stack), (b"Origin", NOT_UTF8)])
    answer = await send(stack.urls["proxy"], "GET", PM, [bearer(stack)])
    assert answer.status == 200


async def test_preflight_with_a_non_utf8_origin_is_refused_origin_denied(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "OPTIONS",
        PM,
        [(b"Origin", origin(stack) + NOT_UTF8), (b"Access-Control-Request-Method", b"GET")],
    )
    assert answer.refusal() == (403, "origin_denied")


async def test_whoami_with_a_non_utf8_origin_is_answered_and_recorded(stack: DemoStack) -> None:
    headers = [bearer(stack), (b"Origin", NOT_UTF8), *await pair(stack)]
    answer = await send(stack.urls["proxy"], "GET", b"/_dragoman/whoami", headers)
    assert answer.status == 200
    assert record_of(stack, answer)["event"] == "whoami"


async def test_odd_code_points_in_origin_are_refused_origin_denied(stack: DemoStack) -> None:
    odd = "\u202e\ufeff\uff11".encode()  # right-to-left override, BOM, a fullwidth digit
    answer = await send(
        stack.urls["proxy"], "DELETE", PM + b"/pm_x", [bearer(stack), (b"Origin", odd)]
    )
    assert answer.refusal() == (403, "origin_denied")
    assert record_of(stack, answer)["origin"] == "\u202e\ufeff\uff11"


# -- the browser session endpoints: Origin, CSRF header and cookie, Sec-Fetch-* ---------------


async def test_session_handshake_with_a_non_utf8_origin_is_refused_origin_denied(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/_dragoman/session",
        [bearer(stack), (b"Origin", origin(stack) + NOT_UTF8)],
    )
    assert answer.refusal() == (403, "origin_denied")


async def test_session_refresh_with_a_non_utf8_csrf_header_is_refused_csrf_invalid(
    stack: DemoStack,
) -> None:
    token = await session_token(stack)
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/_dragoman/session/refresh",
        [
            bearer(stack),
            (b"Origin", origin(stack)),
            (b"Cookie", CSRF_COOKIE + b"=" + token),
            (b"X-CSRF-Token", token + NOT_UTF8),
        ],
    )
    assert answer.refusal() == (403, "csrf_invalid")
    assert record_of(stack, answer)["reason"] == "bad_mac"


async def test_session_refresh_with_a_non_utf8_csrf_cookie_is_refused_csrf_invalid(
    stack: DemoStack,
) -> None:
    token = await session_token(stack)
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/_dragoman/session/refresh",
        [
            bearer(stack),
            (b"Origin", origin(stack)),
            (b"Cookie", CSRF_COOKIE + b"=" + token + NOT_UTF8),
            (b"X-CSRF-Token", token),
        ],
    )
    assert answer.refusal() == (403, "csrf_invalid")
    assert record_of(stack, answer)["reason"] == "bad_mac"


async def test_write_with_a_non_utf8_sec_fetch_site_needs_its_csrf_pair(stack: DemoStack) -> None:
    answer = await send(
        stack.urls["proxy"],
        "DELETE",
        PM + b"/pm_x",
        [bearer(stack), (b"Sec-Fetch-Site", b"same-origin" + NOT_UTF8)],
    )
    assert answer.refusal() == (403, "csrf_missing")


async def test_non_utf8_request_id_is_replaced_by_a_fresh_one(make_stack: MakeStack) -> None:
    stack = await make_stack({"server": {"trust_request_id": True}})
    answer = await send(
        stack.urls["proxy"], "GET", PM, [bearer(stack), (b"X-Request-Id", b"abcdefgh" + NOT_UTF8)]
    )
    assert answer.status == 200
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])


# -- identity ----------------------------------------------------------------------------------


async def test_non_utf8_bearer_is_refused_unauthenticated(stack: DemoStack) -> None:
    answer = await send(
        stack.urls["proxy"], "GET", PM, [(b"Authorization", b"Bearer a" + NOT_UTF8 + b".b.c")]
    )
    assert answer.refusal() == (401, "unauthenticated")


async def test_non_utf8_aws_credential_is_refused_unauthenticated(
    make_stack: MakeStack, dead_port: int
) -> None:
    stack = await make_stack(
        {
            "identity": {
                "aws_sts": {
                    "binding_id": "dragoman-test",
                    "regions": ["eu-west-1"],
                    "connect_to": f"http://127.0.0.1:{dead_port}",
                }
            }
        }
    )
    answer = await send(
        stack.urls["proxy"],
        "GET",
        PM,
        [(b"Authorization", b"Bearer dragoman-aws-v1.aHR0cHM6" + NOT_UTF8)],
    )
    assert answer.refusal() == (401, "unauthenticated")
    assert record_of(stack, answer)["reason"] == "aws_token_malformed"


# -- registration --------------------------------------------------------------------------------


async def test_registration_with_a_non_utf8_origin_is_refused_origin_denied(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/_dragoman/registration",
        [
            bearer(stack, "carol", "acct-3003"),
            (b"Origin", origin(stack) + NOT_UTF8),
            (b"Content-Type", b"application/json"),
        ],
        b'{"customer": "cus_carol"}',
    )
    assert answer.refusal() == (403, "origin_denied")


async def test_registration_body_that_is_not_utf8_is_refused_bad_request(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/_dragoman/registration",
        [bearer(stack, "carol", "acct-3003"), (b"Content-Type", b"application/json")],
        b'{"customer": "cus_' + NOT_UTF8 + b'"}',
    )
    assert answer.refusal() == (400, "bad_request")
    assert record_of(stack, answer)["reason"] == "body_invalid"


async def test_registration_body_nested_too_deep_is_refused_bad_request(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/_dragoman/registration",
        [bearer(stack, "carol", "acct-3003"), (b"Content-Type", b"application/json")],
        b"[" * 4000,
    )
    assert answer.refusal() == (400, "bad_request")
    assert record_of(stack, answer)["reason"] == "body_invalid"


# -- customer bindings -------------------------------------------------------------------------


async def test_bound_customer_header_with_a_non_utf8_byte_is_refused_customer_ambiguous(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    answer = await send(
        stack.urls["proxy"],
        "GET",
        b"/header/things",
        [bearer(stack), (b"X-Customer-Id", ALICE.encode() + NOT_UTF8)],
    )
    assert answer.refusal() == (403, "customer_mismatch")
    assert record_of(stack, answer)["reason"] == "customer_ambiguous"
    assert upstream.received == []


async def test_injected_customer_header_with_a_non_utf8_byte_is_refused_customer_ambiguous(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    answer = await send(
        stack.urls["proxy"],
        "GET",
        b"/header-inject/things",
        [bearer(stack), (b"X-Customer-Id", NOT_UTF8)],
    )
    assert answer.refusal() == (403, "customer_mismatch")
    assert record_of(stack, answer)["reason"] == "customer_ambiguous"
    assert upstream.received == []


async def test_bound_customer_header_in_fullwidth_letters_is_refused_customer_other(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    fullwidth = "\uff43\uff55\uff53_alice".encode()  # NFKC folds it to cus_alice
    answer = await send(
        stack.urls["proxy"],
        "GET",
        b"/header/things",
        [bearer(stack), (b"X-Customer-Id", fullwidth)],
    )
    assert answer.refusal() == (403, "customer_mismatch")
    assert record_of(stack, answer)["reason"] == "customer_other"
    assert upstream.received == []


async def test_bound_customer_query_with_a_non_utf8_escape_is_refused_customer_ambiguous(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    answer = await send(
        stack.urls["proxy"], "GET", b"/query/things?customer_id=cus_alice%FF", [bearer(stack)]
    )
    assert answer.refusal() == (403, "customer_mismatch")
    assert record_of(stack, answer)["reason"] == "customer_ambiguous"
    assert upstream.received == []


async def test_bound_customer_path_with_a_non_utf8_escape_is_refused_path_invalid(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    answer = await send(
        stack.urls["proxy"], "GET", b"/v1/customers/cus_alice%FF/things", [bearer(stack)]
    )
    assert answer.refusal() == (400, "path_invalid")
    assert upstream.received == []


async def test_raw_non_ascii_byte_in_the_target_is_refused_by_the_parser(
    bound: tuple[Recorder, DemoStack], caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp's parser refuses it (its own plain 400, before any handler): nothing of
    # dragoman runs, and nothing reaches the upstream. The refusal is logged as one
    # warning line without the parser's traceback or the refused bytes (logs.py), so a
    # client cannot fill the log with tracebacks.
    upstream, stack = bound
    answer = await send(
        stack.urls["proxy"], "GET", b"/v1/customers/cus_alice" + NOT_UTF8 + b"/things"
    )
    assert answer.status == 400
    assert upstream.received == []
    (logged,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert logged.levelno == logging.WARNING
    assert logged.exc_info is None
    assert (
        logged.getMessage() == "refused a malformed request from 127.0.0.1 (InvalidURLError, 400)"
    )


async def test_bound_customer_body_that_is_not_utf8_is_refused_bad_request(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    answer = await send(
        stack.urls["proxy"],
        "POST",
        b"/body/things",
        [bearer(stack), (b"Content-Type", b"application/json")],
        b'{"customer": "cus_alice' + NOT_UTF8 + b'"}',
    )
    assert answer.refusal() == (400, "bad_request")
    assert record_of(stack, answer)["reason"] == "body_invalid"
    assert upstream.received == []


# -- the decision listener ---------------------------------------------------------------------


def nginx_check(
    stack: DemoStack, *headers: tuple[bytes, bytes], target: bytes = PM
) -> list[tuple[bytes, bytes]]:
    return [bearer(stack), (b"X-Original-Method", b"GET"), (b"X-Original-URI", target), *headers]


async def test_nginx_check_with_a_non_utf8_header_is_refused_bad_request(
    decision: DemoStack,
) -> None:
    answer = await send(
        decision.decision_url,
        "GET",
        b"/auth_request",
        nginx_check(decision, (b"X-Anything", NOT_UTF8)),
    )
    # nginx reads 401/403 only: the real status and problem travel in headers.
    assert (answer.status, answer.headers["x-dragoman-status"]) == (403, "400")
    problem = json.loads(answer.headers["x-dragoman-problem"])
    assert problem["code"] == "bad_request"
    mine = record_of(decision, answer)
    assert (mine["event"], mine["code"], mine["reason"]) == (
        "decision",
        "bad_request",
        "header_not_utf8",
    )


async def test_envoy_check_with_a_non_utf8_header_is_refused_bad_request(
    decision: DemoStack,
) -> None:
    answer = await send(
        decision.decision_url,
        "GET",
        b"/ext_authz" + PM,
        [bearer(decision), (b"Origin", origin(decision) + NOT_UTF8)],
    )
    assert answer.refusal() == (400, "bad_request")
    assert record_of(decision, answer)["reason"] == "header_not_utf8"


async def test_envoy_check_with_a_non_utf8_customer_header_is_refused_bad_request(
    bound: tuple[Recorder, DemoStack],
) -> None:
    _, stack = bound
    answer = await send(
        stack.decision_url,
        "GET",
        b"/ext_authz/header/things",
        [bearer(stack), (b"X-Customer-Id", ALICE.encode() + NOT_UTF8)],
    )
    assert answer.refusal() == (400, "bad_request")
    assert record_of(stack, answer)["reason"] == "header_not_utf8"


async def test_decision_with_a_non_utf8_forwarded_for_is_refused_bad_request(
    decision: DemoStack,
) -> None:
    answer = await send(
        decision.decision_url,
        "GET",
        b"/ext_authz" + PM,
        [bearer(decision), (b"X-Forwarded-For", b"203.0.113.7" + NOT_UTF8)],
    )
    assert answer.refusal() == (400, "bad_request")


async def test_decision_forwarded_for_with_an_ipv6_zone_is_not_believed(
    decision: DemoStack,
) -> None:
    answer = await send(
        decision.decision_url,
        "GET",
        b"/ext_authz" + PM,
        [bearer(decision), (b"X-Forwarded-For", "fe80::1%\u202eevil".encode())],
    )
    assert answer.status == 200
    assert record_of(decision, answer)["client_ip"] == "127.0.0.1"


async def test_nginx_check_with_a_non_utf8_original_uri_is_refused_path_invalid(
    decision: DemoStack,
) -> None:
    answer = await send(
        decision.decision_url,
        "GET",
        b"/auth_request",
        nginx_check(decision, target=PM + NOT_UTF8),
    )
    assert (answer.status, answer.headers["x-dragoman-status"]) == (403, "400")
    assert json.loads(answer.headers["x-dragoman-problem"])["code"] == "path_invalid"


async def test_nginx_check_with_a_non_utf8_original_method_is_refused_decision_request_invalid(
    decision: DemoStack,
) -> None:
    answer = await send(
        decision.decision_url,
        "GET",
        b"/auth_request",
        [bearer(decision), (b"X-Original-Method", b"GE" + NOT_UTF8), (b"X-Original-URI", PM)],
    )
    assert (answer.status, answer.headers["x-dragoman-status"]) == (403, "400")
    problem = json.loads(answer.headers["x-dragoman-problem"])
    assert problem["code"] == "decision_request_invalid"


async def test_refused_peer_with_a_non_utf8_header_is_refused_peer_not_allowed(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"decision": {"enabled": True, "allowed_peers": ["192.0.2.0/24"]}})
    answer = await send(stack.decision_url, "GET", b"/ext_authz" + PM, [(b"Origin", NOT_UTF8)])
    assert answer.refusal() == (403, "peer_not_allowed")
    assert record_of(stack, answer)["origin"] == "\\xff"


# -- the upstream side: verify_aiohttp (the demo platform) and TokenMiddleware (ASGI) -----------


async def test_platform_refuses_a_non_utf8_bearer_token_malformed(stack: DemoStack) -> None:
    answer = await send(
        stack.urls["platform"], "GET", PM, [(b"Authorization", b"Bearer a.b." + NOT_UTF8)]
    )
    assert answer.refusal() == (401, "token_malformed")


async def test_platform_refuses_a_body_of_an_unknown_charset_body_invalid(
    stack: DemoStack,
) -> None:
    answer = await send(
        stack.urls["proxy"],
        "POST",
        PM,
        [bearer(stack), (b"Content-Type", "application/json; charset=\ufeff".encode())],
        b"{}",
    )
    assert answer.refusal() == (400, "body_invalid")


async def _refuse_every_request(
    scope: Any, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
) -> None:
    raise AssertionError("the middleware let a request through")


@pytest.fixture
async def asgi_url(dead_port: int) -> AsyncIterator[str]:
    """TokenMiddleware under uvicorn; its key set is never fetched (every token here is
    refused before a key is looked up)."""
    verifier = TokenVerifier(
        jwks_url=f"http://127.0.0.1:{dead_port}/jwks.json",
        issuer="dragoman",
        audience="payments",
        origin="http://payments.test",
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    middleware = TokenMiddleware(
        _refuse_every_request, verifier, lambda method, path: Requirement("payments:read", None)
    )
    try:
        async with run_uvicorn(middleware, sock) as url:
            yield url
    finally:
        await verifier.close()
        sock.close()


async def test_asgi_middleware_refuses_a_bearer_with_odd_code_points_token_malformed(
    asgi_url: str,
) -> None:
    # uvicorn's parser refuses a byte that is not UTF-8 itself; UTF-8 that is not ASCII
    # (a BOM) reaches the middleware, which reads header bytes as Latin-1.
    answer = await send(
        asgi_url, "GET", b"/pay", [(b"Authorization", b"Bearer a" + "\ufeff".encode() + b".b.c")]
    )
    assert (answer.status, json.loads(answer.body)["code"]) == (401, "token_malformed")
