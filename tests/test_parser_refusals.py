"""What aiohttp's HTTP parser refuses (SEMANTICS §7): a problem+json ``bad_request`` that
never quotes the refused bytes (a bearer token, a cookie), recorded like any refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from yarl import URL

from dragoman.demo.runner import DemoStack

TOKEN = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


async def raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    parts = URL(url)
    assert parts.host is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return int(status_line.split()[1]), headers, body


def records(stack: DemoStack) -> list[dict[str, Any]]:
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]


MALFORMED = {
    "control-byte-in-the-token": b"GET /v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
    + TOKEN
    + b"\x01\r\n\r\n",
    "control-byte-in-a-cookie": b"GET /v1/x HTTP/1.1\r\nHost: a\r\nCookie: s="
    + TOKEN
    + b"\x7f\r\n\r\n",
    "content-length-twice": b"POST /v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
    + TOKEN
    + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_request_the_parser_refuses_is_answered_problem_json_without_its_bytes(
    stack: DemoStack, data: bytes
) -> None:
    status, headers, body = await raw(stack.urls["proxy"], data)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["code"] == "bad_request"
    assert TOKEN not in body and b"eyJ" not in body


async def test_a_request_the_parser_refuses_is_recorded_under_the_audit_id_it_was_given(
    stack: DemoStack,
) -> None:
    _, _, body = await raw(stack.urls["proxy"], MALFORMED["control-byte-in-the-token"])
    (record,) = records(stack)
    assert record["audit_id"] == json.loads(body)["audit_id"]
    assert (record["decision"], record["code"], record["client_ip"]) == (
        "deny",
        "bad_request",
        "127.0.0.1",
    )
    assert "eyJ" not in (stack.state_dir / "audit.jsonl").read_text("utf-8")


async def test_a_request_the_decision_listeners_parser_refuses_is_recorded_as_a_decision(
    make_stack: Callable[..., Awaitable[DemoStack]],
) -> None:
    """Answered as nginx reads a refusal (a 400 would be a 500 to auth_request): 403, the
    real status and the problem in X-Dragoman-Status and X-Dragoman-Problem."""
    stack = await make_stack({"decision": {"enabled": True}})
    data = MALFORMED["control-byte-in-the-token"].replace(b"/v1/x", b"/auth_request")
    status, headers, body = await raw(stack.decision_url, data)
    assert (status, headers["content-type"]) == (403, "application/problem+json")
    assert headers["x-dragoman-status"] == "400"
    assert json.loads(headers["x-dragoman-problem"])["code"] == "bad_request"
    assert TOKEN not in body and b"eyJ" not in headers["x-dragoman-problem"].encode()
    (record,) = records(stack)
    assert (record["event"], record["audit_id"]) == ("decision", json.loads(body)["audit_id"])
    assert (record["decision"], record["code"]) == ("deny", "bad_request")


async def test_a_request_the_decision_listeners_parser_refuses_from_a_stranger_is_peer_not_allowed(
    make_stack: Callable[..., Awaitable[DemoStack]],
) -> None:
    """As on every route of the listener: a peer that is not allowed learns nothing more."""
    stack = await make_stack({"decision": {"enabled": True, "allowed_peers": ["10.9.0.0/16"]}})
    data = MALFORMED["control-byte-in-the-token"].replace(b"/v1/x", b"/auth_request")
    status, _, body = await raw(stack.decision_url, data)
    assert (status, json.loads(body)["code"]) == (403, "peer_not_allowed")
    (record,) = records(stack)
    assert (record["event"], record["code"], record["client_ip"]) == (
        "decision",
        "peer_not_allowed",
        "127.0.0.1",
    )
