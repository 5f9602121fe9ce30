"""CSRF rotation in a real browser (SEMANTICS §5): the console's payment widget in two tabs
of one browser, a refresh in one tab, the grace window, a reload during a refresh, and the
client helper's single re-handshake. Each test runs with sessions in memory and in Redis.

The proxy's clock is a :class:`MovableClock`: the tests move it past the 10 s grace
(``browser.csrf_grace``) instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from playwright.async_api import Error as PlaywrightError
from session_support import CARD, PM, MakeStack, MovableClock, browser_overrides
from widget_support import (
    WIDGET_READY,
    audit_records,
    client_stats,
    open_console,
    widget_call,
    widget_frame,
)

from dragoman.demo.runner import DemoStack

Backend = tuple[str, str | None]
ADDRESS = "/v1/customers/cus_alice/billing-address"
AUDITED_ADDRESS = "/v1/customers/{customer_id}/billing-address"
NEW_ADDRESS = {"line1": "2 Elm Street", "city": "Springfield", "country": "US"}
PAST_THE_GRACE = 11.0
"""Seconds the clock moves to put a token rotated now past its 10 s grace."""
REFRESH = "globalThis.widget.client.refresh().then(() => null)"
REFRESH_PATTERN = "**/_dragoman/session/refresh"
HANDSHAKE_PATTERN = "**/_dragoman/session"
FORWARDED = ("authorization", "x-csrf-token", "origin", "sec-fetch-site", "sec-fetch-mode")


async def alice_stack(make_stack: MakeStack, backend: Backend, clock: MovableClock) -> DemoStack:
    return await make_stack(browser_overrides(*backend), clock=clock)


def session_records(stack: DemoStack, action: str = "create") -> list[dict[str, Any]]:
    return [r for r in audit_records(stack, "session") if r["action"] == action]


def session_statuses(stack: DemoStack) -> list[tuple[str, int | None]]:
    return [(r["action"], r["status"]) for r in audit_records(stack, "session")]


def address_records(stack: DemoStack) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(stack, "request")
        if r["method"] == "PUT" and r["path"] == AUDITED_ADDRESS
    ]


def codes(records: list[dict[str, Any]]) -> list[str | None]:
    return [r["code"] for r in records]


async def reload_during_a_refresh(page: Any, *, answer_lost: bool = False) -> None:
    """Start a refresh in the page's widget and reload the widget while the refresh is in
    flight: dragoman rotates the token, but the document that asked is gone before the
    answer reaches it. With ``answer_lost`` the answer never reaches the browser at all (the
    connection dropped), so its cookie still carries the token before the refresh;
    otherwise the browser stored the answer's cookie. Returns when the reloaded widget is
    ready."""
    frame = widget_frame(page)
    navigated = asyncio.get_running_loop().create_future()

    async def cut(route: Any) -> None:
        if answer_lost:
            await refresh_behind_the_browser(page.context, route.request)
        else:
            answer = await route.fetch()  # through the context: its cookie is stored
        async with frame.expect_navigation(wait_until="commit"):
            await frame.evaluate("() => { setTimeout(() => location.reload(), 0); }")
        navigated.set_result(None)
        with contextlib.suppress(PlaywrightError):  # the asking document is gone
            if answer_lost:
                await route.abort("connectionreset")
            else:
                await route.fulfill(response=answer)

    await page.route(REFRESH_PATTERN, cut)
    await frame.evaluate("() => { globalThis.widget.client.refresh(); }")
    await navigated
    await page.unroute(REFRESH_PATTERN, cut)
    await page.frame_locator("#widget").locator(WIDGET_READY).wait_for(timeout=15_000)


async def refresh_behind_the_browser(context: Any, request: Any) -> None:
    """Send the intercepted refresh to dragoman from here, with the browser's headers and
    cookie; its answer (and new cookie) never reaches the browser."""
    sent = await request.all_headers()
    headers = {k: v for k, v in sent.items() if k in FORWARDED}
    cookies = await context.cookies(request.url)
    headers["Cookie"] = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.post(request.url, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()


def late_handshakes(clock: MovableClock) -> Any:
    """A route handler that moves the clock past the grace before each handshake."""

    async def late(route: Any) -> None:
        clock.offset += PAST_THE_GRACE
        await route.continue_()

    return late


async def test_two_tabs_share_one_session_and_both_can_write(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    stack = await alice_stack(make_stack, backend, MovableClock())
    context = await chromium.new_context()
    tab_a = await open_console(context, stack)
    tab_b = await open_console(context, stack)
    assert await widget_call(tab_a, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert await widget_call(tab_b, "POST", PM, CARD) == {"status": 201, "code": None}
    created = session_records(stack)
    assert [r["status"] for r in created] == [201, 200]  # the second tab joined
    assert created[0]["session"] == created[1]["session"]
    writes = [r for r in audit_records(stack, "request") if r["method"] in ("PUT", "POST")]
    assert [(r["decision"], r["session"]) for r in writes] == [
        ("allow", created[0]["session"]),
        ("allow", created[0]["session"]),
    ]
    assert (await client_stats(tab_b))["handshakes"] == 1


async def test_a_write_with_the_old_token_in_the_grace_after_another_tab_refreshed_succeeds(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    stack = await alice_stack(make_stack, backend, MovableClock())
    context = await chromium.new_context()
    tab_a = await open_console(context, stack)
    tab_b = await open_console(context, stack)
    before = await client_stats(tab_b)
    await widget_frame(tab_a).evaluate(REFRESH)
    assert [r["status"] for r in session_records(stack, "refresh")] == [200]
    # Tab B still holds T(n); the shared cookie now carries T(n+1): a live pair in the grace.
    assert await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert await client_stats(tab_b) == before
    assert codes(address_records(stack)) == [None]
    assert len(session_records(stack)) == 2  # the two tabs' handshakes, no other


async def test_after_the_grace_the_old_token_is_refused_once_and_the_client_re_handshakes(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    clock = MovableClock()
    stack = await alice_stack(make_stack, backend, clock)
    context = await chromium.new_context()
    tab_a = await open_console(context, stack)
    tab_b = await open_console(context, stack)
    before = await client_stats(tab_b)
    await widget_frame(tab_a).evaluate(REFRESH)
    clock.offset += PAST_THE_GRACE
    assert await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    after = await client_stats(tab_b)
    assert after["handshakes"] == before["handshakes"] + 1
    assert after["retries"] == before["retries"] + 1
    assert codes(address_records(stack)) == ["csrf_token_rotated", None]
    created = session_records(stack)
    assert [r["status"] for r in created] == [201, 200, 200]  # the re-handshake joined
    assert len({r["session"] for r in created}) == 1
    # The recovered tab keeps working without further handshakes.
    assert await widget_call(tab_b, "POST", PM, CARD) == {"status": 201, "code": None}
    assert await client_stats(tab_b) == after


async def test_a_widget_reloaded_during_a_refresh_works_within_the_grace(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    stack = await alice_stack(make_stack, backend, MovableClock())
    tab = await open_console(await chromium.new_context(), stack)
    await reload_during_a_refresh(tab)
    assert session_statuses(stack) == [("create", 201), ("refresh", 200), ("create", 200)]
    assert await widget_call(tab, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert await client_stats(tab) == {"handshakes": 1, "refreshes": 0, "retries": 0}
    assert codes(address_records(stack)) == [None]


async def test_a_widget_reloaded_during_a_refresh_works_after_the_grace(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    clock = MovableClock()
    stack = await alice_stack(make_stack, backend, clock)
    tab = await open_console(await chromium.new_context(), stack)
    await tab.route(HANDSHAKE_PATTERN, late_handshakes(clock))
    await reload_during_a_refresh(tab)
    # The cookie carries T(n+1), still current: the reloaded widget joins its session.
    assert session_statuses(stack) == [("create", 201), ("refresh", 200), ("create", 200)]
    assert await widget_call(tab, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    clock.offset += PAST_THE_GRACE
    assert await widget_call(tab, "POST", PM, CARD) == {"status": 201, "code": None}
    assert await client_stats(tab) == {"handshakes": 1, "refreshes": 0, "retries": 0}
    assert codes(address_records(stack)) == [None]


async def test_a_widget_reloaded_when_the_refresh_answer_was_lost_works_within_the_grace(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    stack = await alice_stack(make_stack, backend, MovableClock())
    tab = await open_console(await chromium.new_context(), stack)
    await reload_during_a_refresh(tab, answer_lost=True)
    # The cookie still carries T(n), live in its grace: the handshake joins the session.
    assert session_statuses(stack) == [("create", 201), ("refresh", 200), ("create", 200)]
    assert await widget_call(tab, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert await client_stats(tab) == {"handshakes": 1, "refreshes": 0, "retries": 0}
    assert codes(address_records(stack)) == [None]


async def test_a_widget_reloaded_when_the_refresh_answer_was_lost_works_after_the_grace(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    clock = MovableClock()
    stack = await alice_stack(make_stack, backend, clock)
    tab = await open_console(await chromium.new_context(), stack)
    await tab.route(HANDSHAKE_PATTERN, late_handshakes(clock))
    await reload_during_a_refresh(tab, answer_lost=True)
    # The cookie's T(n) died with the grace: the handshake makes a new session.
    assert session_statuses(stack) == [("create", 201), ("refresh", 200), ("create", 201)]
    assert await widget_call(tab, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert await client_stats(tab) == {"handshakes": 1, "refreshes": 0, "retries": 0}
    assert codes(address_records(stack)) == [None]


async def test_a_second_rotated_refusal_after_the_re_handshake_is_returned_not_looped_on(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    """Tab A refreshes twice between tab B's re-handshake and its retry (a tab refreshing
    fast): the token B learned is dead again. B gets the refusal; one re-handshake only."""
    clock = MovableClock()
    stack = await alice_stack(make_stack, backend, clock)
    context = await chromium.new_context()
    tab_a = await open_console(context, stack)
    tab_b = await open_console(context, stack)
    await widget_frame(tab_a).evaluate(REFRESH)
    clock.offset += PAST_THE_GRACE
    before = await client_stats(tab_b)
    attempts = 0

    async def refresh_twice_before_the_retry(route: Any) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            await widget_frame(tab_a).evaluate(REFRESH)
            await widget_frame(tab_a).evaluate(REFRESH)
        await route.continue_()

    await tab_b.route("**" + ADDRESS, refresh_twice_before_the_retry)
    answer = await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS)
    assert answer == {"status": 403, "code": "csrf_token_rotated"}
    assert attempts == 2
    after = await client_stats(tab_b)
    assert after["handshakes"] == before["handshakes"] + 1
    assert after["retries"] == before["retries"] + 1
    assert codes(address_records(stack)) == ["csrf_token_rotated", "csrf_token_rotated"]
    assert [r["status"] for r in session_records(stack)] == [201, 200, 200]
    assert not [s for s in stack.platform.seen if s.method == "PUT"]


async def test_a_read_whose_session_is_gone_re_handshakes_once_and_succeeds(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    """An open widget outlives its session (it expired, or the store lost it): the read is
    refused csrf_invalid once, the client makes a new session and the read goes through."""
    clock = MovableClock()
    stack = await alice_stack(make_stack, backend, clock)
    assert stack.proxy is not None
    context = await chromium.new_context()
    tab = await open_console(context, stack)
    before = await client_stats(tab)
    (cookie,) = [c for c in await context.cookies() if c["name"] == "__Host-dragoman-csrf"]
    parsed = stack.proxy.csrf.tokens.parse(cookie["value"])
    assert parsed is not None
    await stack.proxy.sessions.delete(parsed.session_id)
    assert await widget_call(tab, "GET", PM) == {"status": 200, "code": None}
    after = await client_stats(tab)
    assert after["handshakes"] == before["handshakes"] + 1
    assert after["retries"] == before["retries"] + 1
    reads = [r for r in audit_records(stack, "request") if r["method"] == "GET"]
    assert codes(reads)[-2:] == ["csrf_invalid", None]
    assert [r["status"] for r in session_records(stack)] == [201, 201]  # a new session


async def test_a_head_with_a_rotated_token_re_handshakes_once(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    """A HEAD answer has no body to name csrf_token_rotated: the client retries once after
    one re-handshake, and the retry passes the CSRF check."""
    clock = MovableClock()
    stack = await alice_stack(make_stack, backend, clock)
    context = await chromium.new_context()
    tab_a = await open_console(context, stack)
    tab_b = await open_console(context, stack)
    await widget_frame(tab_a).evaluate(REFRESH)
    clock.offset += PAST_THE_GRACE
    before = await client_stats(tab_b)
    await widget_call(tab_b, "HEAD", PM)
    after = await client_stats(tab_b)
    assert after["handshakes"] == before["handshakes"] + 1
    assert after["retries"] == before["retries"] + 1
    heads = [r for r in audit_records(stack, "request") if r["method"] == "HEAD"]
    assert codes(heads)[0] == "csrf_token_rotated"
    assert len(heads) == 2 and not (heads[1]["code"] or "").startswith("csrf_")


async def test_a_read_whose_cookie_the_browser_dropped_re_handshakes_once_and_succeeds(
    chromium: Any, make_stack: MakeStack, backend: Backend
) -> None:
    """The cookie expired with its session, or was cleared: csrf_missing once, then a new
    session."""
    stack = await alice_stack(make_stack, backend, MovableClock())
    context = await chromium.new_context()
    tab = await open_console(context, stack)
    before = await client_stats(tab)
    await context.clear_cookies()
    assert await widget_call(tab, "GET", PM) == {"status": 200, "code": None}
    after = await client_stats(tab)
    assert after["handshakes"] == before["handshakes"] + 1
    assert after["retries"] == before["retries"] + 1
    reads = [r for r in audit_records(stack, "request") if r["method"] == "GET"]
    assert codes(reads)[-2:] == ["csrf_missing", None]
