"""A plain pass-through proxy on dragoman's stack: the benchmark's baseline for "a proxy".

aiohttp server + one pooled aiohttp ``ClientSession`` per worker, on uvloop, workers
sharing the port with ``reuse_port``. It checks nothing: it drops hop-by-hop headers and
``Host``, forwards method, path, query, the other headers and the body (streamed), and
streams the answer back. The client session is configured like dragoman's forwarder
(``dragoman.forward.Forwarder``: same pool size, keep-alive, no decompression, no cookies,
no automatic headers), so "dragoman vs pass-through" isolates the cost of the pipeline.

    python bench/passthrough.py --port 9002 --upstream http://127.0.0.1:9001 --workers 1
"""

from __future__ import annotations

import argparse
import sys

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from dragoman.forward import HOP_BY_HOP
from serving import run_workers, serve_forever

DROP_REQUEST = HOP_BY_HOP | {"host"}
CHUNK = 64 * 1024
POOL_SIZE = 100  # dragoman's upstream.pool_size default
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)


class PassThrough:
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
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in DROP_REQUEST
        )
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        url = URL(self.base + request.raw_path, encoded=True)
        async with session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
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


def make_app(upstream: str) -> web.Application:
    proxy = PassThrough(upstream)
    app = web.Application(client_max_size=1_048_576)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.close)
    return app


def worker(host: str, port: int, upstream: str) -> None:
    serve_forever(make_app(upstream), host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Base URL of the upstream.")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers < 1:
        sys.exit("--workers must be at least 1")
    run_workers(worker, (args.host, args.port, args.upstream), args.workers)


if __name__ == "__main__":
    main()
