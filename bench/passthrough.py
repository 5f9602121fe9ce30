"""A plain pass-through proxy on dragoman's stack: the benchmark's baseline for "a proxy".

aiohttp server on uvloop, workers sharing the port with ``reuse_port``, and one of two
upstream clients per worker (``--client``):

- ``upstream-pool`` (the default, the table's "pass-through" row): dragoman's own
  upstream connections (:class:`dragoman.upstream_client.UpstreamPool`, aiohttp's client
  protocol and request writer without ``ClientSession``), with the forwarder's settings;
- ``client-session``: one pooled aiohttp ``ClientSession``, configured like dragoman's
  forwarder was until 2026-12-03 (same pool size and keep-alive, no decompression, no
  cookies, no automatic headers): what a team writing a proxy on aiohttp gets first.

It checks nothing: it drops hop-by-hop headers and ``Host``, forwards method, path, query,
the other headers and the body (streamed), and streams the answer back. So "dragoman vs
pass-through" isolates the cost of the pipeline.

    python bench/passthrough.py --port 9002 --upstream http://127.0.0.1:9001 --workers 1
"""

from __future__ import annotations

import argparse
import sys
from typing import Protocol

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from dragoman.forward import HOP_BY_HOP
from dragoman.upstream_client import UpstreamPool
from serving import run_workers, serve_forever

DROP_REQUEST = HOP_BY_HOP | {"host"}
CHUNK = 64 * 1024
POOL_SIZE = 100  # dragoman's upstream.pool_size default
CLIENTS = ("upstream-pool", "client-session")
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
POOL_KEY = web.AppKey("pool", UpstreamPool)


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in DROP_REQUEST)


class Answer(Protocol):
    """An upstream answer as both clients give it (ClientResponse, UpstreamAnswer)."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def headers(self) -> MultiMapping[str]: ...
    @property
    def content(self) -> StreamReader: ...


async def _copy_answer(request: web.Request, upstream: Answer) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if name.lower() not in HOP_BY_HOP:
            response.headers.add(name, value)
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left (wrk closes its connections when its time is up)
    return response


class SessionPassThrough:
    def __init__(self, upstream: str) -> None:
        self.base = upstream.rstrip("/")

    async def start(self, app: web.Application) -> None:
        app[SESSION_KEY] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_SIZE, keepalive_timeout=30),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self, app: web.Application) -> None:
        await app[SESSION_KEY].close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        session = request.app[SESSION_KEY]
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        url = URL(self.base + request.raw_path, encoded=True)
        async with session.request(
            request.method,
            url,
            headers=_request_headers(request),
            data=body,
            allow_redirects=False,
        ) as upstream:
            return await _copy_answer(request, upstream)


class PoolPassThrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    async def start(self, app: web.Application) -> None:
        # dragoman's upstream defaults: connect_timeout 5 s, read_timeout 30 s.
        app[POOL_KEY] = UpstreamPool(self.upstream, connect_timeout=5, read_timeout=30)

    async def close(self, app: web.Application) -> None:
        await app[POOL_KEY].close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = _request_headers(request)
        if "Content-Length" in headers:
            headers["Content-Length"] = str(request.content_length)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        upstream = await request.app[POOL_KEY].exchange(
            request.method, request.raw_path, headers, body
        )
        try:
            return await _copy_answer(request, upstream)
        finally:
            upstream.release()


def make_app(upstream: str, client: str = CLIENTS[0]) -> web.Application:
    proxy = PoolPassThrough(upstream) if client == "upstream-pool" else SessionPassThrough(upstream)
    app = web.Application(client_max_size=1_048_576)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.close)
    return app


def worker(host: str, port: int, upstream: str, client: str) -> None:
    serve_forever(make_app(upstream, client), host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Base URL of the upstream.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--client", choices=CLIENTS, default=CLIENTS[0])
    args = parser.parse_args()
    if args.workers < 1:
        sys.exit("--workers must be at least 1")
    run_workers(worker, (args.host, args.port, args.upstream, args.client), args.workers)


if __name__ == "__main__":
    main()
