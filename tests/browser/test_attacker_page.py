"""A page on an attacker's site, in a real browser, gets nothing through dragoman: a fetch
with a stolen token is stopped by the CORS preflight before it is sent, a no-cors fetch
cannot carry the token, form posts carry no credential, and the payment platform sees none
of it. The console,
an allowed origin, gets through from the same browser (the control).

The attacker's page is served from ``localhost`` and dragoman from ``127.0.0.1``: two sites
to the browser, so it sends ``Sec-Fetch-Site: cross-site`` as it would for evil.example.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}

ATTACKER_PAGE = """<!doctype html>
<html><body>
<iframe name="sink"></iframe>
<form id="plain" method="POST" target="sink" enctype="text/plain">
  <input name='{"card_number":"4242424242424242","x":"' value='"}'>
</form>
<form id="urlencoded" method="POST" target="sink">
  <input name="card_number" value="4242424242424242">
</form>
</body></html>"""


@pytest.fixture
async def attacker_origin() -> AsyncIterator[str]:
    """The attacker's site: a static page on localhost (another site than 127.0.0.1)."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=ATTACKER_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://localhost:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def audit_records(stack: DemoStack) -> list[dict[str, Any]]:
    path = stack.state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


FETCH = """async ([url, token, body, mode]) => {
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const r = await fetch(url, {method: "POST", headers, body, mode, credentials: "include"});
    return {status: r.status, type: r.type};
  } catch (e) {
    return {error: e.name};
  }
}"""


async def test_a_fetch_with_a_stolen_token_from_an_attacker_page_is_stopped_by_cors(
    chromium: Any, stack: DemoStack, attacker_origin: str
) -> None:
    page = await chromium.new_page()
    await page.goto(attacker_origin + "/")
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    answer = await page.evaluate(FETCH, [stack.urls["proxy"] + PM, token, json.dumps(CARD), "cors"])
    assert answer == {"error": "TypeError"}  # the preflight was refused: nothing was sent
    assert stack.platform.seen == []
    preflights = [r for r in audit_records(stack) if r["event"] == "preflight"]
    assert preflights and all(r["code"] == "origin_denied" for r in preflights)
    assert [r for r in audit_records(stack) if r["event"] == "request"] == []


async def test_a_no_cors_post_from_an_attacker_page_cannot_carry_a_stolen_token(
    chromium: Any, stack: DemoStack, attacker_origin: str
) -> None:
    page = await chromium.new_page()
    await page.goto(attacker_origin + "/")
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    answer = await page.evaluate(
        FETCH, [stack.urls["proxy"] + PM, token, json.dumps(CARD), "no-cors"]
    )
    # No preflight in no-cors mode, so the request goes out, but the browser drops the
    # Authorization header it may not send there; the answer's
    # Cross-Origin-Resource-Policy: same-origin then withholds even an opaque response.
    assert answer == {"error": "TypeError"}
    (record,) = [r for r in audit_records(stack) if r["event"] == "request"]
    assert (record["code"], record["reason"]) == ("unauthenticated", "credentials_missing")
    assert stack.platform.seen == []


@pytest.mark.parametrize("form", ["plain", "urlencoded"])
async def test_a_form_posted_from_an_attacker_page_is_refused(
    chromium: Any, stack: DemoStack, attacker_origin: str, form: str
) -> None:
    page = await chromium.new_page()
    await page.goto(attacker_origin + "/")
    async with page.expect_response(lambda r: r.url.startswith(stack.urls["proxy"])) as sent:
        await page.evaluate(
            "([id, action]) => { const f = document.getElementById(id);"
            " f.action = action; f.submit(); }",
            [form, stack.urls["proxy"] + PM],
        )
    response = await sent.value
    # A form carries no bearer credential: refused at step 1, before anything else.
    assert response.status == 401
    (record,) = [r for r in audit_records(stack) if r["event"] == "request"]
    assert record["code"] == "unauthenticated"
    assert stack.platform.seen == []


HANDSHAKE_THEN_POST = """async ([proxy, path, token, body]) => {
  const auth = {"Authorization": "Bearer " + token};
  const session = await fetch(proxy + "/_dragoman/session",
    {method: "POST", headers: auth, credentials: "include"});
  const csrf = (await session.json()).csrf_token;
  const r = await fetch(proxy + path, {method: "POST", credentials: "include", body,
    headers: {...auth, "Content-Type": "application/json", "X-CSRF-Token": csrf}});
  return {status: r.status, type: r.type};
}"""


async def test_the_console_origin_gets_through_from_the_same_browser(
    chromium: Any, stack: DemoStack
) -> None:
    page = await chromium.new_page()
    await page.goto(stack.urls["console"] + "/")
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    answer = await page.evaluate(
        HANDSHAKE_THEN_POST, [stack.urls["proxy"], PM, token, json.dumps(CARD)]
    )
    assert answer == {"status": 201, "type": "cors"}
    assert len(stack.platform.seen) == 1


class Recorder:
    """A server on 127.0.0.1, dragoman's host: cookies are not kept apart by port, so the
    browser sends it exactly what it would send dragoman, and it records what arrived."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.read = 0
        self.arrived = asyncio.Event()

    async def record(self, request: web.Request) -> web.Response:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        self.arrived.set()
        return web.Response(text="recorded")

    async def next(self) -> dict[str, str]:
        """The headers of the next request not read yet (waiting for it to arrive)."""
        while len(self.seen) <= self.read:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout=30)
        self.read += 1
        return self.seen[self.read - 1]


async def same_site_form(_: web.Request) -> web.Response:
    """A page on dragoman's site that posts a form to the recorder (the control)."""
    return web.Response(
        text='<form id="f" method="POST" action="/v1/control"></form>'
        '<script>document.getElementById("f").submit()</script>',
        content_type="text/html",
    )


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recording = Recorder()
    app = web.Application()
    app.router.add_post("/{tail:.*}", recording.record)
    app.router.add_get("/form", same_site_form)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield recording, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


SUBMIT = """([id, action]) => { const f = document.getElementById(id);
  f.action = action; f.submit(); }"""


async def test_the_victims_session_cookie_is_withheld_from_an_attacker_pages_forms(
    chromium: Any, stack: DemoStack, attacker_origin: str, recorder: tuple[Recorder, str]
) -> None:
    """The user is signed in to the console, its widget holding a live session, in the very
    browser that then opens the attacker's page: SameSite=Strict keeps the cookie off the
    forms the attacker's page posts to dragoman's host, which names them cross-site; a form
    posted on that site carries it (the control)."""
    from widget_support import COOKIE, open_console

    recording, target = recorder
    context = await chromium.new_context()
    await open_console(context, stack)
    assert [c["name"] for c in await context.cookies()] == [COOKIE]
    page = await context.new_page()
    await page.goto(attacker_origin + "/")
    for form in ("plain", "urlencoded"):
        await page.evaluate(SUBMIT, [form, target + PM])
        headers = await recording.next()
        assert "cookie" not in headers
        assert headers["sec-fetch-site"] == "cross-site"
    control = await context.new_page()
    await control.goto(target + "/form")
    headers = await recording.next()
    assert COOKIE in headers.get("cookie", "")
    assert headers["sec-fetch-site"] == "same-origin"
