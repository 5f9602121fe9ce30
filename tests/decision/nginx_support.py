"""nginx running deploy/nginx/dragoman-decision.conf, and a tap that records what reaches
the platform behind it.

The shipped file is rendered by substituting its three documented addresses only (each
must occur exactly once, so a change of the file cannot silently escape the test), and
included in an ``http {}`` block that, as bench/nginx.py does, keeps everything nginx
writes (pid, error log, temp paths) in the test's own directory and runs it in the
foreground. With a ``DecisionTls``, the decision location's ``proxy_pass`` is also turned
into the TLS one docs/decision.md shows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "dragoman-decision.conf"
NGINX = os.environ.get("DRAGOMAN_TEST_NGINX", "/usr/sbin/nginx")
DECISION_PLACEHOLDER = "server 127.0.0.1:9191;"
UPSTREAM_PLACEHOLDER = "server 127.0.0.1:8080;"
LISTEN_PLACEHOLDER = "listen 8000;"
DECISION_PASS = "proxy_pass http://dragoman_decision/auth_request;"


@dataclass(frozen=True, slots=True)
class DecisionTls:
    """nginx's side of TLS to the decision listener (docs/decision.md, "TLS and mutual
    TLS"): the CA it trusts for dragoman's certificate, the name it checks in it, and its
    own client certificate (None: it presents none)."""

    trusted_ca: Path
    name: str
    certificate: tuple[Path, Path] | None
    """nginx's client certificate and its key."""

    def directives(self) -> list[str]:
        lines = ["proxy_pass https://dragoman_decision/auth_request;"]
        if self.certificate is not None:
            cert, key = self.certificate
            lines += [f"proxy_ssl_certificate {cert};", f"proxy_ssl_certificate_key {key};"]
        return [
            *lines,
            f"proxy_ssl_trusted_certificate {self.trusted_ca};",
            "proxy_ssl_verify on;",
            f"proxy_ssl_name {self.name};",
            "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        ]


def nginx_binary() -> str | None:
    if Path(NGINX).exists():
        return NGINX
    return shutil.which("nginx")


def host_port(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


def render(*, decision: str, upstream: str, listen: str, tls: DecisionTls | None = None) -> str:
    """The shipped server block with its addresses (``host:port``) replaced, asking the
    decision listener over TLS with ``tls``."""
    text = SHIPPED.read_text("utf-8")
    replacements = [
        (DECISION_PLACEHOLDER, f"server {decision};"),
        (UPSTREAM_PLACEHOLDER, f"server {upstream};"),
        (LISTEN_PLACEHOLDER, f"listen {listen};"),
    ]
    if tls is not None:
        replacements.append((DECISION_PASS, "\n        ".join(tls.directives())))
    for placeholder, value in replacements:
        assert text.count(placeholder) == 1, f"{placeholder!r} is not once in {SHIPPED}"
        text = text.replace(placeholder, value)
    return text


def main_config(directory: Path, server_block: Path) -> str:
    """An nginx.conf whose ``http {}`` includes ``server_block``."""
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers reach the temp dir
    return f"""# Written by tests/decision/nginx_support.py
{user}daemon off;
master_process on;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {server_block};
}}
"""


def write_config(
    directory: Path,
    *,
    decision: str,
    upstream: str,
    listen: str,
    tls: DecisionTls | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    server_block = directory / "dragoman-decision.conf"
    server_block.write_text(
        render(decision=decision, upstream=upstream, listen=listen, tls=tls), "utf-8"
    )
    conf = directory / "nginx.conf"
    conf.write_text(main_config(directory, server_block), "utf-8")
    return conf


def command(binary: str, directory: Path, conf: Path, *extra: str) -> list[str]:
    return [
        binary,
        "-p",
        str(directory),
        "-e",
        str(directory / "error.log"),
        "-c",
        str(conf),
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def refusing_address() -> tuple[socket.socket, str]:
    """A loopback address where nothing listens: the socket is bound (no one else gets the
    port) but never listens, so connecting to it is refused. Close the socket when done."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@asynccontextmanager
async def running_nginx(
    binary: str,
    directory: Path,
    *,
    decision: str,
    upstream: str,
    tls: DecisionTls | None = None,
) -> AsyncIterator[str]:
    """nginx on the shipped configuration (asking over TLS with ``tls``); yields its base
    URL."""
    port = free_port()
    conf = write_config(
        directory, decision=decision, upstream=upstream, listen=f"127.0.0.1:{port}", tls=tls
    )
    process = subprocess.Popen(
        command(binary, directory, conf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        while not _accepts(port):
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                log = directory / "error.log"
                errors = log.read_text() if log.exists() else ""
                raise AssertionError(f"nginx exited {process.returncode}: {output}{errors}")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await asyncio.to_thread(process.communicate)


# -- the tap ---------------------------------------------------------------------------------

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A request as it reached the upstream: method, target and every header."""

    method: str
    target: str
    headers: CIMultiDictProxy[str]


class Tap:
    """The upstream nginx forwards to: records each request as it arrived (the platform's
    own ``seen`` keeps no headers), then relays it to the platform unchanged."""

    def __init__(self, platform_url: str) -> None:
        self.platform_url = platform_url
        self.arrivals: list[Arrival] = []
        self.answer_headers: dict[str, str] = {}
        """Set on every answer relayed back (over the platform's own)."""
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(
            Arrival(
                request.method, request.raw_path, CIMultiDictProxy(CIMultiDict(request.headers))
            )
        )
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        async with self._session.request(
            request.method,
            URL(self.platform_url + request.raw_path, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as answer:
            payload = await answer.read()
            kept = CIMultiDict(
                (k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP
            )
            kept.update(self.answer_headers)
            return web.Response(status=answer.status, body=payload, headers=kept)
