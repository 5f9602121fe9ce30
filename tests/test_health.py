"""/livez and /readyz: ready only when the mapping store and a signing key are usable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from dragoman.demo.runner import DemoStack


async def test_livez_answers_while_the_process_works(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + "/livez") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_store_and_keys(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_readyz_is_unavailable_without_the_mapping_store(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    dead = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    stack = await make_stack(
        {"store": {"database_url": dead, "auto_migrate": False, "query_timeout": 1}},
        seed=False,
    )
    async with http.get(stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["failing"] == ["state_store", "signing_key"]
    async with http.get(stack.urls["proxy"] + "/livez") as response:
        assert response.status == 200
