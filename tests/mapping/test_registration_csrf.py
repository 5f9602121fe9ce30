"""CSRF on ``/_dragoman/registration`` (SEMANTICS §5): registration runs the proxy's own
guards (authenticate, browser checks, CSRF), so a browser request that links or unlinks an
account needs its session's double-submit pair like any other write, while a server call
keeps working with its bearer alone. SQLite and PostgreSQL, ``browser.csrf = "browser"``.

carol of acct-3003 is the fresh caller; alice's acct-1001 is already linked to cus_alice
(by the demo, as an operator: self-service unlinks only links self-service made)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from registration_helpers import (
    call,
    caller,
    linked,
    mapping_of,
    records,
    register,
    self_link,
    unlink,
)

from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import MappingStatus

MakeStack = Callable[..., Awaitable[DemoStack]]
COOKIE = "__Host-dragoman-csrf"


@pytest.fixture
async def stack(make_stack: MakeStack, database_url: str) -> DemoStack:
    """The demo stack with CSRF on for browser requests (the demo switches it off)."""
    return await make_stack(
        {"store": {"database_url": database_url}, "browser": {"csrf": "browser"}}
    )


def browser(stack: DemoStack) -> dict[str, str]:
    """carol's headers as a page on the allowed console origin sends them."""
    return caller(stack, Origin=stack.urls["console"])


async def handshake(http: aiohttp.ClientSession, stack: DemoStack, headers: dict[str, str]) -> str:
    """A new session's CSRF token (``POST /_dragoman/session``)."""
    async with http.post(stack.urls["proxy"] + "/_dragoman/session", headers=headers) as r:
        assert r.status == 201, await r.text()
        token: str = (await r.json())["csrf_token"]
        assert r.headers["Set-Cookie"].startswith(f"{COOKIE}={token};")
        return token


def with_pair(headers: dict[str, str], token: str) -> dict[str, str]:
    return {**headers, "Cookie": f"{COOKIE}={token}", "X-CSRF-Token": token}


# -- refused without the pair -------------------------------------------------------------------


@pytest.mark.parametrize(
    "signal",
    [{"Origin": "console"}, {"Sec-Fetch-Site": "same-site"}],
    ids=["origin", "sec-fetch-site"],
)
async def test_a_browser_registration_without_a_csrf_pair_is_refused_and_links_nothing(
    stack: DemoStack, http: aiohttp.ClientSession, signal: dict[str, str]
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    headers = {k: stack.urls[v] if v == "console" else v for k, v in signal.items()}
    status, problem, response = await call(
        http, stack, caller(stack, **headers), body={"customer": "cus_carol"}
    )
    assert (status, problem["code"], problem["reason"]) == (403, "csrf_missing", "missing_cookie")
    assert response.content_type == "application/problem+json"
    assert await mapping_of(stack, "acct-3003") is None
    assert stack.platform.seen == []  # refused before the platform was asked


async def test_a_browser_registration_with_only_the_header_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    token = await handshake(http, stack, browser(stack))
    headers = {**browser(stack), "X-CSRF-Token": token}
    status, problem = await register(http, stack, headers, "cus_carol")
    assert (status, problem["code"], problem["reason"]) == (403, "csrf_missing", "missing_cookie")
    assert await mapping_of(stack, "acct-3003") is None


async def test_a_browser_unlink_without_a_csrf_pair_is_refused_and_the_link_stays(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    status, problem = await unlink(http, stack, browser(stack))
    assert (status, problem["code"]) == (403, "csrf_missing")
    assert (await linked(stack, "acct-3003")).status is MappingStatus.ACTIVE


async def test_a_pair_from_another_principals_session_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    bobs = await handshake(http, stack, caller(stack, "bob", "acct-2002", ["owner"]))
    status, problem = await register(http, stack, with_pair(browser(stack), bobs), "cus_carol")
    assert (status, problem["code"], problem["reason"]) == (403, "csrf_invalid", "other_principal")
    assert await mapping_of(stack, "acct-3003") is None


async def test_the_refusal_is_audited_as_a_registration(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await register(http, stack, browser(stack), "cus_carol")
    [record] = records(stack, "registration")
    assert (record["decision"], record["code"], record["reason"]) == (
        "deny",
        "csrf_missing",
        "missing_cookie",
    )
    assert record["principal"] == "carol"


# -- allowed with the pair, or without any browser signal --------------------------------------


async def test_a_browser_registration_with_the_sessions_pair_links_the_account(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    token = await handshake(http, stack, browser(stack))
    status, body, response = await call(
        http, stack, with_pair(browser(stack), token), body={"customer": "cus_carol"}
    )
    assert status == 201
    assert (body["cloud_account"], body["customer"]) == ("acct-3003", "cus_carol")
    assert body["id"] == (await linked(stack, "acct-3003")).id
    assert response.headers["Access-Control-Allow-Origin"] == stack.urls["console"]


async def test_a_browser_unlink_with_the_sessions_pair_revokes_the_link(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    token = await handshake(http, stack, browser(stack))
    status, body = await unlink(http, stack, with_pair(browser(stack), token))
    assert (status, body["status"]) == (200, "revoked")


async def test_a_server_registration_needs_only_its_bearer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    status, body = await register(http, stack, caller(stack), "cus_carol")
    assert status == 201, body
    assert (await linked(stack, "acct-3003")).payment_customer == "cus_carol"


async def test_a_server_unlink_needs_only_its_bearer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    status, body = await unlink(http, stack, caller(stack, "carlos", "acct-3003", ["owner"]))
    assert (status, body["status"]) == (200, "revoked")
