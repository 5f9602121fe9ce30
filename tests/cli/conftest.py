"""Fixtures of the CLI tests: the real `dragoman` executable, run as a subprocess, with a
settings file in tmp_path whose mapping store is SQLite or PostgreSQL (``database_url``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dragoman.demo.runner import demo_settings, write_toml

DRAGOMAN = Path(sys.executable).with_name("dragoman")

Dragoman = Callable[..., subprocess.CompletedProcess[str]]
WriteSettings = Callable[..., Path]


def _clean_env() -> dict[str, str]:
    """The test's environment without DRAGOMAN_* variables, which would override the file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}


@pytest.fixture
def dragoman(tmp_path: Path) -> Dragoman:
    """Run ``dragoman ARGS...``; returns the completed process (text stdout and stderr)."""

    def run(
        *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DRAGOMAN), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**_clean_env(), **(env or {})},
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def master_key() -> str:
    """Output of `dragoman keys new-master-key` (made once per session)."""
    result = subprocess.run(
        [str(DRAGOMAN), "keys", "new-master-key"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def master_key_file(tmp_path: Path, master_key: str) -> Path:
    path = tmp_path / "master.key"
    path.write_text(master_key, "utf-8")
    path.chmod(0o600)
    return path


def valid_settings(tmp_path: Path, master_key_file: Path, database_url: str) -> dict[str, Any]:
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )
    data["keys"]["master_key_file"] = str(master_key_file)
    data["store"]["database_url"] = database_url
    return data


@pytest.fixture
def write_settings(tmp_path: Path, master_key_file: Path) -> WriteSettings:
    """Write a settings file: the demo's settings with a mapping store at ``database_url``,
    changed by ``edit(data)`` if given; returns its path."""

    def write(
        database_url: str = f"sqlite+aiosqlite:///{tmp_path / 'mappings.db'}",
        edit: Callable[[dict[str, Any]], None] | None = None,
        name: str = "dragoman.toml",
    ) -> Path:
        data = valid_settings(tmp_path, master_key_file, database_url)
        if edit is not None:
            edit(data)
        path = tmp_path / name
        write_toml(data, path)
        return path

    return write


@pytest.fixture
def config(write_settings: WriteSettings, database_url: str) -> Path:
    """A valid settings file whose mapping store is the test's database (both kinds)."""
    return write_settings(database_url)


@pytest.fixture(params=["postgresql", "sqlite"])
def unreachable_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A mapping store that cannot be reached: a PostgreSQL URL on a loopback port that
    refuses connections (bound, never listening), or a SQLite file in a missing directory."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'no-such-directory' / 'mappings.db'}"
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{sock.getsockname()[1]}/dragoman"
