"""What every subcommand shares: the --config option, loading settings, running a coroutine."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from dragoman.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

config_option = click.option(
    "--config",
    "-c",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DRAGOMAN_CONFIG",
    help="Settings file (TOML); default: $DRAGOMAN_CONFIG.",
)


def load(config: Path | None) -> Settings:
    """The settings, or exit 2 listing every problem."""
    try:
        return load_settings(config)
    except SettingsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def store_unavailable(exc: Exception) -> NoReturn:
    click.echo(f"the state store is unavailable ({exc})", err=True)
    sys.exit(3)


@click.group()
@click.version_option(package_name="dragoman", prog_name="dragoman")
def main() -> None:
    """dragoman: a trust-translation proxy."""
