"""The demo: `dragoman demo --check` passes, and `dragoman demo` serves and stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.slow
DRAGOMAN = str(Path(sys.executable).with_name("dragoman"))


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_the_scripted_walk_through_passes() -> None:
    result = subprocess.run(
        [DRAGOMAN, "demo", "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert "every step behaved" in result.stdout


async def wait_until_up(url: str) -> None:
    # A readiness wait, not a speed check: a loaded CI machine starts the demo slowly.
    async with aiohttp.ClientSession() as http:
        for _ in range(1200):
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never came up")


async def run_demo_once(state: Path) -> str:
    proxy, platform, issuer, console = free_ports(4)
    command = [DRAGOMAN, "demo", "--state-dir", str(state), "--proxy-port", str(proxy)]
    command += ["--platform-port", str(platform), "--issuer-port", str(issuer)]
    command += ["--console-port", str(console)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await wait_until_up(f"http://127.0.0.1:{proxy}/readyz")
        await wait_until_up(f"http://127.0.0.1:{console}/")
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{console}/session", json={"user": "alice"}
            ) as response:
                token = (await response.json())["access_token"]
            async with http.get(
                f"http://127.0.0.1:{proxy}/_dragoman/whoami",
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == 200
                assert (await response.json())["customer"] == "cus_alice"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_the_demo_serves_the_console_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    output = await run_demo_once(tmp_path / "demo")
    assert "dragoman demo is running" in output
    assert "DEV ONLY" in output


async def test_the_demo_restarts_on_its_own_state(tmp_path: Path) -> None:
    await run_demo_once(tmp_path / "demo")
    await run_demo_once(tmp_path / "demo")
    assert (tmp_path / "demo" / "audit.jsonl").read_text().count('"event":"whoami"') == 2
