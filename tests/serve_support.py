"""`dragoman serve` as a real process for tests that need its supervisor and workers: a free
port, the settings of a proxy that can serve on its own, and the process started and stopped.

The settings are the demo's with state kept in memory, which cannot span several workers:
API callers only (no browser sessions, no CSRF), no per-account limits or anomaly counts
(the Redis backends are tested elsewhere). The issuer and the platform are not running: a
test that needs them starts its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dragoman.demo.runner import demo_settings
from dragoman.keys.sealing import new_master_key

DRAGOMAN = str(Path(sys.executable).with_name("dragoman"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def standalone_settings(
    state_dir: Path, proxy_port: int, *, workers: int = 2, scheme: str = "http"
) -> dict[str, Any]:
    """Settings of a `dragoman serve` on ``proxy_port`` with ``workers`` workers, its state
    and master key in ``state_dir``."""
    (state_dir / "master.key").write_text(new_master_key())
    settings: dict[str, Any] = demo_settings(
        proxy=f"{scheme}://127.0.0.1:{proxy_port}",
        platform="http://127.0.0.1:1",
        issuer="http://127.0.0.1:1",
        console="http://127.0.0.1:1",
        state_dir=state_dir,
    )
    settings["server"]["workers"] = workers
    settings["browser"]["csrf"] = "off"
    settings["limits"] = {"enabled": False}
    settings["anomaly"] = {"enabled": False}
    return settings


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an orchestrator stops it; SIGKILL to the whole group past 30 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def serving(
    config: Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stdout_in_log: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """`dragoman serve --config CONFIG ARGS...`, its log (stderr, the "listening on" line
    among it) in ``log``, with its stdout unless ``stdout_in_log`` is False; stopped
    (:func:`stop`) when the block ends."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [DRAGOMAN, "serve", "--config", str(config), *args],
            stdout=sink if stdout_in_log else subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)
