"""The servers under test: settings, seeded mappings, start and stop.

Every service runs on loopback in its own process group (see ``procs``):

- shared: the plain upstream (``upstream.py``) and the development issuer (``issuer.py``);
- per worker count W: the pass-through proxy, nginx, nginx + auth_request with its
  sidecar, and dragoman in the variants below, each also as a second instance behind
  nginx ``auth_request`` asking its decision listener (``[decision]``: the same settings
  plus ``decision.enabled`` on a port of its own; the nginx configuration is in
  ``nginx.py``).

dragoman's settings are the demo's embedded defaults (``dragoman.demo.runner.demo_settings``)
with everything in one directory per instance (settings, SQLite file, audit file, log), and:

- one rate-limit rule per account, far above the load (``1000000/s``): the limiter runs on
  every request but never refuses;
- the anomaly rules of the defaults (two alert rules, card testing that blocks) with
  thresholds no run reaches, so they count every write but never fire nor block;
- scheduled reconciliation off (it would call the upstream once per mapping), metrics off
  (as in the demo settings);
- the master key: the public benchmark key of ``mapping_lookup.py`` (benchmark data only),
  so that the scaling curves can reuse its prebuilt tables.

Variants: ``memory`` (SQLite store, sessions/limits/anomaly in memory; one worker only),
``sqlite-redis`` (SQLite store, sessions/limits/anomaly in Redis; what several workers need)
and ``pg-redis`` (store on PostgreSQL database ``dragoman_bench_run``, created fresh per
run, and sessions/limits/anomaly in Redis).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import callers as callers_mod
import nginx
from dragoman.demo.runner import demo_settings, write_toml
from procs import Service, ServiceError, free_port

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
REDIS_URL = os.environ.get("DRAGOMAN_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("DRAGOMAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "dragoman_bench_run"
# Public on purpose (as in mapping_lookup.py): benchmark data only.
BENCH_MASTER_KEY = b"dragoman-bench-master-key-32byte"

UPSTREAM, NGINX, NGINX_AUTH, PASSTHROUGH = (
    "upstream direct",
    "nginx",
    "nginx + auth_request",
    "pass-through",
)
PASSTHROUGH_SESSION = "pass-through (ClientSession)"
"""The pass-through with aiohttp's ClientSession as its upstream client (passthrough.py
--client client-session): dragoman's forwarder until 2026-12-03, and the first proxy a team
writes on aiohttp. For context; the goals read against PASSTHROUGH."""
DRAGOMAN_MEMORY = "dragoman (memory)"
DRAGOMAN_SQLITE_REDIS = "dragoman (SQLite + Redis)"
DRAGOMAN_PG_REDIS = "dragoman (PostgreSQL + Redis)"
DECISION_MEMORY = "nginx + dragoman decision API (memory)"
DECISION_SQLITE_REDIS = "nginx + dragoman decision API (SQLite + Redis)"
DECISION_PG_REDIS = "nginx + dragoman decision API (PostgreSQL + Redis)"
DECISION_OF = {
    DRAGOMAN_MEMORY: DECISION_MEMORY,
    DRAGOMAN_SQLITE_REDIS: DECISION_SQLITE_REDIS,
    DRAGOMAN_PG_REDIS: DECISION_PG_REDIS,
}
"""The decision-API row of each proxy-mode row (same settings and backends)."""
REFERENCES = (UPSTREAM, NGINX, PASSTHROUGH, NGINX_AUTH)


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """How the checked requests' forwarded tokens are verified (``scenario.check_once``):
    what the upstream received, read back from it, verified with dragoman's
    ``TokenVerifier`` against this JWKS for the upstream's origin."""

    jwks_url: str
    upstream: str


@dataclass
class Target:
    """Something the load generator is pointed at."""

    label: str
    workers: int
    url: str
    services: list[Service]
    """The processes whose CPU and memory count for this target (nginx + sidecar for the
    auth_request reference, nginx + dragoman for the decision API)."""
    audit_path: Path | None = None
    token_check: TokenCheck | None = None
    """dragoman's rows: verify the tokens the upstream got for the checked requests."""

    @property
    def key(self) -> str:
        return f"{self.label} x{self.workers}"

    def pgids(self) -> set[int]:
        return {s.process.pid for s in self.services if s.process is not None}


@dataclass
class Stack:
    state: Path
    base: list[Service]
    """The upstream and the issuer: started first (tokens and JWKS come from the issuer)."""
    services: list[Service] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    callers_file: Path | None = None
    notes: list[str] = field(default_factory=list)


def _bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} not found beside {sys.executable} or on PATH")
    return found


def _script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / name), "--host", HOST, *args]


def _url(port: int) -> str:
    return f"http://{HOST}:{port}"


def bench_master_key_file(directory: Path) -> Path:
    path = directory / "master.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.urlsafe_b64encode(BENCH_MASTER_KEY).decode().rstrip("=") + "\n")
    return path


def dragoman_settings(
    directory: Path,
    *,
    port: int,
    upstream: str,
    issuer: str,
    workers: int,
    variant: str = "memory",
    database_url: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a complete settings file for one dragoman instance into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    url = _url(port)
    data = demo_settings(
        proxy=url, platform=upstream, issuer=issuer, console=url, state_dir=directory
    )
    data["server"]["workers"] = workers
    data["keys"]["master_key_file"] = str(bench_master_key_file(directory.parent))
    data["limits"] = {
        "rules": [{"name": "bench", "per": "account", "rate": "1000000/s", "burst": 1_000_000}]
    }
    never = 1_000_000_000
    data["anomaly"] = {
        "rules": {
            "changes_burst": {"threshold": never},
            "changes_above_baseline": {"kind": "baseline", "min_count": never},
            "card_testing": {"kind": "card_testing", "action": "block", "pairs": never},
        }
    }
    data["reconcile"] = {"schedule": False}
    if database_url is not None:
        data["store"]["database_url"] = database_url
    if variant != "memory":
        key = directory / "csrf.key"
        key.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))
        data["browser"] |= {
            "session_backend": "redis",
            "session_redis_url": REDIS_URL,
            "csrf_key_file": str(key),
        }
        data["limits"] |= {"backend": "redis", "redis_url": REDIS_URL}
        data["anomaly"] |= {"backend": "redis", "redis_url": REDIS_URL}
    for table, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(data.get(table), dict):
            data[table] = {**data[table], **values}
        else:
            data[table] = values
    path = directory / "dragoman.toml"
    write_toml(data, path)
    return path


def dragoman_service(name: str, config: Path, port: int) -> Service:
    """``port``: where readiness is polled (the proxy's, or the decision listener's, which
    each worker starts after its proxy)."""
    argv = [_bin("dragoman"), "serve", "--config", str(config), "--log-level", "WARNING"]
    return Service(name, argv, _url(port) + "/readyz", config.parent / "dragoman.log")


# -- reachability of the shared backends --------------------------------------------------------


def redis_reachable() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def fresh_postgres_database() -> str | None:
    """Drop and create ``dragoman_bench_run``; its SQLAlchemy URL, or None if unreachable."""
    import asyncio

    async def go() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            await conn.close()

    try:
        asyncio.run(go())
    except Exception as exc:  # any failure means: no PostgreSQL rows
        print(f"  PostgreSQL not usable ({type(exc).__name__}: {exc}); its rows are skipped")
        return None
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{PG_DATABASE}"


BACKENDS = ("memory", "sqlite-redis", "pg-redis")
"""The state backends of ``make bench``'s dragoman rows, as the tools' ``--backends`` names
them."""
LABEL_OF_BACKENDS = {
    "memory": DRAGOMAN_MEMORY,
    "sqlite-redis": DRAGOMAN_SQLITE_REDIS,
    "pg-redis": DRAGOMAN_PG_REDIS,
}
"""The row label of dragoman on each of :data:`BACKENDS`."""


def add_mix_arguments(parser: argparse.ArgumentParser, *, seconds: float) -> None:
    """The options of the tools that load one dragoman worker with the caller mix."""
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--writes", type=float, default=20.0, help="Percent of POST writes.")
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--backends",
        choices=BACKENDS,
        default="memory",
        help="The state backends, as in make bench's rows (Redis, PostgreSQL: this machine's).",
    )


def add_pairs_arguments(parser: argparse.ArgumentParser, *, pairs: int) -> None:
    """The options of the tools that measure two targets in alternated pairs
    (``scenario.alternated``): the caller mix's, the number of pairs and the warm-up."""
    parser.add_argument("--pairs", type=_at_least_one, default=pairs)
    add_mix_arguments(parser, seconds=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def backends_database(backends: str) -> str | None:
    """For one of the rows' backends (``memory``, ``sqlite-redis``, ``pg-redis``): check
    that what it needs answers, and return a fresh PostgreSQL database's URL for
    ``pg-redis`` (None otherwise). Exits with the reason when something is missing."""
    database = None
    if backends == "pg-redis":
        database = fresh_postgres_database()
        if database is None:
            raise SystemExit("PostgreSQL is not reachable")
    if backends != "memory" and not redis_reachable():
        raise SystemExit("Redis is not reachable")
    return database


# -- the plan -----------------------------------------------------------------------------------


def plan_base(state: Path, issuers: int = 1, keys: int = 2) -> tuple[Stack, dict[str, str]]:
    ports = {name: free_port(HOST) for name in ("upstream", "issuer")}
    urls = {name: _url(port) for name, port in ports.items()}
    upstream = Service(
        "upstream",
        _script("upstream.py", "--port", str(ports["upstream"])),
        urls["upstream"] + "/livez",
        state / "upstream.log",
    )
    issuer = Service(
        "issuer",
        _script(
            "issuer.py",
            *("--port", str(ports["issuer"])),
            *("--issuers", str(issuers), "--keys", str(keys)),
        ),
        urls["issuer"] + "/.well-known/openid-configuration",
        state / "issuer.log",
    )
    return Stack(state=state, base=[upstream, issuer]), urls


def add_references(stack: Stack, urls: dict[str, str], workers: int, with_upstream: bool) -> None:
    """Pass-through, nginx and nginx + auth_request (with its sidecar) for ``workers``."""
    state = stack.state
    upstream_port = int(urls["upstream"].rsplit(":", 1)[1])
    if with_upstream:
        stack.targets.append(Target(UPSTREAM, 1, urls["upstream"], [stack.base[0]]))
    if nginx.find() is not None:
        port = free_port(HOST)
        directory = state / f"nginx-{workers}"
        argv = nginx.command(directory, nginx.config(directory, port, upstream_port, workers, None))
        service = Service(
            f"nginx-{workers}", argv, _url(port) + "/livez", state / f"nginx-{workers}.log"
        )
        stack.services.append(service)
        stack.targets.append(Target(NGINX, workers, _url(port), [service]))
    add_passthrough(stack, urls, workers)
    if workers == 1:
        add_passthrough(stack, urls, workers, client="client-session")
    if nginx.find() is not None:
        sidecar_port, port = free_port(HOST), free_port(HOST)
        sidecar = Service(
            f"sidecar-{workers}",
            _script(
                "sidecar.py",
                *("--port", str(sidecar_port), "--issuer", urls["issuer"]),
                *("--mappings", str(state / "sidecar-mappings.json")),
                *("--audit", str(state / f"sidecar-{workers}-audit.jsonl")),
                *("--workers", str(workers)),
            ),
            _url(sidecar_port) + "/livez",
            state / f"sidecar-{workers}.log",
        )
        directory = state / f"nginx-auth-{workers}"
        conf = nginx.config(directory, port, upstream_port, workers, sidecar_port)
        front = Service(
            f"nginx-auth-{workers}",
            nginx.command(directory, conf),
            _url(port) + "/livez",
            state / f"nginx-auth-{workers}.log",
        )
        stack.services += [sidecar, front]
        stack.targets.append(Target(NGINX_AUTH, workers, _url(port), [front, sidecar]))


def add_passthrough(
    stack: Stack, urls: dict[str, str], workers: int, client: str = "upstream-pool"
) -> None:
    """The plain pass-through proxy on dragoman's stack (``passthrough.py``), with
    dragoman's upstream client, or with aiohttp's ClientSession (``client-session``)."""
    port = free_port(HOST)
    name = f"passthrough-{workers}" if client == "upstream-pool" else f"passthrough-{client}"
    passthrough = Service(
        name,
        _script(
            "passthrough.py",
            *("--port", str(port), "--upstream", urls["upstream"]),
            *("--workers", str(workers), "--client", client),
        ),
        _url(port) + "/livez",
        stack.state / f"{name}.log",
    )
    stack.services.append(passthrough)
    label = PASSTHROUGH if client == "upstream-pool" else PASSTHROUGH_SESSION
    stack.targets.append(Target(label, workers, _url(port), [passthrough]))


def add_dragoman(
    stack: Stack,
    urls: dict[str, str],
    label: str,
    workers: int,
    variant: str,
    database_url: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    decision: bool = False,
    instance: str | None = None,
) -> Path:
    """One dragoman instance; its settings file (to seed its store before it starts).

    ``decision``: the instance also serves its decision listener, and the target is nginx
    (``workers`` workers) asking it with ``auth_request``, forwarding to the upstream; the
    label is then the decision row's (``DECISION_OF[label]``). ``instance``: the name of
    its directory and service, when two instances share variant and worker count.
    """
    port = free_port(HOST)
    name = instance or f"dragoman-{variant}-{workers}" + ("-decision" if decision else "")
    overrides = dict(overrides or {})
    decision_port = free_port(HOST) if decision else None
    if decision_port is not None:
        overrides["decision"] = {"enabled": True, "host": HOST, "port": decision_port}
    config = dragoman_settings(
        stack.state / name,
        port=port,
        upstream=urls["upstream"],
        issuer=urls["issuer"],
        workers=workers,
        variant=variant,
        database_url=database_url,
        overrides=overrides,
    )
    check = TokenCheck(_url(port) + "/.well-known/jwks.json", urls["upstream"])
    audit = config.parent / "audit.jsonl"
    if decision_port is None:
        service = dragoman_service(name, config, port)
        stack.services.append(service)
        stack.targets.append(
            Target(label, workers, _url(port), [service], audit_path=audit, token_check=check)
        )
        return config
    service = dragoman_service(name, config, decision_port)
    front_port = free_port(HOST)
    directory = stack.state / f"nginx-{name}"
    upstream_port = int(urls["upstream"].rsplit(":", 1)[1])
    conf = nginx.config(
        directory, front_port, upstream_port, workers, None, decision_port=decision_port
    )
    front = Service(
        f"nginx-{name}",
        nginx.command(directory, conf),
        _url(front_port) + "/livez",
        stack.state / f"nginx-{name}.log",
    )
    stack.services += [service, front]
    stack.targets.append(
        Target(
            DECISION_OF[label],
            workers,
            _url(front_port),
            [front, service],
            audit_path=audit,
            token_check=check,
        )
    )
    return config


def write_callers(stack: Stack, issuer: str, count: int) -> list[callers_mod.Caller]:
    """Mint ``count`` callers' tokens; the callers file and the sidecar's mapping table."""
    found = callers_mod.mint(issuer, list(range(count)))
    stack.callers_file = callers_mod.write_callers_file(stack.state / "callers.txt", found)
    callers_mod.write_sidecar_mappings(stack.state / "sidecar-mappings.json", found)
    return found


@contextmanager
def running(services: list[Service]) -> Iterator[None]:
    """Start ``services``, wait until each answers, and stop them all on the way out."""
    try:
        for service in services:
            service.start()
        for service in services:
            took = service.wait_ready(timeout=60)
            print(f"  {service.name:<24} ready in {took:4.1f}s  {service.ready_url}", flush=True)
        yield
    finally:
        for service in reversed(services):
            service.stop()
