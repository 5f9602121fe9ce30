"""Helpers of the customer-binding tests: a recording upstream and a catalog whose
operations name the customer in every place a request can (path, query, header, JSON body;
enforce and inject), and a way to send requests byte for byte as an attacker would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from dragoman.demo.runner import DemoStack

ALICE = "cus_alice"
"""The customer alice's account (acct-1001) is mapped to."""
BOB = "cus_bob"
JSON = (("Content-Type", "application/json"),)


def binding(location: str, name: str, mode: str = "enforce") -> dict[str, str]:
    return {"location": location, "name": name, "mode": mode}


# id, method, path, customer bindings
BOUND_OPS: list[tuple[str, str, str, list[dict[str, str]]]] = [
    ("path.get", "GET", "/v1/customers/{customer_id}/things", [binding("path", "customer_id")]),
    ("query.get", "GET", "/query/things", [binding("query", "customer_id")]),
    (
        "query_inject.get",
        "GET",
        "/query-inject/things",
        [binding("query", "customer_id", "inject")],
    ),
    ("header.get", "GET", "/header/things", [binding("header", "X-Customer-Id")]),
    (
        "header_inject.get",
        "GET",
        "/header-inject/things",
        [binding("header", "X-Customer-Id", "inject")],
    ),
    ("body.post", "POST", "/body/things", [binding("body", "/customer")]),
    ("body_nested.post", "POST", "/body-nested/things", [binding("body", "/owner/customer")]),
    ("body_inject.post", "POST", "/body-inject/things", [binding("body", "/customer", "inject")]),
    (
        "body_nested_inject.post",
        "POST",
        "/nested-inject/things",
        [binding("body", "/owner/customer", "inject")],
    ),
    ("plain.post", "POST", "/plain/things", []),
]


@dataclass
class Recorder:
    """The upstream: answers 200 and remembers every request that reached it, whole."""

    received: list[dict[str, Any]] = field(default_factory=list)

    async def record(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = {
            "method": request.method,
            "path_qs": request.raw_path,
            "query": [[k, v] for k, v in request.query.items()],
            "match_info": dict(request.match_info),
            "headers": [[k.lower(), v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        self.received.append(seen)
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v1/customers/{customer_id}/things", self.record)
        app.router.add_route("*", "/{kind}/things", self.record)
        return app

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` in the last request received."""
        return [v for k, v in self.received[-1]["headers"] if k == name.lower()]


def overrides(upstream_url: str) -> dict[str, Any]:
    return {
        "upstream": {"url": upstream_url, "read_timeout": 5},
        "server": {"max_body_bytes": 64 * 1024},
        "catalog": {
            "operations": [
                {
                    "id": op_id,
                    "method": method,
                    "path": path,
                    "scope": op_id.replace(".", ":").replace("-", "_"),
                    "customer": bindings,
                }
                for op_id, method, path, bindings in BOUND_OPS
            ]
        },
    }


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


async def send(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    method: str,
    path_qs: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> Answer:
    """Send ``path_qs`` and every header line exactly as written, as alice (billing_admin).

    A raw HTTP/1.1 request on its own connection: HTTP clients merge repeated header lines
    and re-encode paths, which is exactly what an attacker does not do. (``http`` is taken
    for symmetry with the other helpers and left unused.)"""
    del http
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    url = URL(stack.urls["proxy"])
    lines = [
        f"{method} {path_qs} HTTP/1.1",
        f"Host: {url.host}:{url.port}",
        "Connection: close",
        f"Authorization: Bearer {token}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head + (body or b""))
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in header_block.lower():
        payload = unchunk(payload)
    is_json = b"json" in header_block.lower()
    return Answer(int(status_line.split()[1]), json.loads(payload) if is_json else {})


def unchunk(data: bytes) -> bytes:
    """The body of a chunked message, from its first chunk-size line."""
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


def audit(stack: DemoStack) -> list[dict[str, Any]]:
    lines = (stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]
