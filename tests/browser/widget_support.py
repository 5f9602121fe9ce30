"""Helpers of the console + widget tests in Chromium: sign a user in on the console page,
wait for the widget (served by dragoman, in the console's iframe) to be ready, and read what
dragoman wrote to the audit trail."""

from __future__ import annotations

import json
from typing import Any

from dragoman.demo.runner import DemoStack

WIDGET_READY = "body[data-state=ready]"
COOKIE = "__Host-dragoman-csrf"


async def open_console(context: Any, stack: DemoStack, user: str = "alice") -> Any:
    """A new tab on the console, signed in as ``user``, its widget ready; the page."""
    page = await context.new_page()
    await page.goto(stack.urls["console"] + "/")
    await page.click(f"button[data-user={user}]")
    await page.frame_locator("#widget").locator(WIDGET_READY).wait_for(timeout=15_000)
    return page


def widget_frame(page: Any) -> Any:
    """The widget's frame (for evaluate) in a console page."""
    for frame in page.frames:
        if "/_dragoman/pages/widget.html" in frame.url:
            return frame
    raise AssertionError("the console page has no widget frame")


async def widget_call(page: Any, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """One call through the widget's client helper: its status and problem code, if any."""
    result: dict[str, Any] = await widget_frame(page).evaluate(
        """async ([method, path, body]) => {
          const r = await globalThis.widget.client.request(method, path,
            body === null ? {} : {body});
          const text = await r.text();
          let data = null;
          try { data = JSON.parse(text); } catch { data = text; }
          return {status: r.status, code: data && data.code ? data.code : null};
        }""",
        [method, path, body],
    )
    return result


async def client_stats(page: Any) -> dict[str, int]:
    stats: dict[str, int] = await widget_frame(page).evaluate("globalThis.widget.client.stats")
    return stats


def audit_records(stack: DemoStack, event: str | None = None) -> list[dict[str, Any]]:
    path = stack.state_dir / "audit.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [r for r in records if event is None or r["event"] == event]
