"""Customer bindings in the path, the query and headers: the confused-deputy battery.

alice's account is mapped to cus_alice. Whatever else her request says about the customer
(another one, none, the same one twice, a spelling some server reads differently) it is
refused with 403 ``customer_mismatch`` and a precise reason, and the upstream, a recording
server, receives nothing. The right customer passes, and the upstream receives exactly what
was checked; in inject mode it receives the mapped customer written by dragoman.
The body bindings are in test_customer_binding_body.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from binding_support import ALICE, Answer, Recorder, audit, overrides, send
from dragoman.demo.runner import DemoStack


@pytest.fixture
async def bound(
    serve: Callable[[web.Application], Any], make_stack: Callable[..., Awaitable[DemoStack]]
) -> AsyncIterator[tuple[Recorder, DemoStack]]:
    upstream = Recorder()
    async with serve(upstream.app()) as url:
        yield upstream, await make_stack(overrides(url))


def refusal(answer: Answer, stack: DemoStack) -> tuple[int, str, str]:
    record = audit(stack)[-1]
    assert answer.body["code"] == record["code"]
    return answer.status, record["code"], record["reason"]


MISMATCH = (403, "customer_mismatch")

# (path and query as sent, extra headers) -> (status, code, reason)
REFUSED: dict[str, tuple[str, tuple[tuple[str, str], ...], tuple[int, str, str]]] = {
    # -- path --------------------------------------------------------------------------------
    "path-other-customer": ("/v1/customers/cus_bob/things", (), (*MISMATCH, "customer_other")),
    "path-other-customer-percent-encoded": (
        "/v1/customers/%63us%5Fbob/things",
        (),
        (*MISMATCH, "customer_other"),
    ),
    "path-customer-in-upper-case": (
        "/v1/customers/CUS_ALICE/things",
        (),
        (*MISMATCH, "customer_other"),
    ),
    "path-prefix-in-upper-case": (
        "/V1/customers/cus_alice/things",
        (),
        (404, "operation_unknown", "operation_unknown"),
    ),
    "path-literal-in-upper-case": (
        "/v1/CUSTOMERS/cus_alice/things",
        (),
        (404, "operation_unknown", "operation_unknown"),
    ),
    "path-encoded-slash-to-another-customer": (
        "/v1/customers/cus_alice%2F..%2Fcus_bob/things",
        (),
        (400, "path_invalid", "path_invalid"),
    ),
    "path-dot-segments-to-another-customer": (
        "/v1/customers/cus_bob/../cus_alice/things",
        (),
        (400, "path_invalid", "path_invalid"),
    ),
    # A fragment is no part of a request target (RFC 9112 §3.2): the client forwarding it
    # drops it, so the path checked and signed would not be the path forwarded.
    "path-with-a-fragment": (
        "/v1/customers/cus_alice/things#cus_bob",
        (),
        (400, "path_invalid", "path_invalid"),
    ),
    "path-ending-in-a-bare-fragment-mark": (
        "/v1/customers/cus_alice/things/#",
        (),
        (400, "path_invalid", "path_invalid"),
    ),
    "query-with-a-fragment": (
        "/query/things?customer_id=cus_alice#&customer_id=cus_bob",
        (),
        (400, "path_invalid", "path_invalid"),
    ),
    # -- query, enforce --------------------------------------------------------------------
    "query-absent": ("/query/things?x=1", (), (*MISMATCH, "customer_absent")),
    "query-other-customer": (
        "/query/things?customer_id=cus_bob",
        (),
        (*MISMATCH, "customer_other"),
    ),
    "query-other-customer-percent-encoded-value": (
        "/query/things?customer_id=cus%5Fbob",
        (),
        (*MISMATCH, "customer_other"),
    ),
    "query-empty-value": ("/query/things?customer_id=", (), (*MISMATCH, "customer_other")),
    "query-twice-equal": (
        "/query/things?customer_id=cus_alice&customer_id=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-twice-other-last": (
        "/query/things?customer_id=cus_alice&customer_id=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-percent-encoded-name": (
        "/query/things?customer_id=cus_alice&customer%5Fid=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-percent-encoded-name-alone": (
        "/query/things?customer%5Fid=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-name-in-other-case": (
        "/query/things?Customer_Id=cus_bob&customer_id=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-array-form": (
        "/query/things?customer_id[]=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-array-form-beside-plain": (
        "/query/things?customer_id=cus_alice&customer_id%5B%5D=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-indexed-form": (
        "/query/things?customer_id[0]=cus_bob&customer_id=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-semicolon-separated": (
        "/query/things?x=1;customer_id=cus_bob&customer_id=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-dotted-name-read-by-php-as-the-same": (
        "/query/things?customer.id=cus_bob&customer_id=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-plus-read-two-ways": (
        "/query/things?customer_id=cus+alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-malformed-escape": (
        "/query/things?customer_id=cus_alice%",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    # -- query, inject ---------------------------------------------------------------------
    "query-inject-other-customer": (
        "/query-inject/things?customer_id=cus_bob",
        (),
        (*MISMATCH, "customer_other"),
    ),
    "query-inject-twice-equal": (
        "/query-inject/things?customer_id=cus_alice&customer_id=cus_alice",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-inject-percent-encoded-name": (
        "/query-inject/things?customer%5Fid=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-inject-array-form": (
        "/query-inject/things?customer_id[]=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    # -- header, enforce -------------------------------------------------------------------
    "header-absent": ("/header/things", (), (*MISMATCH, "customer_absent")),
    "header-other-customer": (
        "/header/things",
        (("X-Customer-Id", "cus_bob"),),
        (*MISMATCH, "customer_other"),
    ),
    "header-twice-equal": (
        "/header/things",
        (("X-Customer-Id", ALICE), ("X-Customer-Id", ALICE)),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "header-twice-in-other-case": (
        "/header/things",
        (("X-Customer-Id", ALICE), ("x-customer-id", "cus_bob")),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "header-comma-list": (
        "/header/things",
        (("X-Customer-Id", "cus_alice, cus_bob"),),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "header-underscore-variant-read-by-cgi-as-the-same": (
        "/header/things",
        (("X-Customer-Id", ALICE), ("X_Customer_Id", "cus_bob")),
        (*MISMATCH, "customer_ambiguous"),
    ),
    # -- header, inject --------------------------------------------------------------------
    "header-inject-other-customer": (
        "/header-inject/things",
        (("X-Customer-Id", "cus_bob"),),
        (*MISMATCH, "customer_other"),
    ),
    "header-inject-twice": (
        "/header-inject/things",
        (("X-Customer-Id", ALICE), ("X-Customer-Id", ALICE)),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "header-inject-underscore-variant": (
        "/header-inject/things",
        (("X_Customer_Id", "cus_bob"),),
        (*MISMATCH, "customer_ambiguous"),
    ),
}


@pytest.mark.parametrize(("path_qs", "headers", "expected"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_request_naming_the_customer_wrongly_is_refused_and_nothing_is_forwarded(
    bound: tuple[Recorder, DemoStack],
    http: aiohttp.ClientSession,
    path_qs: str,
    headers: tuple[tuple[str, str], ...],
    expected: tuple[int, str, str],
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", path_qs, headers=headers)
    assert refusal(answer, stack) == expected
    assert upstream.received == []


async def test_a_customer_mismatch_names_its_reason_in_the_problem_detail(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = bound
    answer = await send(http, stack, "GET", "/query/things?customer_id=cus_alice&customer_id=x")
    assert answer.body["code"] == "customer_mismatch"
    assert "more than once" in answer.body["detail"]
    assert "cus_alice" not in str(answer.body)


# -- the right customer passes, and the upstream gets what was checked -------------------------


async def test_the_mapped_customer_in_the_path_passes_unchanged(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/v1/customers/cus_alice/things")
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == "/v1/customers/cus_alice/things"
    assert upstream.received[-1]["match_info"] == {"customer_id": ALICE}


async def test_a_percent_encoded_path_customer_reaches_the_upstream_as_the_checked_customer(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/v1/customers/cus%5Falice/things")
    assert answer.status == 200
    # Forwarded as received (the token's htu binds this path); the upstream decodes the
    # segment to exactly the customer that was checked.
    assert upstream.received[-1]["path_qs"] == "/v1/customers/cus%5Falice/things"
    assert upstream.received[-1]["match_info"] == {"customer_id": ALICE}


async def test_the_mapped_customer_in_the_query_passes_unchanged(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/query/things?limit=5&customer_id=cus%5Falice")
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == "/query/things?limit=5&customer_id=cus%5Falice"
    assert upstream.received[-1]["query"] == [["limit", "5"], ["customer_id", ALICE]]


async def test_inject_mode_adds_the_mapped_customer_to_the_query(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/query-inject/things?limit=5")
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == "/query-inject/things?limit=5&customer_id=cus_alice"


async def test_inject_mode_writes_a_query_when_there_was_none(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/query-inject/things")
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == "/query-inject/things?customer_id=cus_alice"


async def test_inject_mode_keeps_the_query_that_already_names_the_mapped_customer(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/query-inject/things?customer_id=cus_alice&a=1")
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == "/query-inject/things?customer_id=cus_alice&a=1"


async def test_the_mapped_customer_in_a_header_passes_once(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/header/things", headers=[("X-Customer-Id", ALICE)])
    assert answer.status == 200
    assert upstream.header("X-Customer-Id") == [ALICE]


async def test_inject_mode_adds_the_mapped_customer_header(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/header-inject/things")
    assert answer.status == 200
    assert upstream.header("X-Customer-Id") == [ALICE]


async def test_inject_mode_keeps_a_header_that_names_the_mapped_customer_once(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(
        http, stack, "GET", "/header-inject/things", headers=[("x-customer-id", ALICE)]
    )
    assert answer.status == 200
    assert upstream.header("X-Customer-Id") == [ALICE]
