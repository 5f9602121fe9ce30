"""decision.allowed_peers: the decision listener answers only connections from its gateway's
networks, judged by the connection's own address (never a forwarded header); everyone else
gets 403 peer_not_allowed, recorded, and never a token."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from decision_support import alice, audit

from dragoman.app import proxy_runner
from dragoman.decision import decision_app
from dragoman.decision import peers as peers_module
from dragoman.decision.peers import AllowedPeers
from dragoman.demo.runner import DemoStack
from dragoman.tokens.mint import MintedToken, TokenRequest
from settings_support import settings_problems

PM = "/v1/customers/cus_alice/payment-methods"
ELSEWHERE = {"decision": {"enabled": True, "allowed_peers": ["10.0.0.0/8"]}}
"""A listener whose gateway is on 10/8: the tests, connecting from 127.0.0.1, are outside."""

MakeStack = Callable[..., Awaitable[DemoStack]]


def nginx_check(stack: DemoStack, target: str = PM) -> dict[str, str]:
    return {**alice(stack), "X-Original-Method": "GET", "X-Original-URI": target}


@pytest.fixture
async def elsewhere(make_stack: MakeStack) -> DemoStack:
    return await make_stack(ELSEWHERE)


@pytest.fixture
def mints(elsewhere: DemoStack, monkeypatch: pytest.MonkeyPatch) -> list[TokenRequest]:
    """Every token the refusing stack's minter is asked for."""
    assert elsewhere.proxy is not None
    minter = elsewhere.proxy.minter
    real = minter.mint
    asked: list[TokenRequest] = []

    async def counting(request: TokenRequest) -> MintedToken:
        asked.append(request)
        return await real(request)

    monkeypatch.setattr(minter, "mint", counting)
    return asked


# -- allowed peers ---------------------------------------------------------------------------


async def test_a_peer_inside_allowed_peers_gets_its_allow_answer(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"decision": {"enabled": True, "allowed_peers": ["127.0.0.1/32"]}})
    url = stack.decision_url + "/auth_request"
    async with http.get(url, headers=nginx_check(stack)) as answer:
        assert answer.status == 200
        assert answer.headers["Authorization"].startswith("Bearer ")
    assert audit(stack)[-1]["decision"] == "allow"


async def test_an_allowed_peer_still_names_the_caller_by_its_forwarded_for(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"decision": {"enabled": True, "allowed_peers": ["127.0.0.1/32"]}})
    headers = {**nginx_check(stack), "X-Forwarded-For": "198.51.100.7"}
    async with http.get(stack.decision_url + "/auth_request", headers=headers) as answer:
        assert answer.status == 200
    assert audit(stack)[-1]["client_ip"] == "198.51.100.7"


async def test_an_ipv4_peer_on_a_dual_stack_socket_matches_the_ipv4_networks(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    """The socket reports the peer as ::ffff:127.0.0.1; the default 127.0.0.0/8 holds."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
    except OSError as exc:
        pytest.skip(f"no dual-stack IPv6 socket here ({exc})")
    sock.listen(16)
    sock.setblocking(False)
    stack = await make_stack({"decision": {"enabled": True}})
    assert stack.proxy is not None and stack.settings is not None
    runner = proxy_runner(decision_app(stack.proxy, stack.settings.decision), stack.settings)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/auth_request"
        async with http.get(url, headers=nginx_check(stack)) as answer:
            assert answer.status == 200
        assert audit(stack)[-1]["client_ip"] == "::ffff:127.0.0.1"
    finally:
        await runner.cleanup()
        sock.close()


# -- refused peers ---------------------------------------------------------------------------


async def test_a_peer_outside_allowed_peers_gets_403_peer_not_allowed(
    elsewhere: DemoStack, http: aiohttp.ClientSession
) -> None:
    url = elsewhere.decision_url + "/auth_request"
    async with http.get(url, headers=nginx_check(elsewhere)) as answer:
        assert answer.status == 403
        assert answer.content_type == "application/problem+json"
        problem = await answer.json(content_type=None)
        assert answer.headers["X-Dragoman-Status"] == "403"
        assert json.loads(answer.headers["X-Dragoman-Problem"]) == problem
        assert "Authorization" not in answer.headers
    assert problem["code"] == "peer_not_allowed"
    assert problem["type"] == "urn:dragoman:problem:peer_not_allowed"
    assert problem["status"] == 403


async def test_an_envoy_check_from_a_peer_outside_gets_the_problem_itself(
    elsewhere: DemoStack, http: aiohttp.ClientSession
) -> None:
    url = elsewhere.decision_url + "/ext_authz" + PM
    async with http.get(url, headers=alice(elsewhere)) as answer:
        assert answer.status == 403
        assert answer.content_type == "application/problem+json"
        assert (await answer.json())["code"] == "peer_not_allowed"
        assert "Authorization" not in answer.headers
        assert "X-Dragoman-Status" not in answer.headers


async def test_a_peer_outside_gets_no_token_minted_and_no_check_run(
    elsewhere: DemoStack, mints: list[TokenRequest], http: aiohttp.ClientSession
) -> None:
    async with http.get(
        elsewhere.decision_url + "/auth_request", headers=nginx_check(elsewhere)
    ) as answer:
        assert answer.status == 403
    assert mints == []
    assert elsewhere.platform.seen == []
    record = audit(elsewhere)[-1]
    # Authentication never ran, although alice's token is valid.
    assert (record["principal"], record["mapping_id"], record["jti"]) == (None, None, None)


async def test_a_refused_peer_is_recorded_with_its_own_address(
    elsewhere: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(elsewhere.decision_url + "/ext_authz" + PM, headers=alice(elsewhere)):
        pass
    record = audit(elsewhere)[-1]
    assert record["event"] == "decision"
    assert (record["decision"], record["code"], record["reason"]) == (
        "deny",
        "peer_not_allowed",
        "peer_not_allowed",
    )
    assert record["status"] == 403
    assert record["client_ip"] == "127.0.0.1"
    # The caller's target, as a template: the customer stays out of the record.
    assert record["path"] == "/v1/customers/{customer_id}/payment-methods"


async def test_a_forged_forwarded_for_from_a_refused_peer_does_not_help(
    elsewhere: DemoStack, mints: list[TokenRequest], http: aiohttp.ClientSession
) -> None:
    headers = {**nginx_check(elsewhere), "X-Forwarded-For": "10.1.2.3"}
    async with http.get(elsewhere.decision_url + "/auth_request", headers=headers) as answer:
        assert answer.status == 403
        assert "Authorization" not in answer.headers
    assert mints == []
    assert audit(elsewhere)[-1]["client_ip"] == "127.0.0.1"  # not the forged 10.1.2.3


async def test_a_refused_peer_does_not_choose_its_request_id(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    # server.trust_request_id trusts the gateway's ids; a stranger's is not believed.
    stack = await make_stack({**ELSEWHERE, "server": {"trust_request_id": True}})
    offered = "f" * 32
    headers = {**nginx_check(stack), "X-Request-Id": offered}
    async with http.get(stack.decision_url + "/auth_request", headers=headers) as answer:
        assert answer.status == 403
        assert answer.headers["X-Request-Id"] != offered
    assert audit(stack)[-1]["request_id"] != offered


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/nothing-here"])
async def test_every_route_of_the_listener_refuses_a_peer_outside(
    elsewhere: DemoStack, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(elsewhere.decision_url + path) as answer:
        assert answer.status == 403
        assert (await answer.json(content_type=None))["code"] == "peer_not_allowed"


@pytest.fixture
async def unix_listener(
    make_stack: MakeStack, tmp_path: Path
) -> AsyncIterator[tuple[DemoStack, Path]]:
    """The decision application (default allowed_peers) served on a Unix socket."""
    stack = await make_stack({"decision": {"enabled": True}})
    assert stack.proxy is not None and stack.settings is not None
    runner = proxy_runner(decision_app(stack.proxy, stack.settings.decision), stack.settings)
    await runner.setup()
    path = tmp_path / "decision.sock"
    try:
        await web.UnixSite(runner, str(path)).start()
        yield stack, path
    finally:
        await runner.cleanup()


async def test_a_peer_without_an_address_is_refused(
    unix_listener: tuple[DemoStack, Path],
) -> None:
    stack, path = unix_listener
    connector = aiohttp.UnixConnector(path=str(path))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get("http://decision/auth_request", headers=nginx_check(stack)) as answer,
    ):
        assert answer.status == 403
        assert "Authorization" not in answer.headers
        problem = json.loads(answer.headers["X-Dragoman-Problem"])
    assert problem["code"] == "peer_not_allowed"
    assert audit(stack)[-1]["reason"] == "peer_unknown"


# -- the matcher -----------------------------------------------------------------------------


def test_an_ipv4_mapped_peer_matches_the_ipv4_networks() -> None:
    assert AllowedPeers(["127.0.0.0/8"]).allows("::ffff:127.0.0.1")
    assert not AllowedPeers(["10.0.0.0/8"]).allows("::ffff:127.0.0.1")


def test_an_ipv4_mapped_peer_is_not_matched_as_ipv6() -> None:
    assert not AllowedPeers(["::/0"]).allows("::ffff:127.0.0.1")


def test_peers_of_both_families_match_their_own_networks() -> None:
    peers = AllowedPeers(["10.0.0.0/8", "fd00::/8"])
    assert peers.allows("10.20.30.40")
    assert peers.allows("fd12::1")
    assert not peers.allows("11.0.0.1")
    assert not peers.allows("fe80::1")
    assert not peers.allows("::1")


@pytest.mark.parametrize("peer", [None, "", "localhost", "10.0.0.1:80", "/run/gateway.sock"])
def test_a_peer_that_is_no_address_is_not_allowed(peer: str | None) -> None:
    assert not AllowedPeers(["0.0.0.0/0", "::/0"]).allows(peer)


def test_remembered_answers_stay_within_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "CACHE_SIZE", 8)
    peers = AllowedPeers(["10.0.0.0/8"])
    for last in range(100):
        assert peers.allows(f"10.0.0.{last}")
        assert not peers.allows(f"192.0.2.{last}")
    assert len(peers._known) <= 8
    assert peers.allows("10.0.0.1")


# -- settings --------------------------------------------------------------------------------


def test_an_empty_allowed_peers_is_refused_naming_the_key(tmp_path: Path) -> None:
    problems = settings_problems(tmp_path, overrides={"decision": {"allowed_peers": []}})
    assert list(problems) == ["decision.allowed_peers"]
    assert "0.0.0.0/0" in problems["decision.allowed_peers"]


def test_a_bad_network_is_refused_naming_the_key(tmp_path: Path) -> None:
    overrides = {"decision": {"allowed_peers": ["10.0.0.0/8", "10.0.0.0/33"]}}
    problems = settings_problems(tmp_path, overrides=overrides)
    assert list(problems) == ["decision.allowed_peers"]
    assert "entry 1 is not an IP network" in problems["decision.allowed_peers"]


def test_a_network_with_host_bits_is_refused_naming_the_key(tmp_path: Path) -> None:
    problems = settings_problems(
        tmp_path, overrides={"decision": {"allowed_peers": ["10.0.0.1/8"]}}
    )
    assert list(problems) == ["decision.allowed_peers"]
    assert "host bits" in problems["decision.allowed_peers"]


def test_an_ipv4_mapped_network_is_refused_naming_the_key(tmp_path: Path) -> None:
    overrides = {"decision": {"allowed_peers": ["::ffff:10.0.0.0/104"]}}
    problems = settings_problems(tmp_path, overrides=overrides)
    assert list(problems) == ["decision.allowed_peers"]
    assert "write it as IPv4" in problems["decision.allowed_peers"]
