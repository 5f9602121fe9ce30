"""Reading one customer record from the demo platform over real HTTP, with answers bent by
a middleware in front of it: only the platform's own record of the customer asked for is a
verdict (a match or a drift); a broken or hostile answer is the platform unavailable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from dragoman.demo.runner import DemoStack
from dragoman.mapping.platform import MAX_RECORD_BYTES, PlatformClient, PlatformUnavailable
from reconcile_support import start_bent_platform

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Bend = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class Bent:
    """Middleware of the platform app: while ``bend`` is set, it answers instead."""

    def __init__(self) -> None:
        self.bend: Bend | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.bend is None:
            return await handler(request)
        return await self.bend(request, handler)


@pytest.fixture
async def bent(tmp_path: Path) -> AsyncIterator[tuple[DemoStack, Bent]]:
    bender = Bent()
    stack = await _start_bent(tmp_path / "stack", bender)
    yield stack, bender
    await stack.stop()


async def _start_bent(state_dir: Path, bender: Bent) -> DemoStack:
    stack = await start_bent_platform(state_dir, bender.middleware)
    stack.platform.add_customer("cus_carol", "acct-3003")
    return stack


def client(stack: DemoStack) -> PlatformClient:
    assert stack.proxy is not None and isinstance(stack.proxy.platform, PlatformClient)
    return stack.proxy.platform


async def test_a_deeply_nested_record_is_the_platform_unavailable(
    bent: tuple[DemoStack, Bent],
) -> None:
    stack, bender = bent

    async def nested(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.Response(body=b"[" * 5000 + b"]" * 5000, content_type="application/json")

    bender.bend = nested
    with pytest.raises(PlatformUnavailable, match="not JSON"):
        await client(stack).customer("cus_carol", cloud_account="acct-3003")


async def test_a_gateway_404_is_the_platform_unavailable_not_a_missing_customer(
    bent: tuple[DemoStack, Bent],
) -> None:
    stack, bender = bent

    async def no_route(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.json_response({"message": "no route"}, status=404)

    bender.bend = no_route
    with pytest.raises(PlatformUnavailable, match="404"):
        await client(stack).customer("cus_carol", cloud_account="acct-3003")


async def test_the_platforms_own_404_problem_is_a_missing_customer(
    bent: tuple[DemoStack, Bent],
) -> None:
    stack, _ = bent
    record = await client(stack).customer("cus_nobody", cloud_account="acct-3003")
    assert not record.exists


async def test_a_json_answer_that_is_not_the_customers_record_is_the_platform_unavailable(
    bent: tuple[DemoStack, Bent],
) -> None:
    stack, bender = bent

    async def maintenance(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.json_response({"status": "maintenance"})

    bender.bend = maintenance
    with pytest.raises(PlatformUnavailable, match="not the customer's record"):
        await client(stack).customer("cus_carol", cloud_account="acct-3003")


async def test_a_record_naming_another_customer_is_the_platform_unavailable(
    bent: tuple[DemoStack, Bent],
) -> None:
    stack, bender = bent
    stack.platform.add_customer("cus_dave", "acct-4004")

    async def crossed(request: web.Request, handler: Handler) -> web.StreamResponse:
        other = stack.platform.customers["cus_dave"].record()
        return web.json_response(other)

    bender.bend = crossed
    with pytest.raises(PlatformUnavailable, match="not the customer's record"):
        await client(stack).customer("cus_carol", cloud_account="acct-3003")


async def test_a_record_arriving_in_pieces_is_read_whole(bent: tuple[DemoStack, Bent]) -> None:
    stack, bender = bent

    async def in_pieces(request: web.Request, handler: Handler) -> web.StreamResponse:
        answer = await handler(request)
        assert isinstance(answer, web.Response) and answer.body is not None
        body = bytes(answer.body)  # type: ignore[arg-type]
        out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await out.prepare(request)  # chunked
        await out.write(body[:10])
        await asyncio.sleep(0.05)
        await out.write(body[10:])
        await out.write_eof()
        return out

    bender.bend = in_pieces
    record = await client(stack).customer("cus_carol", cloud_account="acct-3003")
    assert record.exists and record.cloud_account == "acct-3003"


async def test_a_record_over_the_size_cap_in_pieces_is_the_platform_unavailable(
    bent: tuple[DemoStack, Bent],
) -> None:
    stack, bender = bent

    async def endless(request: web.Request, handler: Handler) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await out.prepare(request)
        piece = b" " * (64 * 1024)
        try:
            for _ in range(MAX_RECORD_BYTES // len(piece) + 4):
                await out.write(piece)
                await asyncio.sleep(0)
            await out.write_eof()
        except ConnectionError:
            pass  # dragoman hung up once it had read past the cap
        return out

    bender.bend = endless
    with pytest.raises(PlatformUnavailable, match="too large"):
        await client(stack).customer("cus_carol", cloud_account="acct-3003")


async def test_the_record_names_its_customer_where_id_field_says(tmp_path: Path) -> None:
    # A platform whose records call their id `customer_id`: read where the settings say.
    bender = Bent()

    async def renamed(request: web.Request, handler: Handler) -> web.StreamResponse:
        record = stack.platform.customers["cus_carol"].record()
        record["customer_id"] = record.pop("id")
        return web.json_response(record)

    bender.bend = renamed
    stack = await start_bent_platform(
        tmp_path / "stack",
        bender.middleware,
        {"mapping": {"platform": {"id_field": "customer_id"}}},
    )
    try:
        stack.platform.add_customer("cus_carol", "acct-3003")
        found = await client(stack).customer("cus_carol", cloud_account="acct-3003")
        assert (found.exists, found.cloud_account) == (True, "acct-3003")
    finally:
        await stack.stop()


@pytest.mark.parametrize(("written", "read"), [(3003, True), (True, False), (3003.0, False)])
async def test_a_numeric_id_names_the_customer_of_its_digits(
    bent: tuple[DemoStack, Bent], written: object, read: bool
) -> None:
    # A platform with numeric ids writes 3003 for the customer "3003"; a boolean or a float
    # is not an id.
    stack, bender = bent
    stack.platform.add_customer("3003", "acct-3003")

    async def numeric(request: web.Request, handler: Handler) -> web.StreamResponse:
        record = stack.platform.customers["3003"].record()
        record["id"] = written
        return web.json_response(record)

    bender.bend = numeric
    if read:
        found = await client(stack).customer("3003", cloud_account="acct-3003")
        assert found.cloud_account == "acct-3003"
    else:
        with pytest.raises(PlatformUnavailable, match="not the customer's record"):
            await client(stack).customer("3003", cloud_account="acct-3003")
