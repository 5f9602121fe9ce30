"""Pages the proxy serves itself: the client helper and an operator's widget (SEMANTICS §5).

``GET /_dragoman/client.js`` is the browser client (:file:`static/dragoman-client.js`);
``GET /_dragoman/pages/NAME`` serves the files of ``browser.pages_dir``. Files are read once,
at start, so a page cannot change under a running proxy and a missing file is an error at
start rather than at the first visitor.

Every HTML answer carries a fresh CSP nonce: the literal ``{{csp-nonce}}`` in the file
becomes it, and the policy runs only scripts carrying it; the modules such a script imports
inherit its nonce. Nothing else runs: not a script element added to the page without the
nonce (``'strict-dynamic'`` would let running script add them, so it is not used), not an
event-handler attribute, not a script from another origin. Pages may be
framed only by ``browser.frame_ancestors``; nothing else may frame them. HTML is never
cached (each answer's nonce is single-use); scripts and styles are revalidated.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aiohttp import web

from dragoman.settings import BrowserSettings

PAGES_PREFIX = "/_dragoman/pages/"
CLIENT_PATH = "/_dragoman/client.js"
NONCE_MARK = b"{{csp-nonce}}"
MAX_PAGE_BYTES = 1 << 20

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Subresources (scripts, styles) are loaded, never framed, run or navigated to.
ASSET_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class PageError(ValueError):
    """A page directory the proxy cannot serve (named in the message)."""


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    content_type: str

    @property
    def is_html(self) -> bool:
        return self.content_type == "text/html"


def page_csp(nonce: str, frame_ancestors: list[str]) -> str:
    """The policy of one HTML answer."""
    ancestors = " ".join(frame_ancestors) if frame_ancestors else "'none'"
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; "
        f"style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; connect-src 'self'; "
        f"form-action 'none'; base-uri 'none'; object-src 'none'; "
        f"frame-ancestors {ancestors}"
    )


def read_pages(directory: Path) -> dict[str, Page]:
    """The servable files of ``directory`` (not its subdirectories), by name."""
    pages: dict[str, Page] = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if not path.is_file() or content_type is None or not _NAME.match(path.name):
            continue
        if path.stat().st_size > MAX_PAGE_BYTES:
            raise PageError(f"browser.pages_dir: {path.name} is larger than 1 MiB")
        pages[path.name] = Page(path.read_bytes(), content_type)
    return pages


def client_script() -> bytes:
    return (resources.files("dragoman.browser") / "static" / "dragoman-client.js").read_bytes()


class PageServer:
    def __init__(
        self,
        settings: BrowserSettings,
        headers: Mapping[str, str],
        pages: Mapping[str, Page] | None = None,
        *,
        unknown: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
    ) -> None:
        """``unknown`` answers a name no page has (the proxy's pipeline, which refuses it
        problem+json and records it as it does any path it does not serve)."""
        self._unknown = unknown
        if pages is None:
            pages = read_pages(settings.pages_dir) if settings.pages_dir is not None else {}
        self._pages = dict(pages)
        self._client = Page(client_script(), "text/javascript")
        self._frame_ancestors = list(settings.frame_ancestors)
        self._headers = dict(headers)

    @property
    def names(self) -> list[str]:
        return sorted(self._pages)

    async def page(self, request: web.Request) -> web.StreamResponse:
        page = self._pages.get(request.match_info["name"])
        if page is None:
            if self._unknown is not None:
                return await self._unknown(request)
            raise web.HTTPNotFound(headers=self._headers)
        return self._answer(page)

    async def client(self, request: web.Request) -> web.StreamResponse:
        return self._answer(self._client)

    def _answer(self, page: Page) -> web.Response:
        headers = dict(self._headers)
        body = page.body
        if page.is_html:
            nonce = secrets.token_urlsafe(18)
            body = body.replace(NONCE_MARK, nonce.encode("ascii"))
            headers["Content-Security-Policy"] = page_csp(nonce, self._frame_ancestors)
            headers["Cache-Control"] = "no-store"
            if self._frame_ancestors:
                # X-Frame-Options has no allow-list; frame-ancestors above is the rule.
                headers.pop("X-Frame-Options", None)
        else:
            headers["Content-Security-Policy"] = ASSET_CSP
            headers["Cache-Control"] = "no-cache"
        return web.Response(body=body, content_type=page.content_type, headers=headers)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(CLIENT_PATH, self.client)
        app.router.add_get(PAGES_PREFIX + "{name}", self.page)
