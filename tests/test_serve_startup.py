"""`dragoman serve` when a worker cannot run: the supervisor says why once, before it starts
any worker, or gives up on workers that keep dying as they start, rather than restart them
forever. And what goes to its stdout, which may carry the audit records."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
from pathlib import Path

import aiohttp
import pytest

from dragoman.audit.verify import verify
from dragoman.demo.runner import write_toml
from dragoman.server import RestartPolicy, unopenable_audit
from dragoman.settings import load_settings
from serve_support import DRAGOMAN, free_port, standalone_settings, stop

TORN = b'{"chain":"abc","seq":0,"prev":"' + b"0" * 64 + b'"'
PM = "/v1/customers/cus_alice/payment-methods"


def config(tmp_path: Path, port: int, *, workers: int, sink: str = "file") -> Path:
    settings = standalone_settings(tmp_path, port, workers=workers)
    settings["audit"]["sink"] = sink
    path = tmp_path / "dragoman.toml"
    write_toml(settings, path)
    return path


def serve(path: Path) -> subprocess.CompletedProcess[str]:
    """`dragoman serve` to its end (60 s at most: a safety net, not a time limit)."""
    return subprocess.run(
        [DRAGOMAN, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_with_a_torn_audit_file_exits_2_naming_the_file_before_listening(
    tmp_path: Path, workers: int
) -> None:
    path = config(tmp_path, free_port(), workers=workers)
    audit = load_settings(path).audit.path
    audit.parent.mkdir(parents=True, exist_ok=True)
    audit.write_bytes(TORN)
    result = serve(path)
    assert result.returncode == 2
    assert f"the audit file {audit} cannot be opened" in result.stderr
    assert "incomplete record" in result.stderr
    assert "listening" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert audit.read_bytes() == TORN


def test_the_startup_audit_check_writes_nothing(tmp_path: Path) -> None:
    path = config(tmp_path, free_port(), workers=2)
    settings = load_settings(path)
    settings.audit.path.parent.mkdir(parents=True, exist_ok=True)
    line = b'{"chain":"abc","event":"request","prev":"' + b"0" * 64 + b'","seq":0}\n'
    settings.audit.path.write_bytes(line)
    assert unopenable_audit(settings) is None
    assert settings.audit.path.read_bytes() == line


@pytest.mark.slow
def test_serve_whose_workers_die_at_start_stops_after_bounded_restarts(tmp_path: Path) -> None:
    port = free_port()
    path = config(tmp_path, port, workers=2)
    with socket.socket() as held:  # another program holds the port (no SO_REUSEPORT)
        held.bind(("127.0.0.1", port))
        held.listen()
        result = serve(path)
    assert result.returncode == 1
    assert "restarting" in result.stderr
    assert "5 workers in a row died within 10 s of their start" in result.stderr


def test_a_worker_that_keeps_dying_at_start_is_not_restarted_past_the_limit() -> None:
    policy = RestartPolicy(2, limit=3, fast_death=10.0)
    assert policy.restart(0, 1.0)
    assert policy.restart(1, 1.0)  # slots count apart
    assert policy.restart(0, 2.0)
    assert not policy.restart(0, 0.5)


def test_a_worker_that_dies_after_running_long_is_restarted_and_its_count_cleared() -> None:
    policy = RestartPolicy(1, limit=3, fast_death=10.0)
    assert policy.restart(0, 1.0)
    assert policy.restart(0, 1.0)
    assert policy.restart(0, 3600.0)
    assert policy.restart(0, 1.0)
    assert policy.restart(0, 1.0)
    assert not policy.restart(0, 1.0)


@pytest.mark.slow
async def test_serve_prints_its_banner_on_stderr_and_only_audit_lines_on_stdout(
    tmp_path: Path,
) -> None:
    port = free_port()
    path = config(tmp_path, port, workers=2, sink="stdout")
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [DRAGOMAN, "serve", "--config", str(path)],
            stdout=subprocess.PIPE,  # a pipe, as under a container runtime
            stderr=err,
            start_new_session=True,
        )
    captured = tmp_path / "stdout.jsonl"
    out = process.stdout
    assert out is not None

    def read() -> None:
        with out:
            captured.write_bytes(out.read())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

            async def refused(n: int) -> None:  # no token: refused, and recorded
                headers = {"Origin": "https://" + "o" * 6000 + ".example"}
                async with http.get(f"{url}{PM}?n={n}", headers=headers) as response:
                    await response.read()

            for _ in range(5):
                await asyncio.gather(*(refused(n) for n in range(40)))
    finally:
        stop(process)
        reader.join()
    assert process.returncode == 0
    assert "dragoman listening on" in log.read_text()
    lines = captured.read_bytes().splitlines()
    assert len(lines) >= 200
    chains = {json.loads(line)["chain"] for line in lines}
    for chain in chains:
        report = verify([captured], chain=chain)
        assert report.intact, report.summary()
