"""The demo console: the host application, on its own origin, with its own sign-in.

It signs users in with the development issuer (server side) and hands the page an access
token; the page embeds the payment widget, which dragoman serves from its own origin, and
passes the token to it. The widget calls the payment platform only through dragoman.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from dragoman.demo.issuer import DevIssuer

USERS = {
    "alice": {"cloud_account": "acct-1001", "roles": ["billing_admin"]},
    "bob": {"cloud_account": "acct-2002", "roles": ["viewer"]},
    "mallory": {"cloud_account": "acct-9999", "roles": ["billing_admin"]},
}
WIDGET_PATH = "/_dragoman/pages/widget.html"
_STATIC = resources.files("dragoman.demo") / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def console_app(issuer: DevIssuer, proxy_url: str) -> web.Application:
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' {proxy_url}; frame-src {proxy_url}; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    )

    def static(name: str) -> web.Response:
        suffix = name[name.rfind(".") :]
        response = web.Response(
            body=(_STATIC / name).read_bytes(), content_type=_TYPES.get(suffix, "text/plain")
        )
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def index(_: web.Request) -> web.Response:
        return static("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("console.js", "console.css"):
            raise web.HTTPNotFound()
        return static(name)

    async def session(request: web.Request) -> web.Response:
        body = await request.json()
        user = USERS.get(str(body.get("user")))
        if user is None:
            raise web.HTTPForbidden()
        token = issuer.token(
            str(body["user"]), str(user["cloud_account"]), roles=list(user["roles"]), ttl=900
        )
        return web.json_response(
            {"access_token": token, "proxy": proxy_url, "widget": proxy_url + WIDGET_PATH},
            headers={"Cache-Control": "no-store"},
        )

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
    app.router.add_post("/session", session)
    return app
