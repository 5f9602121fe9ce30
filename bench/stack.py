"""The servers under test: settings, the seeded mapping, start and stop, alice's token.

Four services on loopback, each its own process group (see ``procs``): the plain upstream,
the pass-through proxy, the development issuer and ``dragoman serve``. dragoman's settings
are the demo's embedded defaults (``dragoman.demo.runner.demo_settings``) with everything
inside one temporary directory: SQLite database, key file, generated master key, audit file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dragoman.demo.runner import demo_settings, write_toml
from dragoman.keys.sealing import new_master_key
from procs import Service, ServiceError, free_port

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
ACCOUNT, CUSTOMER = "acct-1001", "cus_alice"


@dataclass
class Stack:
    state: Path
    """The temporary directory: settings, database, keys, audit file, each service's log."""
    urls: dict[str, str]
    """Base URL by service name: upstream, passthrough, issuer, dragoman."""
    services: list[Service]
    audit_path: Path


def _bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} not found beside {sys.executable} or on PATH")
    return found


REDIS_URL = os.environ.get("DRAGOMAN_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def write_dragoman_settings(state: Path, urls: dict[str, str], workers: int) -> Path:
    """A complete settings file with the demo's embedded defaults, all inside ``state``."""
    master = state / "master.key"
    fd = os.open(master, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(new_master_key() + "\n")
    data = demo_settings(
        proxy=urls["dragoman"],
        platform=urls["upstream"],
        issuer=urls["issuer"],
        console=urls["dragoman"],  # an allowed browser origin is required; wrk sends none
        state_dir=state,
    )
    data["server"]["workers"] = workers
    # The per-account limits run on every request (their cost is measured) but never refuse:
    # the load is one caller at a rate far above any real limit.
    data["limits"] = {
        "rules": [{"name": "bench", "per": "account", "rate": "1000000/s", "burst": 1_000_000}]
    }
    if workers > 1:
        # State in memory cannot span workers (settings refuse it); wrk is an API caller
        # (no browser session), and limits and anomaly counts move to the local Redis.
        data["browser"]["csrf"] = "off"
        data["limits"] |= {"backend": "redis", "redis_url": REDIS_URL}
        data["anomaly"] = {"backend": "redis", "redis_url": REDIS_URL}
    path = state / "dragoman.toml"
    write_toml(data, path)
    return path


def seed_mapping(config: Path) -> None:
    """acct-1001 -> cus_alice, role billing_admin may do everything, with the CLI."""
    argv = [_bin("dragoman"), "mappings", "add", "--config", str(config)]
    argv += ["--account", ACCOUNT, "--customer", CUSTOMER, "--by", "bench"]
    argv += ["--grant", "role:billing_admin=*"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise ServiceError(f"`dragoman mappings add` failed:\n{done.stdout}{done.stderr}")


def plan_stack(state: Path, workers: int) -> Stack:
    """Pick ports, write dragoman's settings, seed its mapping; nothing runs yet."""
    ports = {name: free_port(HOST) for name in ("upstream", "passthrough", "issuer", "dragoman")}
    urls = {name: f"http://{HOST}:{port}" for name, port in ports.items()}
    config = write_dragoman_settings(state, urls, workers)
    seed_mapping(config)
    python = sys.executable

    def service(name: str, argv: list[str], ready: str) -> Service:
        return Service(name, argv, urls[name] + ready, state / f"{name}.log")

    def script(name: str, *args: str) -> list[str]:
        return [python, str(HERE / name), "--host", HOST, *args]

    return Stack(
        state=state,
        urls=urls,
        services=[
            service("upstream", script("upstream.py", "--port", str(ports["upstream"])), "/livez"),
            service(
                "passthrough",
                script(
                    "passthrough.py",
                    *("--port", str(ports["passthrough"])),
                    *("--upstream", urls["upstream"]),
                    *("--workers", str(workers)),
                ),
                "/livez",  # forwarded: ready once the proxy and its upstream both answer
            ),
            service(
                "issuer",
                script("issuer.py", "--port", str(ports["issuer"])),
                "/.well-known/openid-configuration",
            ),
            service(
                "dragoman",
                [_bin("dragoman"), "serve", "--config", str(config), "--log-level", "WARNING"],
                "/readyz",
            ),
        ],
        audit_path=state / "audit.jsonl",
    )


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """Start every service, wait until each answers, and stop them all on the way out."""
    try:
        for service in stack.services:
            service.start()
        for service in stack.services:
            took = service.wait_ready()
            print(f"  {service.name:<12} ready in {took:4.1f}s  {service.ready_url}", flush=True)
        yield stack
    finally:
        for service in reversed(stack.services):
            service.stop()


def fetch_token(issuer: str) -> str:
    """Alice's token (billing_admin) from the issuer; 3600 s is the most it hands out."""
    claims = {"sub": "alice", "cloud_account": ACCOUNT, "roles": ["billing_admin"], "ttl": 3600}
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        issuer + "/token",
        data=json.dumps(claims).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
        token: str = json.load(response)["access_token"]
        return token
