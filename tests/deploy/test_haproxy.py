"""deploy/haproxy/haproxy.cfg: HAProxy itself accepts it (`haproxy -c`), and it keeps the
promises docs/operations.md makes: health checks on /readyz, retries only where the request
never reached an instance (or is a read), redispatch, safe connection reuse, and a server
timeout longer than dragoman's own upstream timeout.

`make test` installs Debian's haproxy when it is missing (running as root); without it the
`haproxy -c` test skips locally and fails under CI=true."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from dragoman.settings import parse_duration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = DEPLOY / "haproxy" / "haproxy.cfg"
HAPROXY = os.environ.get("DRAGOMAN_TEST_HAPROXY", "haproxy")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _sections() -> dict[str, list[str]]:
    """Section header ("backend be_dragoman") -> its directives, comments dropped."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in CONFIG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


def _backend() -> list[str]:
    return _sections()["backend be_dragoman"]


def _directive(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line == name or line.startswith(name + " ")]


def test_haproxy_accepts_the_example() -> None:
    binary = shutil.which(HAPROXY) or shutil.which(HAPROXY, path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        message = "haproxy is missing (Debian: apt-get install haproxy; `make test` does it)"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    result = subprocess.run(
        [binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    # The example's host names do not resolve here; any other warning is a finding.
    warnings = [line for line in output.splitlines() if "[WARNING]" in line]
    unexpected = [w for w in warnings if "could not resolve address" not in w]
    assert not unexpected, "\n".join(unexpected)


def test_three_instances_checked_on_readyz_every_second() -> None:
    backend = _backend()
    assert _directive(backend, "option httpchk") == ["option httpchk GET /readyz"]
    assert _directive(backend, "http-check expect") == ["http-check expect status 200"]
    servers = _directive(backend, "server")
    assert len(servers) == 3
    (default,) = _directive(backend, "default-server")
    for setting in ("check", "inter 1s", "fall 2", "rise 2"):
        assert re.search(rf"(^| ){setting}( |$)", default), setting
    for server in servers:
        assert re.search(r":8080$", server.split()[2])


def test_writes_are_retried_only_when_they_never_reached_an_instance() -> None:
    backend = _backend()
    (retry_on,) = _directive(backend, "retry-on")
    # conn-failure: the request was never sent. empty-response: sent, nothing came back,
    # so it may have acted: only reads may be retried on it (below).
    assert set(retry_on.split()[1:]) == {"conn-failure", "empty-response"}
    assert _directive(backend, "http-request disable-l7-retry") == [
        "http-request disable-l7-retry unless METH_GET || METH_OPTIONS"
    ]
    assert _directive(backend, "option redispatch")
    (retries,) = _directive(backend, "retries")
    assert 1 <= int(retries.split()[1]) <= 3
    assert _directive(backend, "http-reuse") == ["http-reuse safe"]


def test_haproxy_waits_longer_than_dragoman_waits_for_the_upstream() -> None:
    """dragoman answers a slow upstream with its own 504 (problem+json, audit id); HAProxy
    must not cut the request first."""
    configmap = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    settings = tomllib.loads(configmap["data"]["dragoman.toml"])
    read_timeout = parse_duration(settings["upstream"].get("read_timeout", 30))
    (timeout,) = _directive(_sections()["defaults"], "timeout server")
    server_timeout = parse_duration(timeout.split()[2])
    assert isinstance(read_timeout, float) and isinstance(server_timeout, float)
    assert server_timeout > read_timeout
