"""A TLS listener's files for tests: a server CA its clients trust, the certificate and key
it serves (replaced the ways a renewal replaces them), and aiohttp listeners serving a
:class:`~dragoman.tls.ServerTls`."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from certs import Authority, Issued, name
from dragoman.settings import TlsSettings
from dragoman.tls import ServerTls


class ServerFiles:
    """The listener's certificate files, and the CA its clients trust."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority = Authority("dragoman tests server CA")
        self.ca_file = self.authority.write(directory, "server-ca")
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"

    def issue(self, common_name: str, *, days: int = 1) -> Issued:
        """A certificate for 127.0.0.1 that expires ``days`` from now."""
        expires = datetime.now(UTC) + timedelta(days=days)
        return self.authority.issue(subject=name(common_name), ips=["127.0.0.1"], not_after=expires)

    def put(self, issued: Issued) -> None:
        """Both files replaced atomically (written aside, renamed into place)."""
        cert, key = issued.write(self.directory / "next", "server")
        os.replace(cert, self.cert_file)
        os.replace(key, self.key_file)

    def put_cert_only(self, issued: Issued) -> None:
        cert, _ = issued.write(self.directory / "next", "server")
        os.replace(cert, self.cert_file)

    def put_key_only(self, issued: Issued) -> None:
        _, key = issued.write(self.directory / "next", "server")
        os.replace(key, self.key_file)

    def settings(self, **more: object) -> TlsSettings:
        return TlsSettings.model_validate(
            {"cert_file": str(self.cert_file), "key_file": str(self.key_file), **more}
        )

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def first_files(directory: Path) -> ServerFiles:
    """Files in ``directory`` holding a certificate named ``first``."""
    made = ServerFiles(directory)
    made.put(made.issue("first"))
    return made


Listen = Callable[[ServerTls], Awaitable[int]]


@asynccontextmanager
async def tls_listeners() -> AsyncIterator[Listen]:
    """``serve(tls)``: serves ``tls`` on a port of its own (aiohttp, as every dragoman
    listener) until the block ends, and returns the port."""
    runners: list[web.AppRunner] = []

    async def serve(tls: ServerTls) -> int:
        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context).start()
        return int(runner.addresses[0][1])

    yield serve
    for runner in runners:
        await runner.cleanup()


@dataclass(frozen=True)
class ClientCas:
    """A listener that requires client certificates from ``old``, and ``new`` to replace it
    in the bundle."""

    tls: ServerTls
    old: Authority
    new: Authority
    bundle: Path

    def swap(self) -> bool:
        """The bundle replaced by ``new``'s certificate (renamed into place), reloaded."""
        os.replace(self.new.write(self.bundle.parent.parent / "next-ca", "clients"), self.bundle)
        return self.tls.reload()


def client_cas(files: ServerFiles, directory: Path, *, listener: str) -> ClientCas:
    old, new = Authority("old client CA"), Authority("new client CA")
    bundle = old.write(directory / "ca", "clients")
    tls = ServerTls(
        files.settings(client_ca_file=str(bundle), client_auth="required"), listener=listener
    )
    return ClientCas(tls, old, new, bundle)


def client_of(files: ServerFiles, authority: Authority, directory: Path) -> ssl.SSLContext:
    """A client that trusts the listener and presents a certificate ``authority`` issued."""
    client = files.client()
    cert, key = authority.issue(subject=name("client")).write(directory, "client")
    client.load_cert_chain(cert, key)
    return client
