"""`dragoman demo`: the whole picture in one process, with embedded defaults.

Four servers on loopback: the development identity issuer, the sample payment platform,
the console page, and dragoman in front of the platform (SQLite mapping store, a local
encrypted key file, a JSON-lines audit file), with dragoman's metrics on a fifth port.
``--check`` runs a scripted walk-through on free ports in a temporary directory and exits
non-zero if any step misbehaves.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from dragoman.app import PROXY_KEY, Proxy, build_app, proxy_runner
from dragoman.decision import decision_runner
from dragoman.demo.console import console_app
from dragoman.demo.issuer import DEV_WARNING, DevIssuer
from dragoman.demo.platform import PaymentPlatform, catalog_settings
from dragoman.keys.sealing import new_master_key
from dragoman.logs import configure as configure_logging
from dragoman.mapping.entity import Grant, MappingStatus
from dragoman.mapping.store import MappingExists
from dragoman.observability import exposition
from dragoman.observability.endpoint import metrics_app
from dragoman.settings import Settings, TlsSettings, load_settings
from dragoman.tls import ServerTls, TlsWatch
from dragoman.tokens.replay import MemoryReplayCache
from dragoman.tokens.verify import TokenVerifier

WIDGET_DIR = Path(str(resources.files("dragoman.demo") / "widget"))
"""The payment widget's pages, served by the demo's dragoman at /_dragoman/pages/."""
TOKEN_ISSUER = "dragoman-demo"  # noqa: S105 (an issuer name)
AUDIENCE = "payments-demo"

# Roles -> operations, granted on each demo mapping.
DEMO_GRANTS = (
    Grant(role="billing_admin", operations=("*",)),
    Grant(
        role="viewer",
        operations=(
            "customers:read",
            "payment_methods:list",
            "payment_methods:read",
            "billing_address:read",
        ),
    ),
)
DEMO_MAPPINGS = (("acct-1001", "cus_alice"), ("acct-2002", "cus_bob"))


@dataclass(frozen=True, slots=True)
class DemoPorts:
    proxy: int
    platform: int
    issuer: int
    console: int
    metrics: int = 0


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def demo_settings(
    *, proxy: str, platform: str, issuer: str, console: str, state_dir: Path
) -> dict[str, Any]:
    """Settings of the demo's dragoman, as the nested mapping a TOML file would hold."""
    return {
        "server": {"host": "127.0.0.1", "port": int(proxy.rsplit(":", 1)[1]), "workers": 1},
        "identity": {
            "oidc": [
                {
                    "name": "console",
                    "issuer": issuer,
                    "audiences": ["dragoman"],
                    "algorithms": ["RS256", "ES256"],
                    "principal_claim": "sub",
                    "account_claim": "cloud_account",
                    "roles_claim": "roles",
                }
            ]
        },
        "upstream": {"url": platform, "audience": AUDIENCE},
        "tokens": {"issuer": TOKEN_ISSUER, "ttl": "5m"},
        "keys": {"master_key_file": str(state_dir / "master.key")},
        "store": {"database_url": f"sqlite+aiosqlite:///{state_dir / 'dragoman.db'}"},
        "catalog": {"operations": catalog_settings()},
        "audit": {"sink": "file", "path": str(state_dir / "audit.jsonl")},
        # Off here: settings written by this function alone (tests that run `dragoman serve`)
        # take no fixed port. DemoStack turns them on, on a port it has bound.
        "metrics": {"enabled": False},
        # The widget is served by dragoman (same origin); the console may call dragoman from
        # its own pages too. Only the console may frame the widget.
        "browser": {
            "allowed_origins": [proxy, console],
            "frame_ancestors": [console],
            "pages_dir": str(WIDGET_DIR),
            "hsts_max_age": 0,
        },
    }


def write_toml(data: dict[str, Any], path: Path) -> None:
    """A small TOML writer for the demo's settings file (strings, numbers, lists, tables)."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    lines: list[str] = ["# Written by `dragoman demo`; every key is explained in docs/settings.md"]

    def table(prefix: str, items: dict[str, Any]) -> None:
        scalars = {k: v for k, v in items.items() if not isinstance(v, dict) and not _is_tables(v)}
        lines.append(f"\n[{prefix}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in scalars.items())
        for k, v in items.items():
            if isinstance(v, dict):
                table(f"{prefix}.{key(k)}", v)
            elif _is_tables(v):
                for entry in v:
                    lines.append(f"\n[[{prefix}.{key(k)}]]")
                    lines.extend(f"{key(ek)} = {value(ev)}" for ek, ev in entry.items())

    for name, section in data.items():
        table(name, section)
    path.write_text("\n".join(lines) + "\n", "utf-8")


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


class DemoStack:
    """The four demo servers, on sockets bound before anything starts."""

    def __init__(
        self,
        host: str,
        ports: DemoPorts,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock
        """The proxy's clock (tests move it to cross time limits without waiting)."""
        self.sockets = {
            name: _bind(host, getattr(ports, name))
            for name in ("proxy", "platform", "issuer", "console")
        }
        self.urls = {
            name: f"http://{host}:{sock.getsockname()[1]}" for name, sock in self.sockets.items()
        }
        self.metrics_socket = _bind(host, ports.metrics)
        self.metrics_url = f"http://{host}:{self.metrics_socket.getsockname()[1]}"
        """Base URL of the proxy's metrics listener (GET /metrics; ``[metrics]``)."""
        self.decision_socket = _bind(host, 0)
        self.decision_url = f"http://{host}:{self.decision_socket.getsockname()[1]}"
        """Base URL of the decision listener (``[decision]``, off unless enabled; https
        once started with ``decision.tls``)."""
        self.issuer = DevIssuer(issuer=self.urls["issuer"])
        self.platform = PaymentPlatform(self._platform_verifier())
        self.platform.seed()
        self.runners: list[web.AppRunner] = []
        self.served_tls: list[ServerTls] = []
        """The TLS of the listeners that serve it (``proxy``, ``decision``)."""
        self.tls_watches: list[TlsWatch] = []
        self.settings: Settings | None = None
        self.proxy: Proxy | None = None

    def _platform_verifier(self, ssl_context: ssl.SSLContext | None = None) -> TokenVerifier:
        return TokenVerifier(
            jwks_url=self.urls["proxy"] + "/.well-known/jwks.json",
            issuer=TOKEN_ISSUER,
            audience=AUDIENCE,
            origin=self.urls["platform"],
            replay_cache=MemoryReplayCache(),  # write tokens are usable once
            ssl_context=ssl_context,
        )

    def _serve_proxy_over_tls(self, tls: TlsSettings) -> None:
        """The proxy terminates TLS: its URL is https, and the platform fetches the proxy's
        JWKS over https, trusting the proxy's own certificate (pinned) for it."""
        self.urls["proxy"] = "https://" + self.urls["proxy"].removeprefix("http://")
        pinned = ssl.create_default_context(cafile=tls.cert_file)
        pinned.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.platform.verifier = self._platform_verifier(pinned)

    def prepare_state(self, overrides: dict[str, Any] | None = None) -> Settings:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for name in ("master.key", "csrf.key"):
            path = self.state_dir / name
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(new_master_key() + "\n")
        self.settings = self._write_and_load(overrides)
        tls = self.settings.server.tls
        if tls is not None and self.urls["proxy"].startswith("http://"):
            self._serve_proxy_over_tls(tls)
            self.settings = self._write_and_load(overrides)  # the origins are https now
        return self.settings

    def _write_and_load(self, overrides: dict[str, Any] | None) -> Settings:
        data = demo_settings(state_dir=self.state_dir, **self.urls)
        data["browser"]["csrf_key_file"] = str(self.state_dir / "csrf.key")
        host, port = self.metrics_socket.getsockname()[:2]
        data["metrics"] = {"enabled": True, "host": host, "port": port}
        host, port = self.decision_socket.getsockname()[:2]
        data["decision"] = {"enabled": False, "host": host, "port": port}
        write_toml(data, self.state_dir / "dragoman.toml")
        return load_settings(self.state_dir / "dragoman.toml", overrides=overrides)

    async def start(self) -> None:
        settings = self.settings or self.prepare_state()
        proxy_app = build_app(settings, clock=self.clock)
        self.proxy = proxy_app[PROXY_KEY]
        apps = {
            "issuer": self.issuer.app(),
            "platform": self.platform.app(),
            "console": console_app(self.issuer, self.urls["proxy"]),
            "proxy": proxy_app,
        }
        for name, app in apps.items():
            if name == "proxy":
                runner = proxy_runner(app, settings)
            else:
                runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            tls = settings.server.tls if name == "proxy" else None
            context = self._serve_tls(tls, name)
            await web.SockSite(runner, self.sockets[name], ssl_context=context).start()
            self.runners.append(runner)
        if settings.metrics.enabled:
            # The list fills as TLS listeners start; the collector reads it at scrape time.
            source = exposition(self.proxy.keys, tls=self.served_tls)
            runner = web.AppRunner(metrics_app(source), access_log=None)
            await runner.setup()
            await web.SockSite(runner, self.metrics_socket).start()
            self.runners.append(runner)
        else:
            self.metrics_socket.close()  # refused, rather than accepted and never answered
        if settings.decision.enabled:
            runner = decision_runner(self.proxy, settings.decision)
            await runner.setup()
            context = self._serve_tls(settings.decision.tls, "decision")
            if context is not None:
                self.decision_url = "https://" + self.decision_url.removeprefix("http://")
            await web.SockSite(runner, self.decision_socket, ssl_context=context).start()
            self.runners.append(runner)  # stop() cleans up in reverse: before the proxy
        else:
            self.decision_socket.close()
        await self.seed_mappings()

    def _serve_tls(self, tls: TlsSettings | None, listener: str) -> ssl.SSLContext | None:
        """The SSL context of a listener, its files watched like a worker's (``tls``)."""
        if tls is None:
            return None
        served = ServerTls(tls, listener=listener)
        self.served_tls.append(served)
        watch = TlsWatch(served)
        watch.start()
        self.tls_watches.append(watch)
        return served.context

    async def seed_mappings(self) -> None:
        assert self.proxy is not None
        for account, customer in DEMO_MAPPINGS:
            try:
                await self.proxy.store.add(
                    cloud_account=account,
                    payment_customer=customer,
                    created_by="dragoman-demo",
                    verification_method="demo-seed",
                    verification_evidence="seeded by `dragoman demo`",
                    grants=DEMO_GRANTS,
                )
            except MappingExists:
                mapping = await self.proxy.store.find_by_account(account)
                assert mapping is not None
                if mapping.status is MappingStatus.REVOKED:
                    continue  # revoked is final, even in the demo
                # A restarted demo refreshes its links instead of letting them go stale.
                from datetime import UTC, datetime

                await self.proxy.store.update(
                    mapping.id,
                    expected_version=mapping.version,
                    actor="dragoman-demo",
                    last_validated_at=datetime.now(UTC),
                    status="active",
                )

    async def stop(self) -> None:
        for watch in self.tls_watches:
            await watch.stop()
        self.tls_watches.clear()
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        for sock in (*self.sockets.values(), self.metrics_socket, self.decision_socket):
            sock.close()


def _instructions(urls: dict[str, str], state_dir: Path, metrics_url: str) -> str:
    token_cmd = (
        f"TOKEN=$(curl -s -X POST {urls['issuer']}/token -H 'Content-Type: application/json'"
        ' -d \'{"sub":"alice","cloud_account":"acct-1001","roles":["billing_admin"]}\''
        " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    return f"""
dragoman demo is running (Ctrl-C stops it).

  console page        {urls["console"]}/      sign in as alice, bob or mallory; the billing
                                                  widget in it is served by dragoman
  dragoman            {urls["proxy"]}          JWKS at /.well-known/jwks.json
  metrics             {metrics_url}/metrics  Prometheus text format (docs/metrics.md)
  payment platform    {urls["platform"]}          OpenAPI at /openapi.json
  identity issuer     {urls["issuer"]}          {DEV_WARNING}

Try it from a shell:
  {token_cmd}
  AUTH="Authorization: Bearer $TOKEN"
  curl -s -H "$AUTH" {urls["proxy"]}/_dragoman/whoami
  curl -s -H "$AUTH" {urls["proxy"]}/v1/customers/cus_alice/payment-methods
  curl -s -H "$AUTH" {urls["proxy"]}/v1/customers/cus_bob/payment-methods
      -> 403 customer_mismatch: alice's account is linked to cus_alice only
  curl -s -H "$AUTH" {urls["platform"]}/v1/customers/cus_alice/payment-methods
      -> 401: the platform accepts dragoman's scoped tokens only

State (settings, keys, SQLite, audit log) is in {state_dir}/; the audit trail is
{state_dir / "audit.jsonl"}. `dragoman demo --check` runs the scripted walk-through.
"""


async def _run_forever(stack: DemoStack) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stack.start()
        print(_instructions(stack.urls, stack.state_dir, stack.metrics_url), flush=True)
        await stop.wait()
    finally:
        await stack.stop()


def run_demo(*, host: str, ports: DemoPorts, state_dir: Path) -> int:
    configure_logging("WARNING")
    try:
        stack = DemoStack(host, ports, state_dir)
    except OSError as exc:
        print(f"cannot listen: {exc} (another demo running? pick ports with --proxy-port ...)")
        return 1
    stack.prepare_state()
    uvloop.run(_run_forever(stack))
    return 0


def run_check() -> int:
    """The scripted walk-through; 0 when every step behaved."""
    from dragoman.demo.check import walk_through

    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="dragoman-demo-") as tmp:
        stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), Path(tmp))
        stack.prepare_state()
        return uvloop.run(walk_through(stack))
