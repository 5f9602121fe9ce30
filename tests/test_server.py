"""`dragoman serve` as a real process: worker processes on one port, an attack run, the
logs and audit trail grepped for secrets afterwards, and a graceful stop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.platform import PaymentPlatform
from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, demo_settings, write_toml
from dragoman.keys.sealing import new_master_key
from dragoman.tokens.verify import TokenVerifier
from serve_support import free_port, stop

pytestmark = pytest.mark.slow
DRAGOMAN = str(Path(sys.executable).with_name("dragoman"))
PM = "/v1/customers/cus_alice/payment-methods"
CARD = "4111 1111 1111 1111"


class SlowablePlatform(PaymentPlatform):
    """The demo platform, with a listing that can be made slow on demand."""

    delay = 0.0
    entered: asyncio.Event | None = None

    async def _list(self, *args: Any) -> web.StreamResponse:
        if self.entered is not None:
            self.entered.set()
        await asyncio.sleep(self.delay)
        return await super()._list(*args)


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    issuer: DevIssuer
    platform: SlowablePlatform
    state: Path
    log: Path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    proxy_url = f"http://127.0.0.1:{port}"
    issuer = DevIssuer()
    platform = SlowablePlatform(
        TokenVerifier(
            jwks_url=proxy_url + "/.well-known/jwks.json",
            issuer=TOKEN_ISSUER,
            audience=AUDIENCE,
            origin="http://127.0.0.1",  # fixed below, once the platform has its port
        )
    )
    platform.seed()
    runners = []
    urls = {}
    for name, app in (("issuer", issuer.app()), ("platform", platform.app())):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    issuer.issuer = urls["issuer"]
    platform.verifier = TokenVerifier(
        jwks_url=proxy_url + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=urls["platform"],
    )
    (tmp_path / "master.key").write_text(new_master_key())
    settings = demo_settings(
        proxy=proxy_url,
        platform=urls["platform"],
        issuer=urls["issuer"],
        console="http://127.0.0.1:1",
        state_dir=tmp_path,
    )
    settings["server"]["workers"] = 2
    # State in memory cannot span two workers: API callers only (no browser sessions), and
    # no per-account limits or anomaly counts (the Redis backends are tested elsewhere).
    settings["browser"]["csrf"] = "off"
    settings["limits"] = {"enabled": False}
    settings["anomaly"] = {"enabled": False}
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    add = [DRAGOMAN, "mappings", "add", "--config", str(config), "--account", "acct-1001"]
    add += ["--customer", "cus_alice", "--by", "test", "--grant", "role:billing_admin=*"]
    subprocess.run(add, check=True, capture_output=True)
    log = tmp_path / "dragoman.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [DRAGOMAN, "serve", "--config", str(config)],
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(proxy_url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        yield Served(proxy_url, process, issuer, platform, tmp_path, log)
    finally:
        stop(process)
        for runner in runners:
            await runner.cleanup()
        await platform.verifier.close()


def worker_pids(parent: int) -> set[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children}


async def test_serve_runs_the_configured_worker_processes(served: Served) -> None:
    workers = worker_pids(served.process.pid)
    # multiprocessing's spawn start method adds a resource tracker beside the workers.
    names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers}
    assert sum(b"spawn_main" in cmd for cmd in names.values()) == 2
    token = served.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            async with http.get(
                served.url + PM, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200


def hs256_with_public_key(issuer: DevIssuer, claims: dict[str, Any]) -> str:
    """The classic key-confusion forgery, assembled by hand as an attacker would."""
    pem = issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "at+jwt", "kid": issuer.rsa_kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_no_token_card_number_or_secret_reaches_logs_or_audit_after_an_attack_run(
    served: Served,
) -> None:
    issuer = served.issuer
    good = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = issuer.claims("alice", "acct-1001", roles=["billing_admin"])
    forged = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": issuer.rsa_kid})
    confused = hs256_with_public_key(issuer, claims)
    none_alg = jwt.encode(claims, None, algorithm="none")
    secrets_used = [good, forged, confused, none_alg, CARD, CARD.replace(" ", "")]
    async with aiohttp.ClientSession() as http:
        for token in (good, forged, confused, none_alg, "garbage." + good):
            for path in (PM, f"{PM}?access_token={token}&card={CARD}", "/not/in/catalog"):
                async with http.post(
                    served.url + path,
                    headers={"Authorization": f"Bearer {token}", "X-CSRF-Token": token},
                    json={"card_number": CARD, "exp_month": 1, "exp_year": 2031},
                ) as response:
                    await response.read()
        minted = [s.jti for s in served.platform.seen if s.accepted]
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0
    log = served.log.read_text("utf-8", errors="replace")
    audit = (served.state / "audit.jsonl").read_text("utf-8")
    events = [json.loads(line)["event"] for line in audit.splitlines()]
    assert events.count("request") == 15
    assert events.count("mapping") == 2  # the fixture's `dragoman mappings add`: started, ok
    assert minted, "the legitimate requests went through"
    for secret in secrets_used:
        assert secret not in log
        assert secret not in audit
    assert "4111111111111111" not in audit


async def test_workers_stop_when_their_supervisor_is_killed(served: Served) -> None:
    workers = worker_pids(served.process.pid)
    served.process.kill()
    served.process.wait()
    for _ in range(100):
        alive = {pid for pid in workers if Path(f"/proc/{pid}").exists()}
        zombie_or_gone = {
            pid for pid in alive if "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        }
        if alive <= zombie_or_gone:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"workers outlived their supervisor: {sorted(alive)}")


async def test_sigterm_lets_in_flight_requests_finish(served: Served) -> None:
    gate = asyncio.Event()
    served.platform.entered = gate
    served.platform.delay = 1.0
    token = served.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with aiohttp.ClientSession() as http:

        async def request() -> int:
            async with http.get(
                served.url + PM, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                await response.read()
                return response.status

        in_flight = asyncio.create_task(request())
        await gate.wait()
        os.kill(served.process.pid, signal.SIGTERM)
        assert await in_flight == 200
    assert served.process.wait(timeout=30) == 0


def test_serve_on_an_unreachable_store_exits_3_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_text(new_master_key())
    settings = demo_settings(
        proxy=f"http://127.0.0.1:{free_port()}",
        platform="http://127.0.0.1:1",
        issuer="http://127.0.0.1:1",
        console="http://127.0.0.1:1",
        state_dir=tmp_path,
    )
    settings["store"]["database_url"] = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    result = subprocess.run(
        [DRAGOMAN, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert "state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr
