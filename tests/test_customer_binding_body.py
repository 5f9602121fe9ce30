"""Customer bindings in a JSON body (a JSON pointer): the confused-deputy battery.

The body of an operation with a body binding is buffered, parsed strictly and checked; the
upstream receives exactly the checked bytes (or, in inject mode, the document with the
mapped customer written into it). Anything two JSON parsers could read differently is
refused, and the recording upstream receives nothing.
"""

from __future__ import annotations

import json
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
GZIP = (*JSON, ("Content-Encoding", "gzip"))

# (path, body as sent, headers) -> (status, code, reason)
REFUSED: dict[str, tuple[str, bytes, tuple[tuple[str, str], ...], tuple[int, str, str]]] = {
    "absent": ("/body/things", b'{"amount": 5}', JSON, (*MISMATCH, "customer_absent")),
    "empty-body": ("/body/things", b"", JSON, (*MISMATCH, "customer_absent")),
    "other-customer": (
        "/body/things",
        b'{"customer": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_other"),
    ),
    "other-customer-unicode-escaped": (
        "/body/things",
        b'{"customer": "cus\\u005fbob"}',
        JSON,
        (*MISMATCH, "customer_other"),
    ),
    "customer-not-a-string": (
        "/body/things",
        b'{"customer": ["cus_alice"]}',
        JSON,
        (*MISMATCH, "customer_other"),
    ),
    "duplicate-key-top-level": (
        "/body/things",
        b'{"customer": "cus_alice", "customer": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "duplicate-key-spelled-with-an-escape": (
        "/body/things",
        b'{"customer": "cus_alice", "\\u0063ustomer": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "duplicate-key-in-another-case": (
        "/body/things",
        b'{"customer": "cus_alice", "Customer": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "duplicate-key-in-capitals": (
        "/body/things",
        b'{"customer": "cus_alice", "CUSTOMER": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "nested-duplicate-key-in-another-case": (
        "/body-nested/things",
        b'{"owner": {"customer": "cus_alice", "cUstomer": "cus_bob"}}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "duplicate-key-nested-elsewhere": (
        "/body/things",
        b'{"customer": "cus_alice", "meta": {"a": 1, "a": 2}}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "duplicate-key-in-an-array-member": (
        "/body/things",
        b'{"customer": "cus_alice", "items": [{"id": 1, "id": 2}]}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "nested-other-customer": (
        "/body-nested/things",
        b'{"owner": {"customer": "cus_bob"}}',
        JSON,
        (*MISMATCH, "customer_other"),
    ),
    "nested-duplicate-key": (
        "/body-nested/things",
        b'{"owner": {"customer": "cus_alice", "customer": "cus_bob"}}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "nested-duplicate-parent": (
        "/body-nested/things",
        b'{"owner": {"customer": "cus_alice"}, "owner": {"customer": "cus_bob"}}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "nested-parent-is-an-array": (
        "/body-nested/things",
        b'{"owner": [{"customer": "cus_alice"}]}',
        JSON,
        (*MISMATCH, "customer_absent"),
    ),
    "invalid-json": (
        "/body/things",
        b'{"customer": "cus_alice"',
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "nan-is-not-json": (
        "/body/things",
        b'{"customer": "cus_alice", "amount": NaN}',
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "number-beyond-a-double": (
        "/body/things",
        b'{"customer": "cus_alice", "amount": 1e999}',
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "integer-too-long-to-convert": (
        "/body/things",
        b'{"customer": "cus_alice", "amount": ' + b"9" * 5000 + b"}",
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "lone-surrogate-name-some-parsers-drop": (
        "/body/things",
        b'{"customer": "cus_alice", "customer\\ud800": "cus_bob"}',
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "byte-order-mark": (
        "/body/things",
        b'\xef\xbb\xbf{"customer": "cus_alice"}',
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "not-utf-8": (
        "/body/things",
        '{"customer": "cus_alice"}'.encode("utf-16"),
        JSON,
        (400, "bad_request", "body_invalid"),
    ),
    "no-content-type": (
        "/body/things",
        b'{"customer": "cus_alice"}',
        (("Content-Type", "text/plain"),),
        (415, "media_type_unsupported", "media_type_unsupported"),
    ),
    "form-content-type": (
        "/body/things",
        b"customer=cus_alice",
        (("Content-Type", "application/x-www-form-urlencoded"),),
        (415, "media_type_unsupported", "media_type_unsupported"),
    ),
    "another-charset": (
        "/body/things",
        b'{"customer": "cus_alice"}',
        (("Content-Type", "application/json; charset=latin-1"),),
        (415, "media_type_unsupported", "charset_unsupported"),
    ),
    "content-encoded": (
        "/body/things",
        b'{"customer": "cus_alice"}',
        GZIP,
        (415, "media_type_unsupported", "content_encoding_unsupported"),
    ),
    "inject-other-customer": (
        "/body-inject/things",
        b'{"customer": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_other"),
    ),
    "inject-duplicate-key": (
        "/body-inject/things",
        b'{"amount": 1, "amount": 2}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "inject-beside-a-case-variant": (
        "/body-inject/things",
        b'{"Customer": "cus_bob"}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "inject-beside-a-case-variant-nested": (
        "/nested-inject/things",
        b'{"Owner": {"customer": "cus_bob"}}',
        JSON,
        (*MISMATCH, "customer_ambiguous"),
    ),
    "inject-into-an-array": (
        "/body-inject/things",
        b'[{"customer": "cus_alice"}]',
        JSON,
        (400, "bad_request", "customer_unplaceable"),
    ),
}


@pytest.mark.parametrize(
    ("path", "body", "headers", "expected"), REFUSED.values(), ids=REFUSED.keys()
)
async def test_a_body_naming_the_customer_wrongly_is_refused_and_nothing_is_forwarded(
    bound: tuple[Recorder, DemoStack],
    http: aiohttp.ClientSession,
    path: str,
    body: bytes,
    headers: tuple[tuple[str, str], ...],
    expected: tuple[int, str, str],
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "POST", path, headers=headers, body=body)
    assert refusal(answer, stack) == expected
    assert upstream.received == []


async def test_two_content_type_lines_are_refused_by_the_http_parser(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    headers = (*JSON, ("Content-Type", "text/plain"))
    answer = await send(http, stack, "POST", "/body/things", headers=headers, body=b"{}")
    assert answer.status == 400
    assert upstream.received == []


async def test_a_chunked_body_over_the_limit_is_refused_before_anything_is_forwarded(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"customer": "cus_alice", "pad": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(
        stack.urls["proxy"] + "/body/things", headers=headers, data=chunks()
    ) as response:
        assert response.status == 413
    assert audit(stack)[-1]["code"] == "body_too_large"
    assert upstream.received == []


async def test_the_mapped_customer_in_the_body_passes_and_the_checked_bytes_are_forwarded(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    sent = b'{ "amount" : 1.10,\n  "customer":"cus\\u005falice", "note": "\xc3\xa9" }'
    answer = await send(http, stack, "POST", "/body/things", headers=JSON, body=sent)
    assert answer.status == 200
    assert upstream.received[-1]["body"].encode() == sent
    assert upstream.header("Content-Length") == [str(len(sent))]


async def test_the_mapped_customer_in_a_nested_member_passes(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    sent = b'{"owner": {"customer": "cus_alice"}, "customer": "cus_bob"}'
    answer = await send(http, stack, "POST", "/body-nested/things", headers=JSON, body=sent)
    # Only the bound member names the customer; another member is the upstream's business.
    assert answer.status == 200
    assert upstream.received[-1]["body"].encode() == sent


async def test_inject_mode_writes_the_mapped_customer_into_the_body(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    sent = b'{"amount": 5, "card": {"last4": "4242"}}'
    answer = await send(http, stack, "POST", "/body-inject/things", headers=JSON, body=sent)
    assert answer.status == 200
    forwarded = upstream.received[-1]["body"]
    assert json.loads(forwarded) == {"amount": 5, "card": {"last4": "4242"}, "customer": ALICE}
    assert upstream.header("Content-Length") == [str(len(forwarded.encode()))]


async def test_inject_mode_writes_a_body_when_there_was_none(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    answer = await send(http, stack, "POST", "/body-inject/things")
    assert answer.status == 200
    assert json.loads(upstream.received[-1]["body"]) == {"customer": ALICE}
    assert upstream.header("Content-Type") == ["application/json"]


async def test_inject_mode_forwards_a_body_naming_the_mapped_customer_unchanged(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    sent = b'{"customer":  "cus_alice", "amount": 1.10}'
    answer = await send(http, stack, "POST", "/body-inject/things", headers=JSON, body=sent)
    assert answer.status == 200
    assert upstream.received[-1]["body"].encode() == sent


async def test_an_operation_without_a_body_binding_still_streams_any_body(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    sent = b'{"customer": "cus_bob", "customer": "whatever"} not even JSON'
    answer = await send(
        http, stack, "POST", "/plain/things", headers=(("Content-Type", "text/plain"),), body=sent
    )
    assert answer.status == 200
    assert upstream.received[-1]["body"].encode() == sent
