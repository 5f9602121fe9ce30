"""Regenerates the README's screenshots of the console demo (`make screenshots`).

Runs the demo stack on free loopback ports, drives Debian's Chromium through the flows the
README shows, and writes PNGs to docs/img/.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from dragoman.demo.runner import DemoPorts, DemoStack

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"


async def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dragoman-shots-") as tmp:
        stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), Path(tmp))
        stack.prepare_state()
        await stack.start()
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page(viewport={"width": 1100, "height": 900})
                await page.goto(stack.urls["console"] + "/")
                await page.click("button[data-user=alice]")
                widget = page.frame_locator("#widget")
                await widget.locator("body[data-state=ready]").wait_for()
                await widget.locator("input[name=card_number]").fill("5555 5555 5555 4444")
                await widget.locator("input[name=exp_month]").fill("7")
                await widget.locator("input[name=exp_year]").fill("2032")
                await widget.locator("text=Add card").click()
                await widget.locator("#method-list li", has_text="4444").wait_for()
                await page.screenshot(path=str(OUT / "console-widget.png"), full_page=True)

                await page.click("button[data-user=bob]")
                await widget.locator("#account-line", has_text="acct-2002").wait_for()
                await widget.locator("body[data-state=ready]").wait_for()
                await widget.locator("#address-form input[name=line1]").fill("1 Elm Street")
                await widget.locator("#address-form input[name=country]").fill("US")
                await widget.locator("text=Save address").click()
                await widget.locator("#last.denied").wait_for()
                await page.screenshot(path=str(OUT / "console-widget-refused.png"), full_page=True)
                await browser.close()
        finally:
            await stack.stop()
    print(f"wrote {OUT}/console-widget.png and console-widget-refused.png")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
