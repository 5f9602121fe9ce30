"""Pages dragoman serves itself (the client helper, browser.pages_dir): a fresh CSP nonce in
every HTML answer, framing by the listed host applications only, never cached, and nothing
outside the directory (SEMANTICS §5)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dragoman.browser.pages import PageError, read_pages
from dragoman.demo.runner import DemoStack

PAGE = '<!doctype html><script nonce="{{csp-nonce}}" src="app.js"></script>'
NONCE = re.compile(r"script-src 'nonce-([A-Za-z0-9_-]+)';")


@pytest.fixture
async def pages_stack(make_stack: Any, tmp_path: Path) -> DemoStack:
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "index.html").write_text(PAGE, "utf-8")
    (pages / "app.js").write_text("export const x = 1;\n", "utf-8")
    (pages / "notes.txt").write_text("not served", "utf-8")
    (pages / "sub").mkdir()
    (pages / "sub" / "deep.html").write_text(PAGE, "utf-8")
    stack: DemoStack = await make_stack({"browser": {"pages_dir": str(pages)}})
    return stack


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, str]:
    async with http.get(url) as response:
        return response.status, response.headers, await response.text()


async def test_each_html_answer_carries_its_own_nonce_in_the_page_and_the_policy(
    pages_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    url = pages_stack.urls["proxy"] + "/_dragoman/pages/index.html"
    nonces = []
    for _ in range(2):
        status, headers, body = await get(http, url)
        assert status == 200
        match = NONCE.search(headers["Content-Security-Policy"])
        assert match is not None
        assert f'nonce="{match.group(1)}"' in body and "{{csp-nonce}}" not in body
        nonces.append(match.group(1))
    assert nonces[0] != nonces[1]


async def test_an_html_answer_is_never_cached_and_may_be_framed_by_the_listed_hosts_only(
    pages_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    _, headers, _ = await get(http, pages_stack.urls["proxy"] + "/_dragoman/pages/index.html")
    assert headers["Cache-Control"] == "no-store"
    policy = headers["Content-Security-Policy"]
    assert policy.endswith(f"frame-ancestors {pages_stack.urls['console']}")
    assert "'unsafe-inline'" not in policy and "'strict-dynamic'" not in policy
    assert "X-Frame-Options" not in headers  # it has no allow-list; frame-ancestors rules
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_a_page_may_be_framed_by_no_one_when_no_host_is_listed(
    make_stack: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    pages = tmp_path / "only"
    pages.mkdir()
    (pages / "index.html").write_text(PAGE, "utf-8")
    stack = await make_stack({"browser": {"pages_dir": str(pages), "frame_ancestors": []}})
    _, headers, _ = await get(http, stack.urls["proxy"] + "/_dragoman/pages/index.html")
    assert headers["Content-Security-Policy"].endswith("frame-ancestors 'none'")
    assert headers["X-Frame-Options"] == "DENY"


async def test_scripts_are_served_with_their_type_and_no_nonce(
    pages_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(http, pages_stack.urls["proxy"] + "/_dragoman/pages/app.js")
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/javascript")
    assert body == "export const x = 1;\n"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_the_client_helper_is_served_by_every_proxy(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(http, stack.urls["proxy"] + "/_dragoman/client.js")
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/javascript")
    assert "export class DragomanClient" in body


@pytest.mark.parametrize(
    "name",
    ["notes.txt", "sub/deep.html", "..%2Fpages%2Findex.html", "%2e%2e/dragoman.toml", "missing"],
)
async def test_nothing_outside_the_listed_files_is_served(
    pages_stack: DemoStack, http: aiohttp.ClientSession, name: str
) -> None:
    url = pages_stack.urls["proxy"] + "/_dragoman/pages/" + name
    async with http.get(url) as response:
        # What no page serves is the pipeline's: a caller without credentials is refused
        # before a path is looked up.
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert "not served" not in await response.text()


async def test_a_name_no_page_has_is_refused_problem_json_and_recorded(
    pages_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = pages_stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    url = pages_stack.urls["proxy"] + "/_dragoman/pages/missing.html"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        problem = await response.json()
        assert response.headers["X-Request-Id"]
    assert problem["code"] == "operation_unknown"
    lines = (pages_stack.state_dir / "audit.jsonl").read_text().splitlines()
    (record,) = [r for r in map(json.loads, lines) if r.get("audit_id") == problem["audit_id"]]
    # No operation's path has these segments: none is written as the caller sent it.
    assert (record["path"], record["code"]) == ("/{param}/{param}/{param}", "operation_unknown")


def test_a_page_larger_than_the_limit_is_an_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "big.html").write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(PageError, match=r"browser.pages_dir: big.html is larger than 1 MiB"):
        read_pages(tmp_path)
