"""The benchmark's plain upstream: the demo catalog's routes, no auth, small fixed answers.

It stands in for the payment platform without the platform's own token check, so that the
benchmark measures the proxies and not the upstream's JWT verification. Every route of
:data:`dragoman.demo.platform.OPERATIONS` is served; reads answer a ~200-byte JSON body,
writes read the request body and answer a small JSON body (201 for POST), DELETE 204.
``GET /livez`` answers ``ok`` for the readiness poll. Any other path answers like a
route of the same method (reads 200 with the list body, POST 201, ...), so generated
catalogs (the scaling curves) have an upstream too.

It verifies no token under load (that would add the same cost to every row). Instead, a
request carrying ``X-Bench-Check: <nonce>`` (the benchmark's checked GET and POST of each
row) is remembered, and ``GET /_bench/check/<nonce>`` answers what arrived (method, path,
``Authorization``) once, so the benchmark verifies the forwarded token itself, with
dragoman's ``TokenVerifier``, as the demo platform would (``scenario.check_once``).

    python bench/upstream.py --port 9001
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

from dragoman.demo.platform import OPERATIONS
from serving import serve_forever

PAYMENT_METHOD = {
    "id": "pm_3f9a1c2b7d4e",
    "object": "payment_method",
    "brand": "visa",
    "last4": "4242",
    "exp_month": 12,
    "exp_year": 2030,
    "default": True,
}
LIST_BODY = json.dumps(
    {"object": "list", "data": [PAYMENT_METHOD], "has_more": False}, separators=(",", ":")
).encode()
ITEM_BODY = json.dumps(PAYMENT_METHOD, separators=(",", ":")).encode()


CHECK_HEADER = "X-Bench-Check"
CHECKED: dict[str, dict[str, str | None]] = {}
"""nonce -> what the checked request brought (at most a few hundred: one run's checks)."""


def _note(request: web.Request) -> None:
    nonce = request.headers.get(CHECK_HEADER)
    if nonce is not None:
        if len(CHECKED) > 1000:
            CHECKED.clear()
        CHECKED[nonce] = {
            "method": request.method,
            "path": request.raw_path,
            "authorization": request.headers.get("Authorization"),
        }


async def checked(request: web.Request) -> web.Response:
    found = CHECKED.pop(request.match_info["nonce"], None)
    if found is None:
        raise web.HTTPNotFound()
    return web.json_response(found)


def _answer(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


async def read_one(request: web.Request) -> web.Response:
    _note(request)
    return _answer(LIST_BODY if request.path.endswith("/payment-methods") else ITEM_BODY)


async def write_one(request: web.Request) -> web.Response:
    _note(request)
    await request.read()  # consume the body, as a real upstream would
    return _answer(ITEM_BODY, status=201 if request.method == "POST" else 200)


async def delete_one(request: web.Request) -> web.Response:
    _note(request)
    return web.Response(status=204)


async def livez(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/_bench/check/{nonce}", checked)
    handlers = {"GET": read_one, "POST": write_one, "PUT": write_one, "DELETE": delete_one}
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, handlers[op.method])
    app.router.add_route("PATCH", "/{tail:.*}", write_one)
    for method, handler in handlers.items():
        app.router.add_route(method, "/{tail:.*}", handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_forever(make_app(), args.host, args.port)


if __name__ == "__main__":
    main()
