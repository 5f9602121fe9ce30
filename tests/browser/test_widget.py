"""The console demo in Chromium: the console (one origin) frames the payment widget that
dragoman serves (another origin); every call the widget makes goes through dragoman with a
session, a CSRF pair and the console's credential, and reaches the payment platform with a
scoped token (SEMANTICS §5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from widget_support import (
    COOKIE,
    WIDGET_READY,
    audit_records,
    open_console,
    widget_call,
)

from dragoman.demo.runner import DemoStack

ADDRESS = {"line1": "9 Harbour Road", "city": "Leith", "postal_code": "EH6", "country": "GB"}


async def test_the_widget_lists_adds_sets_default_and_deletes_payment_methods(
    chromium: Any, stack: DemoStack
) -> None:
    context = await chromium.new_context()
    page = await open_console(context, stack)
    widget = page.frame_locator("#widget")
    methods = widget.locator("#method-list li")
    assert await methods.count() == 1  # the seeded card

    await widget.locator("input[name=card_number]").fill("5555 5555 5555 4444")
    await widget.locator("input[name=exp_month]").fill("7")
    await widget.locator("input[name=exp_year]").fill("2032")
    await widget.locator("text=Add card").click()
    added = widget.locator("#method-list li", has_text="4444")
    await added.wait_for()
    await added.locator("text=Make default").click()
    await widget.locator("#method-list li", has_text="4444").locator(".default").wait_for()
    seeded = widget.locator("#method-list li", has_text="4242")
    await seeded.locator("text=Delete").click()
    await seeded.wait_for(state="detached")

    customer = stack.platform.customers["cus_alice"]
    assert [(m["last4"], m["default"]) for m in customer.payment_methods] == [("4444", True)]
    writes = [r for r in audit_records(stack, "request") if r["method"] != "GET"]
    assert [(r["operation"], r["decision"]) for r in writes] == [
        ("payment_methods.create", "allow"),
        ("payment_methods.set_default", "allow"),
        ("payment_methods.delete", "allow"),
    ]
    (session,) = audit_records(stack, "session")
    assert (session["action"], session["status"]) == ("create", 201)
    assert {r["session"] for r in writes} == {session["session"]}


async def test_the_widget_edits_the_billing_address(chromium: Any, stack: DemoStack) -> None:
    context = await chromium.new_context()
    page = await open_console(context, stack)
    form = page.frame_locator("#widget").locator("#address-form")
    for name, value in ADDRESS.items():
        await form.locator(f"input[name={name}]").fill(value)
    async with page.expect_response(lambda r: r.url.endswith("/billing-address")) as saved:
        await form.locator("text=Save address").click()
    assert (await saved.value).status == 200
    assert stack.platform.customers["cus_alice"].billing_address == ADDRESS


async def test_a_viewer_reads_through_the_widget_and_its_writes_are_refused(
    chromium: Any, stack: DemoStack
) -> None:
    context = await chromium.new_context()
    page = await open_console(context, stack, user="bob")
    answer = await widget_call(page, "PUT", "/v1/customers/cus_bob/billing-address", ADDRESS)
    assert answer == {"status": 403, "code": "scope_denied"}
    assert stack.platform.customers["cus_bob"].billing_address != ADDRESS


async def test_the_session_audit_record_names_the_session_by_a_hash_never_the_token(
    chromium: Any, stack: DemoStack
) -> None:
    context = await chromium.new_context()
    await open_console(context, stack)
    (cookie,) = [c for c in await context.cookies() if c["name"] == COOKIE]
    session_id = cookie["value"].split(".")[0]
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    assert session_id not in text and cookie["value"] not in text
    (record,) = audit_records(stack, "session")
    assert record["session"].startswith("sha256:")


# -- what script injected into the console page can do -------------------------------------

FORGE = """async ([url, bearer, csrf]) => {
  const headers = {"Content-Type": "application/json", "Authorization": "Bearer " + bearer};
  if (csrf !== null) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(url, {method: "POST", headers, credentials: "include",
    body: JSON.stringify({card_number: "4242424242424242", exp_month: 1, exp_year: 2031})});
  return {status: r.status, code: (await r.json()).code};
}"""


async def test_script_in_the_console_page_cannot_read_the_csrf_cookie(
    chromium: Any, stack: DemoStack
) -> None:
    context = await chromium.new_context()
    page = await open_console(context, stack)
    (cookie,) = [c for c in await context.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    # Cookies are not kept apart by port: the console's host holds it too, unreadable.
    assert COOKIE not in await page.evaluate("document.cookie")
    widget_cookies = (
        await page.frame_locator("#widget").locator("body").evaluate("() => document.cookie")
    )
    assert COOKIE not in widget_cookies


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "csrf_missing"),
        ("guessed", "csrf_invalid"),
        ("other_session", "csrf_invalid"),
    ],
)
async def test_writes_forged_by_script_in_the_console_page_are_refused(
    chromium: Any, stack: DemoStack, header: str | None, code: str
) -> None:
    """The injected script holds the user's bearer credential and the browser attaches the
    session cookie, yet without the session's own token in the header nothing passes."""
    victim = await chromium.new_context()
    page = await open_console(victim, stack)
    csrf: str | None = header
    if header == "guessed":
        (cookie,) = [c for c in await victim.cookies() if c["name"] == COOKIE]
        session_id = cookie["value"].split(".")[0]
        csrf = f"{session_id}.{'A' * 43}.{'B' * 43}"  # the right session, a made-up token
    elif header == "other_session":
        csrf = await _token_of_a_fresh_session(chromium, stack)
    seen = len(stack.platform.seen)
    bearer = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    url = stack.urls["proxy"] + "/v1/customers/cus_alice/payment-methods"
    answer = await page.evaluate(FORGE, [url, bearer, csrf])
    assert answer == {"status": 403, "code": code}
    assert len(stack.platform.seen) == seen


async def _token_of_a_fresh_session(chromium: Any, stack: DemoStack) -> str:
    """A CSRF token of a session made in another browser, by the same user."""
    context = await chromium.new_context()
    await open_console(context, stack)
    (cookie,) = [c for c in await context.cookies() if c["name"] == COOKIE]
    value: str = cookie["value"]
    return value


# -- CSP nonces and framing ------------------------------------------------------------------

VIOLATION_PAGE = """<!doctype html>
<html><head>
<script nonce="{{csp-nonce}}">
  window.violations = [];
  document.addEventListener("securitypolicyviolation",
    (e) => window.violations.push([e.violatedDirective, e.blockedURI]));
  window.nonced = true;
</script>
<script>window.unnonced = true;</script>
<script nonce="not-the-nonce">window.wrong = true;</script>
</head><body>page</body></html>"""


@pytest.fixture
async def pages_stack(make_stack: Any, tmp_path: Any) -> DemoStack:
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "probe.html").write_text(VIOLATION_PAGE, "utf-8")
    stack: DemoStack = await make_stack({"browser": {"pages_dir": str(pages)}})
    return stack


async def test_an_inline_script_without_the_answers_nonce_does_not_run(
    chromium: Any, pages_stack: DemoStack
) -> None:
    page = await chromium.new_page()
    await page.goto(pages_stack.urls["proxy"] + "/_dragoman/pages/probe.html")
    await page.wait_for_function("window.violations.length >= 2")
    ran = await page.evaluate("[!!window.nonced, !!window.unnonced, !!window.wrong]")
    assert ran == [True, False, False]
    violations = await page.evaluate("window.violations")
    assert [directive for directive, _ in violations] == ["script-src-elem"] * 2
    assert all(blocked == "inline" for _, blocked in violations)


async def test_script_injected_into_the_widget_page_does_not_run(
    chromium: Any, stack: DemoStack
) -> None:
    context = await chromium.new_context()
    page = await open_console(context, stack)
    widget = page.frame_locator("#widget").locator("body")
    outcome = await widget.evaluate(
        """() => new Promise((resolve) => {
          const violations = [];
          document.addEventListener("securitypolicyviolation",
            (e) => violations.push(e.violatedDirective));
          const script = document.createElement("script");
          script.textContent = "window.injected = true";
          document.body.append(script);
          const html = document.createElement("div");
          html.innerHTML = '<img src="data:," onload="window.injected = true">';
          document.body.append(html);
          setTimeout(() => resolve({violations, ran: !!window.injected}), 300);
        })"""
    )
    assert outcome == {"violations": ["script-src-elem", "script-src-attr"], "ran": False}


@pytest.fixture
async def framing_origin() -> AsyncIterator[str]:
    """A site not on frame_ancestors (localhost, another site than 127.0.0.1) that tries to
    frame the widget; its page is given the widget's URL in the query."""

    async def page(request: web.Request) -> web.Response:
        src = request.query["src"]
        return web.Response(
            text=f'<!doctype html><iframe id="w" src="{src}"></iframe>', content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://localhost:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_the_widget_cannot_be_framed_by_an_origin_not_on_the_list(
    chromium: Any, stack: DemoStack, framing_origin: str
) -> None:
    page = await chromium.new_page()
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    widget_url = stack.urls["proxy"] + "/_dragoman/pages/widget.html"
    async with page.expect_response(widget_url) as served:
        await page.goto(f"{framing_origin}/?src={widget_url}")
    response = await served.value
    assert "frame-ancestors " + stack.urls["console"] in response.headers["content-security-policy"]
    await page.wait_for_timeout(300)  # let the frame settle into its blocked state
    frame = page.frames[1]
    assert "/_dragoman/pages/widget.html" not in frame.url or not await _widget_ran(frame)
    assert any("frame-ancestors" in text for text in messages)


async def _widget_ran(frame: Any) -> bool:
    try:
        return bool(await frame.evaluate("!!globalThis.widget"))
    except Exception:  # a blocked frame is an error page script cannot enter
        return False


async def test_the_console_on_the_list_frames_the_widget(chromium: Any, stack: DemoStack) -> None:
    context = await chromium.new_context()
    page = await open_console(context, stack)
    assert await page.frame_locator("#widget").locator(WIDGET_READY).count() == 1
