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

from binding_support import ALICE, JSON, Answer, Recorder, audit, overrides, send
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
    # A framework merges the query's parameters with the path's: the query must not name
    # another customer for a path binding either.
    "path-other-customer-also-in-the-query": (
        "/v1/customers/cus_alice/things?customer_id=cus_bob",
        (),
        (*MISMATCH, "customer_other"),
    ),
    "path-customer-also-in-the-query-in-a-php-spelling": (
        "/v1/customers/cus_alice/things?customer[id=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
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
    "query-unclosed-bracket-read-by-php-as-the-same": (
        "/query/things?customer_id=cus_alice&customer[id=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-name-cut-by-php-at-a-nul": (
        "/query/things?customer_id=cus_alice&customer_id%00=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-leading-bracket-dropped-by-rack": (
        "/query/things?customer_id=cus_alice&[customer_id=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-trailing-bracket-dropped-by-rack": (
        "/query/things?customer_id=cus_alice&customer_id]=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-bracketed-name-read-by-rack-and-qs-as-the-same": (
        "/query/things?customer_id=cus_alice&[customer_id]=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-nested-under-the-name-after-a-closing-bracket": (
        "/query/things?customer_id=cus_alice&customer_id]x=cus_bob",
        (),
        (*MISMATCH, "customer_ambiguous"),
    ),
    "query-inject-unclosed-bracket-alone": (
        "/query-inject/things?customer[id=cus_bob",
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
    # -- method override in the query (Symfony, Laravel, Rails run _method's method) -------
    "method-override-in-the-query": (
        "/query/things?customer_id=cus_alice&_method=DELETE",
        (),
        (400, "bad_request", "override_parameter"),
    ),
    "method-override-percent-encoded-in-the-query": (
        "/query/things?customer_id=cus_alice&%5Fmethod=DELETE",
        (),
        (400, "bad_request", "override_parameter"),
    ),
    "method-override-dotted-read-by-php-as-the-same": (
        "/query/things?customer_id=cus_alice&.method=DELETE",
        (),
        (400, "bad_request", "override_parameter"),
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


FORM = (("Content-Type", "application/x-www-form-urlencoded"),)
MULTIPART = (("Content-Type", "multipart/form-data; boundary=b0undary"),)
OVERRIDE = (400, "bad_request", "override_parameter")


def multipart(*heads: str) -> bytes:
    parts = [f"--b0undary\r\n{head}\r\n\r\nDELETE\r\n" for head in heads]
    return ("".join(parts) + "--b0undary--\r\n").encode()


# (path and query as sent, headers, body) -> (status, code, reason): writes.
REFUSED_WRITES: dict[str, tuple[str, tuple[tuple[str, str], ...], bytes, tuple[int, str, str]]] = {
    "method-override-in-the-query-of-a-post": (
        "/plain/things?_method=DELETE",
        JSON,
        b'{"a": 1}',
        OVERRIDE,
    ),
    "method-override-in-a-form-body": ("/plain/things", FORM, b"a=1&_method=DELETE", OVERRIDE),
    "method-override-in-a-form-body-in-upper-case": (
        "/plain/things",
        FORM,
        b"_METHOD=DELETE",
        OVERRIDE,
    ),
    "method-override-in-a-form-body-percent-encoded": (
        "/plain/things",
        FORM,
        b"%5Fmethod=DELETE",
        OVERRIDE,
    ),
    "method-override-in-a-body-without-a-content-type-read-by-rack-as-a-form": (
        "/plain/things",
        (),
        b"_method=DELETE",
        OVERRIDE,
    ),
    "method-override-in-a-form-body-behind-a-type-list": (
        "/plain/things",
        (("Content-Type", "application/x-www-form-urlencoded, application/json"),),
        b"_method=DELETE",
        OVERRIDE,
    ),
    "method-override-in-a-body-whose-type-the-connection-header-drops": (
        "/plain/things",
        (*JSON, ("Connection", "Content-Type")),
        b"_method=DELETE",
        OVERRIDE,
    ),
    "method-override-in-a-multipart-body": (
        "/plain/things",
        MULTIPART,
        multipart('Content-Disposition: form-data; name="_method"'),
        OVERRIDE,
    ),
    "method-override-in-a-multipart-head-folded-over-two-lines": (
        "/plain/things",
        MULTIPART,
        multipart('Content-Disposition: form-data;\r\n name="_method"'),
        OVERRIDE,
    ),
    "method-override-in-a-multipart-body-with-a-quoted-boundary": (
        "/plain/things",
        (("Content-Type", 'multipart/form-data; boundary="b0undary"'),),
        multipart('Content-Disposition: form-data; name="_method"'),
        OVERRIDE,
    ),
    # Rails merges the query's parameters over the body's: the query's customer wins.
    "body-other-customer-in-the-query": (
        "/body/things?customer=cus_bob",
        JSON,
        b'{"customer": "cus_alice"}',
        (*MISMATCH, "customer_other"),
    ),
    "body-customer-in-the-query-in-an-array-form": (
        "/body/things?customer[]=cus_bob",
        JSON,
        b'{"customer": "cus_alice"}',
        (*MISMATCH, "customer_ambiguous"),
    ),
    "body-inject-other-customer-in-the-query": (
        "/body-inject/things?customer=cus_bob",
        JSON,
        b"{}",
        (*MISMATCH, "customer_other"),
    ),
    "nested-body-object-replaced-by-the-query": (
        "/body-nested/things?owner[customer]=cus_bob",
        JSON,
        b'{"owner": {"customer": "cus_alice"}}',
        (*MISMATCH, "customer_ambiguous"),
    ),
}


@pytest.mark.parametrize(
    ("path_qs", "headers", "body", "expected"),
    REFUSED_WRITES.values(),
    ids=REFUSED_WRITES.keys(),
)
async def test_a_write_naming_another_method_or_customer_is_refused_and_nothing_is_forwarded(
    bound: tuple[Recorder, DemoStack],
    http: aiohttp.ClientSession,
    path_qs: str,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    expected: tuple[int, str, str],
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "POST", path_qs, headers=headers, body=body)
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


async def test_parameters_that_only_begin_like_the_bound_name_are_not_read_as_it(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    path_qs = "/query/things?customer_id=cus_alice&customer_id_type=x&customerid=y&customer=z"
    answer = await send(http, stack, "GET", path_qs)
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == path_qs


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


async def test_the_mapped_customer_in_the_path_passes_when_the_query_names_it_too(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/v1/customers/cus_alice/things?customer_id=cus_alice")
    assert answer.status == 200
    assert (
        upstream.received[-1]["path_qs"] == "/v1/customers/cus_alice/things?customer_id=cus_alice"
    )


async def test_the_mapped_customer_in_the_body_passes_when_the_query_names_it_too(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    body = b'{"customer": "cus_alice"}'
    answer = await send(
        http, stack, "POST", "/body/things?customer=cus_alice", headers=JSON, body=body
    )
    assert answer.status == 200
    assert upstream.received[-1]["body"] == body.decode()


async def test_a_query_parameter_named_method_without_the_underscore_passes(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "GET", "/query/things?customer_id=cus_alice&method=card")
    assert answer.status == 200
    assert upstream.received[-1]["path_qs"] == "/query/things?customer_id=cus_alice&method=card"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (FORM, b"a=1&method=card"),
        (MULTIPART, multipart('Content-Disposition: form-data; name="a"')),
    ],
    ids=["form", "multipart"],
)
async def test_a_form_write_without_a_method_override_is_forwarded_as_sent(
    bound: tuple[Recorder, DemoStack],
    http: aiohttp.ClientSession,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "POST", "/plain/things", headers=headers, body=body)
    assert answer.status == 200
    assert upstream.received[-1]["body"] == body.decode()
    assert upstream.header("Content-Type") == [headers[0][1]]
