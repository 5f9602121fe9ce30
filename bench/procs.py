"""The benchmark's server processes: start, wait until they answer, stop.

Each service runs in its own session (process group), with its output in a log file, so
that stopping it reaches its worker processes too and a failure can show what it printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(Exception):
    """A service did not start, or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the service binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of ``GET url``, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Service:
    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ServiceError(
                f"{self.name} exited (status {code}); its output:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Poll ``ready_url`` until it answers 200; the seconds it took."""
        started = time.monotonic()
        while True:
            self.check_alive()
            if http_status(self.ready_url) == 200:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise ServiceError(
                    f"{self.name} not ready after {timeout:.0f}s ({self.ready_url});"
                    f" its output:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM to the service's process group, then SIGKILL after ``grace`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(5)
        # Workers of a multi-process service may outlive their supervisor by a moment.
        _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
