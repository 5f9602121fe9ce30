"""A cluster for the failover and chaos runs: `dragoman serve` replicas on one PostgreSQL
database and one Redis, behind a real HAProxy with active health checks on /readyz, in
front of the sample payment platform (in this process, so the test reads what it applied).

The load is a set of callers, each reusing its identity token like a real client: reads and
writes mixed, every write with an Idempotency-Key, and a retry (same key for a write) after
any answer that did not come from a dragoman replica's pipeline (a dropped connection, the
balancer's own 502/503) or that says a dependency is briefly unavailable. Every attempt is
recorded, so the report can say what was sent, what failed when, what was retried, and
whether every answer a replica gave has its audit record.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.platform import PaymentPlatform
from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, demo_settings, write_toml
from dragoman.keys.sealing import new_master_key
from dragoman.tokens.replay import MemoryReplayCache
from dragoman.tokens.verify import TokenVerifier

DRAGOMAN = str(Path(sys.executable).parent / "dragoman")
HOST = "127.0.0.1"
PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031}
RETRYABLE = frozenset({409, 502, 503, 504})
"""409: the first attempt of this idempotency key is still running upstream."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


@dataclass
class Replica:
    name: str
    port: int
    config: Path
    log: Path
    audit: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [DRAGOMAN, "serve", "--config", str(self.config)],
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(30) is None:
                self.signal(signal.SIGKILL)
                self.process.wait()


EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_config(port: int, replicas: Sequence[Replica]) -> str:
    """The shipped example (deploy/haproxy/haproxy.cfg), pointed at this cluster: the
    failover test runs what operators are told to run."""
    lines = []
    for line in EXAMPLE.read_text("utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("stats socket"):
            continue  # the runtime API socket's directory belongs to a system install
        if stripped.startswith("maxconn") and line.startswith("    maxconn"):
            line = "    maxconn 2000"  # the global one: the sandbox caps open files at 20000
        if stripped.startswith("bind :"):
            line = f"    bind {HOST}:{port}"
        if stripped.startswith("server "):
            continue
        lines.append(line)
    lines += [f"    server {r.name} {HOST}:{r.port}" for r in replicas]
    return "\n".join(lines) + "\n"


@dataclass
class Attempt:
    at: float
    method: str
    key: str | None
    request_id: str
    status: int | None
    """None: no answer (the connection failed)."""
    from_replica: bool
    """The answer carries our X-Request-Id: a replica's pipeline answered it."""


@dataclass
class Report:
    requests: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    gave_up: int = 0

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.status is None or a.status in RETRYABLE]

    @property
    def retried(self) -> int:
        return len(self.attempts) - self.requests


@dataclass
class Cluster:
    state: Path
    pg_url: str
    redis_url: str
    replicas: list[Replica] = field(default_factory=list)
    port: int = 0
    haproxy: subprocess.Popen[bytes] | None = None
    issuer: DevIssuer = field(default_factory=DevIssuer)
    platform: PaymentPlatform | None = None
    runners: list[web.AppRunner] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, count: int) -> None:
        self.port = free_port()
        issuer_url = await self._serve("issuer", self.issuer.app())
        self.issuer.issuer = issuer_url
        platform_port = free_port()
        platform_url = f"http://{HOST}:{platform_port}"
        self.platform = PaymentPlatform(
            TokenVerifier(
                jwks_url=self.url + "/.well-known/jwks.json",
                issuer=TOKEN_ISSUER,
                audience=AUDIENCE,
                origin=platform_url,
                replay_cache=MemoryReplayCache(),
            )
        )
        self.platform.seed()
        await self._serve("platform", self.platform.app(), platform_port)
        for secret in ("master.key", "csrf.key"):
            path = self.state / secret
            path.write_text(new_master_key() + "\n")
            path.chmod(0o600)
        for index in range(count):
            self.replicas.append(self._replica(f"r{index}", platform_url, issuer_url))
        self._seed_mapping(self.replicas[0].config)
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            await self.until_ready(replica)
        (self.state / "haproxy.cfg").write_text(haproxy_config(self.port, self.replicas))
        binary = haproxy_binary()
        assert binary is not None
        with (self.state / "haproxy.log").open("ab") as sink:
            self.haproxy = subprocess.Popen(
                [binary, "-db", "-f", str(self.state / "haproxy.cfg")],
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        await self._until(self.url + "/readyz")

    def _replica(self, name: str, platform: str, issuer: str) -> Replica:
        port = free_port()
        data = demo_settings(
            proxy=f"http://{HOST}:{port}",
            platform=platform,
            issuer=issuer,
            console=self.url,
            state_dir=self.state,
        )
        audit = self.state / f"audit-{name}.jsonl"
        data["store"] = {"database_url": self.pg_url}
        data["audit"] = {"sink": "file", "path": str(audit)}
        data["browser"] |= {
            "session_backend": "redis",
            "session_redis_url": self.redis_url,
            "csrf_key_file": str(self.state / "csrf.key"),
        }
        data["limits"] = {
            "backend": "redis",
            "redis_url": self.redis_url,
            "rules": [{"name": "load", "per": "account", "rate": "1000000/s", "burst": 1_000_000}],
        }
        data["anomaly"] = {"backend": "redis", "redis_url": self.redis_url}
        data["server"]["shutdown_timeout"] = "5s"
        config = self.state / f"{name}.toml"
        write_toml(data, config)
        return Replica(name, port, config, self.state / f"{name}.log", audit)

    def _seed_mapping(self, config: Path) -> None:
        argv = [DRAGOMAN, "mappings", "add", "--config", str(config), "--account", "acct-1001"]
        argv += ["--customer", "cus_alice", "--by", "test", "--grant", "role:billing_admin=*"]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    async def _serve(self, name: str, app: web.Application, port: int = 0) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        self.runners.append(runner)
        return f"http://{HOST}:{runner.addresses[0][1]}"

    async def until_ready(self, replica: Replica) -> None:
        await self._until(replica.url + "/readyz")

    async def _until(self, url: str, deadline: float = 60.0) -> None:
        end = time.monotonic() + deadline
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < end:
                try:
                    async with http.get(url) as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{url} was not ready within {deadline} s")

    async def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=10)
        for runner in reversed(self.runners):
            await runner.cleanup()

    # -- what happened -------------------------------------------------------------------

    def audit_records(self) -> list[dict[str, Any]]:
        records = []
        for replica in self.replicas:
            if replica.audit.exists():
                for line in replica.audit.read_text("utf-8").splitlines():
                    records.append(json.loads(line))
        return records

    def token(self) -> str:
        return self.issuer.token("alice", "acct-1001", roles=["billing_admin"], ttl=3600)


async def caller(
    cluster: Cluster,
    report: Report,
    until: float | asyncio.Event,
    rng: random.Random,
    writes: float = 0.2,
) -> None:
    """One client: reuses its token, mixes reads and writes, retries what was not answered.
    It runs until ``until``: a monotonic deadline, or an event the test sets."""
    token = cluster.token()

    def running() -> bool:
        if isinstance(until, asyncio.Event):
            return not until.is_set()
        return time.monotonic() < until

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while running():
            is_write = rng.random() < writes
            key = str(uuid.uuid4()) if is_write else None
            report.requests += 1
            for attempt in range(20):
                request_id = "fo" + uuid.uuid4().hex
                headers = {"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
                if key is not None:
                    headers["Idempotency-Key"] = key
                status: int | None = None
                echoed = False
                try:
                    async with http.request(
                        "POST" if is_write else "GET",
                        cluster.url + PM,
                        headers=headers,
                        json=CARD if is_write else None,
                    ) as answer:
                        await answer.read()
                        status = answer.status
                        echoed = answer.headers.get("X-Request-Id") == request_id
                except (aiohttp.ClientError, TimeoutError):
                    pass
                report.attempts.append(
                    Attempt(
                        time.monotonic(),
                        "POST" if is_write else "GET",
                        key,
                        request_id,
                        status,
                        echoed,
                    )
                )
                if status is not None and status not in RETRYABLE:
                    break
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                report.gave_up += 1
