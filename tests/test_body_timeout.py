"""A request body that stops arriving (`server.body_timeout`): the slowloris write.

A caller sends its head and part of its body, then nothing, or a chunk the parser cannot
read. Every place that reads a caller's body (the forwarder, a customer binding in the
body, registration) waits at most `body_timeout` for the next bytes, then answers 408
`body_timeout`, records the refusal and closes the connection. Before, the wait had no end:
a forwarded write held one of the upstream's pooled connections for good, and with
`upstream.pool_size` such writes every other caller got 504.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from binding_support import Recorder, overrides
from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
WAIT = 0.5
STALLED = b'5\r\n{"a":\r\n'  # one chunk of a JSON body, and nothing after it


def alice(stack: DemoStack, roles: list[str] | None = None) -> str:
    return stack.issuer.token("alice", "acct-1001", roles=roles or ["billing_admin"])


def carol(stack: DemoStack) -> str:
    return stack.issuer.token("carol", "acct-3003", roles=["owner"])


def audit(stack: DemoStack) -> list[dict[str, Any]]:
    lines = (stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


async def stalled_write(
    stack: DemoStack, path: str, token: str, tail: bytes = b""
) -> tuple[int, dict[str, Any], bool]:
    """POST ``path`` with a chunked JSON body that stops after its first chunk (then
    ``tail``); the answer's status and problem, and whether it closes the connection
    (aiohttp then reads what more comes for a while, and closes)."""
    url = URL(stack.urls["proxy"])
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + STALLED
            + tail
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        problem = json.loads(await reader.readexactly(length))
        return status, problem, b"\r\nconnection: close\r\n" in head.lower()
    finally:
        writer.close()


async def test_a_forwarded_body_that_stops_arriving_is_refused_408_and_recorded(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"body_timeout": WAIT}})
    status, problem, closed = await stalled_write(stack, PM, alice(stack))
    assert (status, problem["code"]) == (408, "body_timeout")
    assert closed
    (record,) = [
        r
        for r in audit(stack)
        if r.get("audit_id") == problem["audit_id"] and r["event"] == "request"
    ]
    assert (record["decision"], record["code"], record["reason"]) == (
        "deny",
        "body_timeout",
        "body_stalled",
    )


@pytest.mark.parametrize(
    ("tail", "refused"),
    [(b"", (408, "body_timeout")), (b"ZZ\r\n", (400, "bad_request"))],
    ids=["nothing-more", "unreadable-chunk"],
)
async def test_stalled_writes_do_not_keep_the_upstream_pool_from_other_callers(
    make_stack: MakeStack, http: aiohttp.ClientSession, tail: bytes, refused: tuple[int, str]
) -> None:
    """With one pooled upstream connection, a stalled write took it for good: the next
    caller waited read_timeout and got 504 upstream_pool_exhausted. A chunk the parser
    cannot read is answered 400 at once, but the body's reader was never told: it waited
    just the same."""
    stack = await make_stack(
        {"server": {"body_timeout": WAIT}, "upstream": {"pool_size": 1, "read_timeout": 5}}
    )
    stalled = asyncio.ensure_future(stalled_write(stack, PM, alice(stack), tail))
    await asyncio.sleep(0.2)  # the write holds the one upstream connection
    headers = {"Authorization": f"Bearer {alice(stack)}"}
    async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
        assert response.status == 200
    status, problem, _ = await stalled
    assert (status, problem["code"]) == refused


@pytest.fixture
async def bound(
    serve: Callable[[web.Application], Any], make_stack: MakeStack
) -> AsyncIterator[tuple[Recorder, DemoStack]]:
    upstream = Recorder()
    async with serve(upstream.app()) as url:
        settings = overrides(url)
        settings["server"]["body_timeout"] = WAIT
        yield upstream, await make_stack(settings)


async def test_a_body_binding_whose_body_stops_arriving_is_refused_408(
    bound: tuple[Recorder, DemoStack],
) -> None:
    upstream, stack = bound
    status, problem, closed = await stalled_write(stack, "/body/things", alice(stack))
    assert (status, problem["code"], closed) == (408, "body_timeout", True)
    assert upstream.received == []


async def test_a_registration_whose_body_stops_arriving_is_refused_408(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"body_timeout": WAIT}})
    stack.platform.add_customer("cus_carol", "acct-3003")
    status, problem, closed = await stalled_write(stack, "/_dragoman/registration", carol(stack))
    assert (status, problem["code"], closed) == (408, "body_timeout", True)
    assert stack.proxy is not None
    assert await stack.proxy.store.find_by_account("acct-3003") is None
