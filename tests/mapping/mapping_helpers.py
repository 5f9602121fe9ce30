"""Helpers of the mapping tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from dragoman.mapping.entity import Grant
from dragoman.mapping.store import MappingStore


async def link(store: MappingStore, account: str, grants: Sequence[Grant] = ()) -> str:
    """Link ``account`` to ``cus_<account>``; the new mapping's id."""
    mapping = await store.add(
        cloud_account=account,
        payment_customer="cus_" + account,
        created_by="test",
        verification_method="test",
        grants=grants,
    )
    return mapping.id


class Relay:
    """A TCP relay on loopback to a real server; ``cut()`` closes it and every connection,
    so the server behind it looks gone to whoever connects through the relay."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()


async def assert_searches_the_account_index(
    store: MappingStore, statement: str, parameters: tuple[object, ...]
) -> None:
    """``statement``, explained by the database itself, reads through the index of the
    account's blind index: a scan would make every lookup cost the whole table."""
    async with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            explain = "EXPLAIN QUERY PLAN "
        else:
            await conn.exec_driver_sql("SET enable_seqscan = off")  # the table is tiny
            explain = "EXPLAIN "
        plan = " ".join(
            str(row[-1]) for row in await conn.exec_driver_sql(explain + statement, parameters)
        )
    assert "ix_account_mappings_cloud_account_index" in plan, plan
    assert "SCAN account_mappings" not in plan and "Seq Scan" not in plan, plan
