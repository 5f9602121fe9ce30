"""A write's record is written before it is forwarded, and every forwarded answer's record
before the caller can hold the whole answer (so a replica dying at any instant leaves no
change at the upstream, and no answer at a caller, without its record)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import aiohttp

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


class Spy:
    """Wraps the proxy's audit sink: notes when each record was written, fails on demand."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.written: list[tuple[float, dict[str, Any]]] = []
        self.fail_on: str | None = None
        self.stall_on: str | None = None

    def write(self, record: dict[str, Any]) -> None:
        if record.get("event") == self.fail_on:
            raise OSError("disk full")
        if record.get("event") == self.stall_on:
            time.sleep(0.3)  # a slow disk: holds the proxy's event loop, as a real write does
        self.inner.write(record)
        self.written.append((time.monotonic(), record))

    def write_many(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        self.inner.close()


def spy_on(stack: DemoStack) -> Spy:
    assert stack.proxy is not None
    spy = Spy(stack.proxy.audit._sink)
    stack.proxy.audit._sink = spy
    return spy


def headers(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def test_write_has_a_forward_record_before_its_request_record(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    spy = spy_on(stack)
    async with http.post(stack.urls["proxy"] + PM, headers=headers(stack), json=CARD) as answer:
        assert answer.status == 201
    (forward, request) = [r for _, r in spy.written]
    assert (forward["event"], request["event"]) == ("forward", "request")
    assert forward["audit_id"] == request["audit_id"]
    assert forward["jti"] == request["jti"] == stack.platform.seen[-1].jti
    assert (forward["decision"], forward["upstream_status"]) == ("allow", None)
    assert request["upstream_status"] == 201


async def test_read_has_one_record(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    spy = spy_on(stack)
    async with http.get(stack.urls["proxy"] + PM, headers=headers(stack)) as answer:
        assert answer.status == 200
    assert [r["event"] for _, r in spy.written] == ["request"]


async def test_write_whose_forward_record_fails_is_not_forwarded(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    spy = spy_on(stack)
    spy.fail_on = "forward"
    async with http.post(stack.urls["proxy"] + PM, headers=headers(stack), json=CARD) as answer:
        assert answer.status == 503
        assert (await answer.json())["code"] == "audit_unavailable"
    assert stack.platform.seen == []


async def test_forwarded_answer_is_recorded_before_the_caller_has_all_of_it(
    stack: DemoStack,
) -> None:
    # The caller runs in another thread, so it reads whatever reaches its socket while the
    # proxy's event loop is held inside the sink's write: if the answer's last bytes had
    # left before the record was written, the caller would have them before the write ends.
    spy = spy_on(stack)
    spy.stall_on = "request"
    request = urllib.request.Request(stack.urls["proxy"] + PM, headers=headers(stack))  # noqa: S310

    def fetch() -> tuple[bytes, float]:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback)
            body = answer.read()
        return body, time.monotonic()

    body, received = await asyncio.to_thread(fetch)
    assert json.loads(body)["data"] is not None
    written, record = spy.written[-1]
    assert record["event"] == "request" and record["upstream_status"] == 200
    assert written < received


async def test_a_small_read_whose_record_fails_is_refused_503_with_none_of_the_answer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # An answer of one chunk is read whole, and its record written, before any of it goes
    # out (dragoman.forward): a record that fails leaves the status line unsent too. A
    # streamed answer is cut short instead (tests/test_forward.py).
    spy = spy_on(stack)
    spy.fail_on = "request"
    async with http.get(stack.urls["proxy"] + PM, headers=headers(stack)) as answer:
        assert answer.status == 503
        problem = await answer.json()
    assert problem["code"] == "audit_unavailable"
    assert "data" not in problem
    assert spy.written == []
    async with http.get(stack.urls["proxy"] + PM, headers=headers(stack)) as answer:
        assert answer.status == 503  # the trail is broken until the sink writes again
        assert (await answer.json())["code"] == "audit_unavailable"


async def test_an_answer_without_a_body_whose_record_fails_becomes_503(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + PM, headers=headers(stack)) as answer:
        method = (await answer.json())["data"][0]["id"]
    spy = spy_on(stack)
    spy.fail_on = "request"  # the delete's forward record is written; its request record not
    url = stack.urls["proxy"] + f"{PM}/{method}"
    async with http.delete(url, headers=headers(stack)) as answer:
        assert answer.status == 503
        assert (await answer.json())["code"] == "audit_unavailable"
    assert [r["event"] for _, r in spy.written] == ["forward"]
