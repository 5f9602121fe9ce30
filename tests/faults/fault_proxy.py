"""A TCP relay on 127.0.0.1 in front of a real service, with the faults a test needs.

``FaultProxy`` relays bytes both ways between whoever connects to it and its target (the
shared PostgreSQL or Redis server, the identity provider, the KMS endpoint, the upstream).
A test points dragoman at the relay instead of the service and then breaks the service for
dragoman alone, without stopping it for anything else on the machine:

- ``cut()``: a dead dependency. Every open connection is reset and new ones are refused
  (the port stays held by a bound, non-listening socket, so a connect gets ECONNREFUSED
  and nobody else can take the port meanwhile).
- ``stall()``: a hung dependency. Open connections stop passing bytes; new connections are
  accepted and held without a byte either way.
- ``slow(delay)``: a slow dependency. Every chunk, either way, on old and new connections,
  is passed on ``delay`` seconds late (in order), so answers do come, after the caller's
  timeout.
- ``drop_replies()``: requests reach the service, but the connection is reset as soon as
  the service starts answering (a middlebox or a crash that loses the answer to a write the
  service already performed).
- ``heal()``: relaying again. Connections that lived through a stall or a drop are reset
  (their streams are in an unknown state); new ones are relayed.

The target may be set after the relay has started (``retarget``), so a setting can name the
relay before the service behind it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["relay", "cut", "stall", "slow", "drop_replies"]
CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and, once relayed, its connection to the target."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    frozen: bool = False
    pipes_done: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()
        self.gone.set()


class FaultProxy:
    """A relay to ``target`` (host, port) on a loopback port of its own."""

    def __init__(self, target: tuple[str, int] | None = None, *, name: str = "relay") -> None:
        self.name = name
        self.target = target
        self.mode: Mode = "relay"
        self.port = 0
        self.delay = 0.0
        self.accepted = 0
        """Connections accepted so far (in any mode but cut)."""
        self._server: asyncio.Server | None = None
        self._placeholder: socket.socket | None = None
        self._links: set[_Link] = set()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.address}"

    def retarget(self, host: str, port: int) -> None:
        self.target = (host, port)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._listen(0)

    async def _listen(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._accept, sock=sock)
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        await self._stop_listening()
        self._abort_all()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        await self._settle()

    # -- faults ------------------------------------------------------------------------------

    async def cut(self) -> None:
        """Reset every connection and refuse new ones."""
        self.mode = "cut"
        await self._stop_listening()
        if self._placeholder is None:
            # Hold the port (bound, not listening): connects are refused, and the port is
            # still ours to listen on again at heal().
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            placeholder.bind(("127.0.0.1", self.port))
            self._placeholder = placeholder
        self._abort_all()
        await self._settle()

    async def stall(self) -> None:
        """Hold every connection, old and new, without passing a byte."""
        await self._relisten()
        self.mode = "stall"
        for link in self._links:
            link.frozen = True

    async def slow(self, delay: float) -> None:
        """Pass every chunk on ``delay`` seconds late."""
        await self._relisten()
        self.delay = delay
        self.mode = "slow"

    async def drop_replies(self) -> None:
        """Pass requests on; reset the connection when the answer starts to come back."""
        await self._relisten()
        self.mode = "drop_replies"

    async def heal(self) -> None:
        """Relay again; connections held by a stall (or marked by a drop) are reset."""
        for link in [link for link in self._links if link.frozen]:
            link.abort()
        self.mode = "relay"
        await self._relisten()
        await self._settle()

    # -- the relay ---------------------------------------------------------------------------

    async def _relisten(self) -> None:
        if self._server is not None:
            return
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        await self._listen(self.port)

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

    def _abort_all(self) -> None:
        for link in list(self._links):
            link.abort()

    async def _settle(self) -> None:
        """Wait for the pipes of reset connections to end, and forget those connections."""
        dead = [link for link in self._links if link.gone.is_set()]
        tasks = [task for link in dead for task in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.difference_update(dead)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":  # accepted just before the cut closed the listener
            writer.transport.abort()
            return
        self.accepted += 1
        link = _Link(client=writer)
        self._links.add(link)
        if self.mode == "stall" or self.target is None:
            # Hold it: no connection to the target, not a byte either way, until heal()
            # (or cut()) resets it. Without a target there is nothing to relay to yet.
            link.frozen = True
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            link.abort()
            self._links.discard(link)
            return
        if link.gone.is_set() or self._cut_meanwhile():
            up_writer.transport.abort()
            return
        link.server = up_writer
        for source, sink, answer in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(link, source, sink, answer=answer))
            link.tasks.add(task)
            task.add_done_callback(link.tasks.discard)

    def _cut_meanwhile(self) -> bool:
        return self.mode == "cut"

    async def _pipe(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        answer: bool,
    ) -> None:
        try:
            while data := await source.read(CHUNK):
                if self.mode == "stall" or link.frozen:
                    link.frozen = True
                    await link.gone.wait()  # held: the bytes are never passed on
                    return
                if self.mode == "slow":
                    await asyncio.sleep(self.delay)
                if answer and self.mode == "drop_replies":
                    link.frozen = True
                    link.abort()
                    return
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        # One side finished: finish the other (HTTP, Redis and PostgreSQL clients never
        # half-close a connection they still expect an answer on).
        if not link.frozen:
            sink.close()
        link.pipes_done += 1
        if link.pipes_done == 2:
            link.gone.set()
            self._links.discard(link)
