"""The state store's schema."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from dragoman.cli.common import T, config_option, load, main, run, store_unavailable
from dragoman.settings import Settings


@main.group()
def db() -> None:
    """The state store's schema."""


def _on_engine(config: Path | None, action: Callable[[Settings, Any], Awaitable[T]]) -> T:
    """Run ``action(settings, engine)`` on the configured database; exit 3 if unreachable."""
    from dragoman.mapping.store import StoreUnavailable, make_engine

    settings = load(config)

    async def go() -> T:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            return await action(settings, engine)
        finally:
            await engine.dispose()

    try:
        return run(go)
    except StoreUnavailable as exc:
        store_unavailable(exc)


@db.command("upgrade")
@config_option
def db_upgrade(config: Path | None) -> None:
    """Apply migrations (and seal mappings written before encryption at rest)."""
    from dragoman.mapping.maintenance import upgrade_store
    from dragoman.state import migrate

    async def upgrade(settings: Settings, engine: Any) -> str | None:
        await upgrade_store(settings, engine)
        return await migrate.current_revision(engine)

    click.echo(f"at revision {_on_engine(config, upgrade)}")


@db.command("current")
@config_option
def db_current(config: Path | None) -> None:
    """Print the schema revision."""
    from dragoman.state import migrate

    async def current(_: Settings, engine: Any) -> str | None:
        return await migrate.current_revision(engine)

    click.echo(_on_engine(config, current) or "(empty)")
