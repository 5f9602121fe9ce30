"""The same session tests pass with sessions in Redis and two proxy instances behind one
origin (SEMANTICS §5): the console's widget in Chromium talks to a round-robin balancer
(:mod:`balancer`) on the demo's dragoman URL, which passes each request to one of two
dragoman instances with the same settings: sessions in Redis, the same CSRF key file, the
same SQLite store, master key and audit file.

The demo wires the dragoman URL everywhere (the console hands it to the page, the settings
allow it as an origin, the platform fetches the JWKS from it), so the fixture keeps that
URL's socket for the balancer and serves the demo's own instance on another socket, before
the stack starts. The instances share the proxy's :class:`MovableClock`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from balancer import Balancer, serving
from playwright.async_api import expect
from session_support import CARD, PM, MovableClock, browser_overrides
from widget_support import audit_records, client_stats, open_console, widget_call, widget_frame

from dragoman.app import PROXY_KEY, Proxy, build_app, proxy_runner
from dragoman.demo.runner import DemoPorts, DemoStack

pytestmark = pytest.mark.redis

ADDRESS = "/v1/customers/cus_alice/billing-address"
AUDITED_ADDRESS = "/v1/customers/{customer_id}/billing-address"
NEW_ADDRESS = {"line1": "2 Elm Street", "city": "Springfield", "country": "US"}
SESSION = "/_dragoman/session"
PAST_THE_GRACE = 11.0
"""Seconds the clock moves to put a token rotated now past its 10 s grace."""
REFRESH = "globalThis.widget.client.refresh().then(() => null)"


@dataclass
class Front:
    stack: DemoStack
    balancer: Balancer
    clock: MovableClock
    instances: list[str]
    """Base URLs of the two instances, by the balancer's index."""
    proxies: list[Proxy]

    def served_since(self, mark: int) -> list[tuple[int, str, str, int]]:
        return [(s.instance, s.method, s.path, s.status) for s in self.balancer.served[mark:]]


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def front(tmp_path: Path, redis_url: str) -> AsyncIterator[Front]:
    """The demo stack with two dragoman instances behind a balancer on its dragoman URL."""
    clock = MovableClock()
    stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), tmp_path / "state", clock=clock)
    origin = stack.sockets["proxy"]  # stack.urls["proxy"]: the one origin the browser sees
    stack.sockets["proxy"] = listening_socket()  # the demo's own instance
    second_socket = listening_socket()
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(origin.close)
        cleanup.callback(second_socket.close)
        cleanup.push_async_callback(stack.stop)
        settings = stack.prepare_state(browser_overrides("redis", redis_url))
        await stack.start()
        second = build_app(settings, migrate_store=False, clock=clock)
        runner = proxy_runner(second, settings)
        await runner.setup()
        cleanup.push_async_callback(runner.cleanup)
        await web.SockSite(runner, second_socket).start()
        assert stack.proxy is not None
        instances = [url_of(stack.sockets["proxy"]), url_of(second_socket)]
        balancer = Balancer(instances)
        await cleanup.enter_async_context(serving(balancer, origin))
        yield Front(stack, balancer, clock, instances, [stack.proxy, second[PROXY_KEY]])


async def two_tabs(chromium: Any, front: Front) -> tuple[Any, Any]:
    context = await chromium.new_context()
    return await open_console(context, front.stack), await open_console(context, front.stack)


def address_codes(stack: DemoStack) -> list[str | None]:
    return [
        r["code"]
        for r in audit_records(stack, "request")
        if r["method"] == "PUT" and r["path"] == AUDITED_ADDRESS
    ]


def was_forwarded(stack: DemoStack, method: str) -> bool:
    return any(seen.method == method for seen in stack.platform.seen)


async def test_the_widget_is_loaded_from_the_balancer_and_requests_alternate(
    chromium: Any, front: Front
) -> None:
    tab = await open_console(await chromium.new_context(), front.stack)
    assert widget_frame(tab).url.startswith(front.stack.urls["proxy"] + "/")
    assert front.stack.urls["proxy"] not in front.instances
    first, second = front.balancer.counts()
    assert min(first, second) >= 2
    assert abs(first - second) <= 1  # round-robin


async def test_the_widget_flow_works_while_requests_alternate_between_instances(
    chromium: Any, front: Front
) -> None:
    tab = await open_console(await chromium.new_context(), front.stack)
    widget = tab.frame_locator("#widget")
    methods = widget.locator("#method-list li")
    await expect(methods).to_have_count(1)
    mark = len(front.balancer.served)

    card = widget.locator("#add-card")
    await card.locator("[name=card_number]").fill("5555 5555 5555 4444")
    await card.locator("[name=exp_month]").fill("7")
    await card.locator("[name=exp_year]").fill("2031")
    await card.locator("button").click()
    await expect(methods).to_have_count(2)

    address = widget.locator("#address-form")
    await address.locator("[name=line1]").fill(NEW_ADDRESS["line1"])
    await address.locator("[name=country]").fill(NEW_ADDRESS["country"])
    await address.locator("button").click()
    await expect(widget.locator("#last")).to_contain_text(f"PUT {ADDRESS}")

    added = methods.filter(has_text="4444")
    await added.get_by_role("button", name="Make default").click()
    await expect(added.locator(".default")).to_have_count(1)

    await methods.filter(has_text="4242").get_by_role("button", name="Delete").click()
    await expect(methods).to_have_count(1)

    alice = front.stack.platform.customers["cus_alice"]
    assert [(m["last4"], m["default"]) for m in alice.payment_methods] == [("4444", True)]
    assert alice.billing_address["line1"] == NEW_ADDRESS["line1"]
    writes = [s for s in front.balancer.served[mark:] if s.method != "GET"]
    assert [s.method for s in writes] == ["POST", "PUT", "PUT", "DELETE"]
    assert all(s.status < 300 for s in front.balancer.served[mark:])
    assert {s.instance for s in writes} == {0, 1}  # CSRF pairs checked by both instances
    assert all(r["decision"] == "allow" for r in audit_records(front.stack, "request"))
    assert await client_stats(tab) == {"handshakes": 1, "refreshes": 0, "retries": 0}


async def test_the_platform_accepts_tokens_minted_by_either_instance(
    chromium: Any, front: Front, http: aiohttp.ClientSession
) -> None:
    tab = await open_console(await chromium.new_context(), front.stack)
    kids = [proxy.keys.current_key() for proxy in front.proxies]
    assert kids[0] is not None and kids[1] is not None
    assert kids[0].kid == kids[1].kid  # one key set, in the shared store
    jwks = []
    for instance in front.instances:
        async with http.get(instance + "/.well-known/jwks.json") as response:
            jwks.append(sorted(key["kid"] for key in (await response.json())["keys"]))
    assert jwks[0] == jwks[1]
    seen = len(front.stack.platform.seen)
    front.balancer.send_next_to(0)
    mark = len(front.balancer.served)
    assert await widget_call(tab, "POST", PM, CARD) == {"status": 201, "code": None}
    assert await widget_call(tab, "POST", PM, CARD) == {"status": 201, "code": None}
    assert [s[0] for s in front.served_since(mark)] == [0, 1]
    assert [s.accepted for s in front.stack.platform.seen[seen:]] == [True, True]


async def test_a_write_with_the_old_token_on_the_other_instance_in_the_grace_succeeds(
    chromium: Any, front: Front
) -> None:
    tab_a, tab_b = await two_tabs(chromium, front)
    before = await client_stats(tab_b)
    mark = len(front.balancer.served)
    front.balancer.pin = 0
    await widget_frame(tab_a).evaluate(REFRESH)
    front.balancer.pin = 1
    assert await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert front.served_since(mark) == [
        (0, "POST", SESSION + "/refresh", 200),
        (1, "PUT", ADDRESS, 200),
    ]
    assert await client_stats(tab_b) == before
    assert address_codes(front.stack) == [None]


async def test_after_the_grace_the_other_instance_says_rotated_and_one_re_handshake_recovers(
    chromium: Any, front: Front
) -> None:
    tab_a, tab_b = await two_tabs(chromium, front)
    before = await client_stats(tab_b)
    front.balancer.pin = 0
    await widget_frame(tab_a).evaluate(REFRESH)
    front.balancer.pin = None
    front.clock.offset += PAST_THE_GRACE
    front.balancer.send_next_to(1)
    mark = len(front.balancer.served)
    assert await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS) == {"status": 200, "code": None}
    assert front.served_since(mark) == [
        (1, "PUT", ADDRESS, 403),
        (0, "POST", SESSION, 200),  # the one re-handshake, joining the session
        (1, "PUT", ADDRESS, 200),
    ]
    after = await client_stats(tab_b)
    assert after["handshakes"] == before["handshakes"] + 1
    assert after["retries"] == before["retries"] + 1
    assert address_codes(front.stack) == ["csrf_token_rotated", None]


async def test_after_a_logout_on_one_instance_a_write_on_the_other_is_refused(
    chromium: Any, front: Front
) -> None:
    """The other instance refuses the write; the other tab's client then makes a new
    session (one handshake) and sends the write once more."""
    tab_a, tab_b = await two_tabs(chromium, front)
    front.balancer.pin = 0
    await widget_frame(tab_a).evaluate("globalThis.widget.client.logout().then(() => null)")
    front.balancer.pin = 1
    mark = len(front.balancer.served)
    answer = await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS)
    assert answer == {"status": 200, "code": None}
    assert front.served_since(mark) == [
        (1, "PUT", ADDRESS, 403),
        (1, "POST", SESSION, 201),
        (1, "PUT", ADDRESS, 200),
    ]
    # The logout's answer expired the cookie this browser shares between its tabs.
    assert address_codes(front.stack)[-2:] == ["csrf_missing", None]
    assert (await client_stats(tab_b))["handshakes"] == 2


async def test_a_session_ended_on_one_instance_is_unknown_to_the_other(
    chromium: Any, front: Front
) -> None:
    """The logout reaches the first instance but its answer is lost, so the browser keeps
    the cookie: the second instance finds no session for the pair and refuses."""
    tab_a, tab_b = await two_tabs(chromium, front)
    ended: list[int] = []

    async def logout_on_the_first_instance(route: Any) -> None:
        if route.request.method != "DELETE":
            await route.continue_()
            return
        ended.append(await send_behind_the_browser(route, front.instances[0]))
        await route.abort("connectionreset")

    await tab_a.route("**" + SESSION, logout_on_the_first_instance)
    await widget_frame(tab_a).evaluate("globalThis.widget.client.logout().catch(() => null)")
    assert ended == [204]
    front.balancer.pin = 1
    mark = len(front.balancer.served)
    answer = await widget_call(tab_b, "PUT", ADDRESS, NEW_ADDRESS)
    assert answer == {"status": 200, "code": None}
    assert front.served_since(mark) == [
        (1, "PUT", ADDRESS, 403),
        (1, "POST", SESSION, 201),  # a new session: the cookie named one that is gone
        (1, "PUT", ADDRESS, 200),
    ]
    refused, _ = [r for r in audit_records(front.stack, "request") if r["method"] == "PUT"]
    assert (refused["code"], refused["reason"]) == ("csrf_invalid", "unknown_session")
    assert (await client_stats(tab_b))["handshakes"] == 2


async def send_behind_the_browser(route: Any, instance: str) -> int:
    """Send an intercepted request to ``instance`` from here, with the browser's headers
    and cookie; its answer never reaches the browser. The answer's status."""
    request = route.request
    wanted = ("authorization", "x-csrf-token", "origin", "sec-fetch-site", "sec-fetch-mode")
    headers = {k: v for k, v in (await request.all_headers()).items() if k in wanted}
    cookies = await route.request.frame.page.context.cookies(request.url)
    headers["Cookie"] = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
    path = request.url.split("/", 3)[3]
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.request(request.method, f"{instance}/{path}", headers=headers) as response,
    ):
        return response.status
