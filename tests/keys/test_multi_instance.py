"""Three `dragoman serve` processes sharing one key set in PostgreSQL, through several forced
rotations (issue 3, multi-instance acceptance; SEMANTICS §3).

The three proxies run with identical settings except the port: one PostgreSQL store, the local
provider with one master key file, a short timeline (prepublish 2 s, overlap 2 s, key set
re-read every 0.2 s). An in-process upstream records every token it receives: the kid of its
JWS header, its ``iat`` and ``jti`` (read without verification), which proxy forwarded it
(from the X-Request-Id the client chose), and when it arrived. Requests go round-robin to
the three proxies the whole time, while each proxy's JWKS is polled and rotations are forced
from three concurrent `dragoman keys rotate` processes per round (one per proxy's settings
file). The last round is one emergency `keys rotate --now`.

Each rotation happened once: the stored key set has one row per generation, contiguous, each
successor activating exactly when its predecessor stops signing, and no successor was made
while another was still pending (its ``created_at`` is not before its predecessor's
``activates_at``). So of the three invocations of a round one wins, unless one started so
late that the winner's key had meanwhile become current: then it rightly rotates again.

Afterwards the key set is read from PostgreSQL and every recorded token is judged against it.

Attribution at switch instants. ``iat`` is an integer second, so by itself it places the
signature only within a second. The test brackets the signing instant more tightly: the
proxy reads its clock for ``iat`` after the request has arrived and then checks which key is
current and signs, and the upstream receives the token after that; all on one host and one
clock. So a token with ``iat = i``, whose request the client sent at ``s`` and the upstream
received at ``r``, was signed at an instant ``t`` in ``[max(s, i), r]`` (a few milliseconds
wide). A token is correct if its kid was the current key at *some* instant of that window in
the stored timeline: key ``n`` is current on ``[activates_at(n), activates_at(n+1))``, so the
condition is ``activates_at(n) <= r and activates_at(n+1) > max(s, i)``. Only a token whose
window holds a switch instant can be attributed to either key; every other token has exactly
one acceptable kid. The one exception is the emergency rotation: its successor is current
from the moment it is written, and a proxy learns it at its next re-read, so the predecessor
may sign for up to 3 x refresh_interval (the view-age bound of the key ring) after the switch,
plus the time the CLI took between reading the clock and committing; ``EMERGENCY_GRACE``
bounds that.

"Settled" means at least ``SETTLE`` (3 refresh intervals and a margin) after a switch: from
then on every proxy must have minted tokens, all with the new kid.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import demo_settings, write_toml
from dragoman.keys.sealing import new_master_key
from dragoman.keys.store import KeySetStore
from dragoman.keys.timeline import KeyRecord
from dragoman.state.sql import make_engine
from postgres_support import empty_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DRAGOMAN = str(Path(sys.executable).with_name("dragoman"))
PROXIES = 3
PREPUBLISH = 2.0
OVERLAP = 2.0
REFRESH = 0.2
JWKS_MAX_AGE = 1.0
ROUNDS = 4
"""Prepublished rotations (`keys rotate`); one emergency rotation (`--now`) follows."""
SETTLE = 3 * REFRESH + 0.4
EMERGENCY_GRACE = 3 * REFRESH + 0.4
AFTER_SWITCH = 1.6
"""How long requests run on each new key before the next round starts."""
PACE = 0.004
"""Pause between two requests: enough tokens, and CPU left for the CLI processes."""
PM = "/v1/customers/cus_alice/payment-methods"
REQUEST_ID = re.compile(r"^mi-p(\d)-(\d{8})$")
MAX_REQUESTS = 60_000
"""A bound on the request loop, whatever happens to the rotation driver."""


@dataclass(frozen=True, slots=True)
class Minted:
    proxy: int
    request_id: str
    kid: str
    iat: int
    jti: str
    received: float
    token: str


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the client saw it."""

    request_id: str
    sent: float
    status: int
    body: str


@dataclass
class Upstream:
    """Accepts every request and keeps what the token says (no verification here)."""

    minted: list[Minted] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        received = time.time()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        match = REQUEST_ID.match(request.headers.get("X-Request-Id", ""))
        if scheme.lower() != "bearer" or not token or match is None:
            self.problems.append(f"unexpected request {request.method} {request.path}")
            return web.json_response({"error": "unexpected"}, status=400)
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        self.minted.append(
            Minted(
                proxy=int(match.group(1)),
                request_id=match.group(0),
                kid=header["kid"],
                iat=claims["iat"],
                jti=claims["jti"],
                received=received,
                token=token,
            )
        )
        return web.json_response({"data": []})


@dataclass
class Sighting:
    """A kid in one proxy's JWKS: first and last time it was seen there."""

    first: float
    """Upper bound of the first publication seen (the poll's answer time)."""
    last: float
    """Lower bound of the last publication seen (the poll's request time)."""
    jwk: dict[str, Any]


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        DRAGOMAN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def stop_all(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every server, then SIGKILL the process group of any that will not stop."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes = []
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            codes.append(process.wait())
    return codes


@dataclass(frozen=True, slots=True)
class Rotation:
    """A successor made by `dragoman keys rotate`, as the winning invocation printed it."""

    kid: str
    generation: int
    activates_at: float
    emergency: bool


async def test_three_instances_agree_through_forced_rotations(pg_url: str, tmp_path: Path) -> None:
    await empty_database(pg_url)
    issuer = DevIssuer()
    upstream = Upstream()
    async with serving(issuer.app()) as issuer_url, serving(upstream.app()) as upstream_url:
        issuer.issuer = issuer_url
        (tmp_path / "master.key").write_text(new_master_key())
        ports = [free_port() for _ in range(PROXIES)]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        configs = []
        for index, url in enumerate(urls):
            settings = demo_settings(
                proxy=url,
                platform=upstream_url,
                issuer=issuer_url,
                console="http://127.0.0.1:1",
                state_dir=tmp_path,
            )
            settings["keys"].update(
                rotation_period="1h",
                prepublish=f"{PREPUBLISH}s",
                overlap=f"{OVERLAP}s",
                refresh_interval=f"{REFRESH}s",
                jwks_max_age=f"{JWKS_MAX_AGE}s",
                auto_rotate=True,
            )
            settings["store"]["database_url"] = pg_url
            settings["audit"] = {"sink": "stdout"}
            # One caller drives thousands of requests: this test is about keys, not limits.
            settings["limits"] = {"enabled": False}
            settings["anomaly"] = {"enabled": False}
            configs.append(tmp_path / f"proxy{index}.toml")
            write_toml(settings, configs[-1])
        code, _, err = await run_cli(
            "mappings", "add", "--config", str(configs[0]), "--account", "acct-1001",
            "--customer", "cus_alice", "--by", "test", "--grant", "role:billing_admin=*",
        )  # fmt: skip
        assert code == 0, err

        servers: list[subprocess.Popen[bytes]] = []
        try:
            for index, config in enumerate(configs):
                with (tmp_path / f"proxy{index}.log").open("wb") as sink:
                    servers.append(
                        subprocess.Popen(
                            [DRAGOMAN, "serve", "--config", str(config)],
                            stdout=sink,
                            stderr=sink,
                            start_new_session=True,
                        )
                    )
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, urls, servers, tmp_path)
                rotations, statuses, sightings, finished = await exercise(
                    http, urls, configs, issuer
                )
        finally:
            exit_codes = stop_all(servers)
        assert exit_codes == [0] * PROXIES, f"servers exited with {exit_codes}"

    engine = make_engine(pg_url, pool_size=1)
    store = KeySetStore(engine)
    try:
        keys = await store.load()
    finally:
        await store.close()
        await engine.dispose()
    code, listed, err = await run_cli("keys", "list", "--all", "--config", str(configs[0]))
    assert code == 0, err

    check_key_set(keys, rotations, [s.pid for s in servers])
    assert [json.loads(line)["kid"] for line in listed.splitlines()] == [k.kid for k in keys]
    check_requests(statuses, upstream)
    check_tokens(keys, rotations, upstream.minted, statuses, finished)
    check_publication(keys, rotations, sightings, upstream.minted, finished)


async def wait_ready(
    http: aiohttp.ClientSession,
    urls: list[str],
    servers: list[subprocess.Popen[bytes]],
    logs: Path,
) -> None:
    deadline = time.monotonic() + 30
    for index, url in enumerate(urls):
        while True:
            if servers[index].poll() is not None:
                log = (logs / f"proxy{index}.log").read_text(errors="replace")
                raise AssertionError(f"proxy {index} exited: {log[-2000:]}")
            try:
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"proxy {index} not ready"
            await asyncio.sleep(0.05)


async def exercise(
    http: aiohttp.ClientSession,
    urls: list[str],
    configs: list[Path],
    issuer: DevIssuer,
) -> tuple[list[Rotation], list[Request], dict[tuple[int, str], Sighting], float]:
    """Requests and JWKS polls run while the rotations are forced; returns the rotations,
    the requests, the JWKS sightings and when the traffic stopped."""
    token = issuer.token("alice", "acct-1001", roles=["billing_admin"], ttl=600)
    stop = asyncio.Event()
    statuses: list[Request] = []
    sightings: dict[tuple[int, str], Sighting] = {}

    async def requests() -> None:
        for seq in range(MAX_REQUESTS):
            if stop.is_set():
                return
            proxy = seq % len(urls)
            request_id = f"mi-p{proxy}-{seq:08d}"
            headers = {"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
            sent = time.time()
            async with http.get(urls[proxy] + PM, headers=headers) as response:
                body = await response.text()
                statuses.append(Request(request_id, sent, response.status, body[:300]))
            await asyncio.sleep(PACE)

    async def poll_jwks() -> None:
        while not stop.is_set():
            for index, url in enumerate(urls):
                asked = time.time()
                async with http.get(url + "/.well-known/jwks.json") as response:
                    assert response.status == 200
                    body = await response.json(content_type=None)
                answered = time.time()
                for jwk in body["keys"]:
                    seen = sightings.get((index, jwk["kid"]))
                    if seen is None:
                        sightings[(index, jwk["kid"])] = Sighting(answered, asked, jwk)
                    else:
                        seen.last, seen.jwk = asked, jwk
            await asyncio.sleep(0.05)

    async def rotate(emergency: bool) -> list[Rotation]:
        """One round: the successors it made, oldest first (at least one)."""
        if emergency:
            # One operator, one command: `--now` has no pending successor to wait for, so
            # each invocation rotates (a second one run meanwhile would rotate again).
            attempts = [await run_cli("keys", "rotate", "--now", "--config", str(configs[0]))]
        else:
            attempts = await asyncio.gather(
                *(run_cli("keys", "rotate", "--config", str(c)) for c in configs)
            )
        for code, _, err in attempts:
            assert code in (0, 1), err
            if code == 1:
                assert "already scheduled" in err
        won = sorted(
            (json.loads(out) for code, out, _ in attempts if code == 0),
            key=lambda made: int(made["generation"]),
        )
        assert won, f"every invocation was refused, yet no successor was pending: {attempts}"
        newest = 1 + len(rotations)
        assert [m["generation"] for m in won] == list(range(newest + 1, newest + 1 + len(won)))
        return [
            Rotation(m["kid"], m["generation"], epoch(m["activates_at"]), emergency) for m in won
        ]

    traffic = [asyncio.create_task(requests()), asyncio.create_task(poll_jwks())]
    rotations: list[Rotation] = []
    try:
        await asyncio.sleep(1.0)
        for round_ in range(ROUNDS + 1):
            emergency = round_ == ROUNDS
            made = await rotate(emergency)
            rotations.extend(made)
            after = AFTER_SWITCH if not emergency else max(AFTER_SWITCH, OVERLAP) + 1.0
            await asyncio.sleep(max(0.0, made[-1].activates_at + after - time.time()))
        stop.set()
        await asyncio.gather(*traffic)
    finally:
        stop.set()
        for task in traffic:
            task.cancel()
        await asyncio.gather(*traffic, return_exceptions=True)
    return rotations, statuses, sightings, time.time()


def check_key_set(keys: list[KeyRecord], rotations: list[Rotation], proxy_pids: list[int]) -> None:
    """Each rotation happened once: one row per generation, contiguous, each successor
    activating exactly when its predecessor stops signing, none made while another was
    pending."""
    assert [k.generation for k in keys] == list(range(1, len(keys) + 1))
    assert len({k.kid for k in keys}) == len(keys)
    assert [(k.kid, k.generation) for k in keys[1:]] == [(r.kid, r.generation) for r in rotations]
    assert sum(not r.emergency for r in rotations) >= ROUNDS
    assert [r.emergency for r in rotations][-1], "the emergency rotation came last"
    first = keys[0]
    assert int(first.created_by.rsplit(":", 1)[1]) in proxy_pids, "a proxy made the first key"
    assert first.activates_at <= first.created_at
    for previous, successor in itertools.pairwise(keys):
        assert previous.deactivates_at == successor.activates_at
        assert successor.created_at >= previous.activates_at, (
            f"generation {successor.generation} was made while {previous.generation} was"
            " still pending: a second rotation for one switch"
        )
    assert keys[-1].deactivates_at is None
    assert all(k.retired_at is None for k in keys)
    for key, rotation in zip(keys[1:], rotations, strict=True):
        assert abs(key.activates_at - rotation.activates_at) < 1e-3
        # The CLI reads the clock for activates_at, then (under the lock) for created_at.
        if rotation.emergency:
            assert 0 <= key.created_at - key.activates_at < 1.0
        else:
            assert PREPUBLISH - 1.0 < key.activates_at - key.created_at <= PREPUBLISH


def check_requests(statuses: list[Request], upstream: Upstream) -> None:
    failed = [r for r in statuses if r.status != 200]
    assert not failed, f"{len(failed)} of {len(statuses)} requests failed: {failed[:5]}"
    assert not upstream.problems
    assert sorted(m.request_id for m in upstream.minted) == sorted(r.request_id for r in statuses)
    assert len({m.jti for m in upstream.minted}) == len(upstream.minted)
    assert len(statuses) > 300, "too few requests to say anything"


def signed_within(token: Minted, sent: float) -> tuple[float, float]:
    """The interval that holds the instant ``token`` was signed (see the module docstring)."""
    return max(sent, token.iat), token.received


def current_intervals(
    keys: list[KeyRecord], rotations: list[Rotation]
) -> list[tuple[str, float, float, float]]:
    """(kid, from, until, grace): when each key was current; grace extends ``until`` for a
    key whose successor came in an emergency (proxies learn it at their next re-read)."""
    emergency = {r.generation for r in rotations if r.emergency}
    spans = []
    for key in keys:
        until = key.deactivates_at if key.deactivates_at is not None else float("inf")
        grace = EMERGENCY_GRACE if key.generation + 1 in emergency else 0.0
        spans.append((key.kid, key.activates_at, until, grace))
    return spans


def check_tokens(
    keys: list[KeyRecord],
    rotations: list[Rotation],
    minted: list[Minted],
    statuses: list[Request],
    finished: float,
) -> None:
    """No token signed by a non-current key; all three proxies on one kid once settled."""
    sent = {r.request_id: r.sent for r in statuses}
    spans = current_intervals(keys, rotations)
    wrong = []
    for token in minted:
        earliest, latest = signed_within(token, sent[token.request_id])
        assert earliest <= latest
        allowed = {
            kid
            for kid, start, until, grace in spans
            if start <= latest and until + grace > earliest
        }
        if token.kid not in allowed:
            wrong.append((token.proxy, token.kid, earliest, latest, sorted(allowed)))
    assert not wrong, f"{len(wrong)} token(s) signed by a non-current key, e.g. {wrong[:5]}"

    for kid, start, until, _ in spans:
        settled = [
            t
            for t in minted
            if signed_within(t, sent[t.request_id])[0] >= start + SETTLE
            and t.received < min(until, finished)
        ]
        assert {t.kid for t in settled} == {kid}, f"after {kid} settled"
        by_proxy = {p: sum(t.proxy == p for t in settled) for p in range(PROXIES)}
        assert min(by_proxy.values()) >= 3, f"every proxy minted with {kid}: {by_proxy}"


def check_publication(
    keys: list[KeyRecord],
    rotations: list[Rotation],
    sightings: dict[tuple[int, str], Sighting],
    minted: list[Minted],
    finished: float,
) -> None:
    """Every token verifies against the key published for its kid; each prepublished key was
    in every proxy's JWKS at least jwks_max_age before it signed; none stayed published
    past its verify_until."""
    stored = {k.kid: k for k in keys}
    published: dict[str, dict[str, Any]] = {}
    for (_, kid), seen in sightings.items():
        assert kid in stored, f"a proxy published {kid}, which is not in the key set"
        public = {m: seen.jwk[m] for m in ("kty", "crv", "x", "y")}
        assert public == {m: stored[kid].public_jwk[m] for m in ("kty", "crv", "x", "y")}
        assert seen.jwk["active_from"] == round(stored[kid].activates_at, 3)
        published[kid] = seen.jwk
    for key, rotation in zip(keys[1:], rotations, strict=True):
        for proxy in range(PROXIES):
            seen = sightings.get((proxy, key.kid))
            assert seen is not None, f"proxy {proxy} never published {key.kid}"
            if not rotation.emergency:
                assert seen.first <= key.activates_at - JWKS_MAX_AGE, (
                    f"proxy {proxy} published {key.kid} {key.activates_at - seen.first:.2f}s"
                    " before it signed"
                )
    for key in keys:
        if key.deactivates_at is not None and key.deactivates_at + OVERLAP < finished:
            for proxy in range(PROXIES):
                seen = sightings.get((proxy, key.kid))
                assert seen is None or seen.last < key.deactivates_at + OVERLAP, (
                    f"proxy {proxy} still published {key.kid} after its overlap"
                )
    verifying = {kid: jwt.PyJWK(jwk, algorithm="ES256") for kid, jwk in published.items()}
    jws = jwt.PyJWS()
    for token in minted:
        assert token.kid in verifying, f"token signed by unpublished kid {token.kid}"
        decoded = jws.decode_complete(token.token, verifying[token.kid].key, algorithms=["ES256"])
        assert decoded["header"]["kid"] == token.kid
