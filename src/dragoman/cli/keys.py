"""`dragoman keys`: the signing key set."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from dragoman.cli.common import T, config_option, load, main, run, store_unavailable


@main.group()
def keys() -> None:
    """Signing keys."""


@keys.command("new-master-key")
def keys_new_master_key() -> None:
    """Print a fresh random master key (base64url, 32 bytes)."""
    from dragoman.keys.sealing import new_master_key

    click.echo(new_master_key())


def _on_ring(config: Path | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(ring)`` on the configured key set (exit 3 if the store is unreachable)."""
    from dragoman.keys.factory import KeyConfigError, open_key_ring
    from dragoman.keys.provider import KeyUnavailableError
    from dragoman.state import migrate
    from dragoman.state.sql import StoreUnavailable, make_engine

    settings = load(config)

    async def go() -> T:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            if settings.store.auto_migrate:
                await migrate.upgrade(engine)
            ring = open_key_ring(settings.keys, settings.store, engine)
            try:
                await ring.refresh()
                # The timeline is read, and new times written, by this host's clock: one
                # off the store's past keys.max_clock_skew makes rotate and retire refuse.
                await ring.measure_clock(log_changes=False)
                return await action(ring)
            finally:
                await ring.close()
        finally:
            await engine.dispose()

    try:
        return run(go)
    except StoreUnavailable as exc:
        store_unavailable(exc)
    except (KeyConfigError, KeyUnavailableError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _describe(ring: Any, record: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    def when(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()

    return {
        "kid": record.kid,
        "generation": record.generation,
        "state": ring.timeline.state(record, ring.now()).value,
        "provider": record.provider,
        "ref": record.ref,
        "activates_at": when(record.activates_at),
        "deactivates_at": when(record.deactivates_at),
        "verify_until": when(ring.timeline.verify_until(record)),
        "retired_at": when(record.retired_at),
        "created_by": record.created_by,
    }


@keys.command("list")
@config_option
@click.option("--all", "everything", is_flag=True, help="Include keys retired long ago.")
def keys_list(config: Path | None, everything: bool) -> None:
    """List the key set, one JSON object per key, oldest first, with its state now."""

    async def action(ring: Any) -> list[dict[str, Any]]:
        skewed = ring.skew_reason()
        if skewed is not None:
            click.echo(f"warning: {skewed}; the states below are by this host's clock", err=True)
        records = await ring.store.load() if everything else ring.keys
        return [_describe(ring, r) for r in records]

    for line in _on_ring(config, action):
        click.echo(json.dumps(line))


NEW_MASTER_KEY_HELP = (
    "Local provider, master key replacement (docs/keys.md): if no key can sign now or next,"
    " seal the new key under this master key even though it opens none of the retired keys."
)


def _allow_new_master_key(ring: Any) -> None:
    """``--new-master-key``: let the local provider seal the next key under the settings'
    master key once no key can sign (it still refuses while one can)."""
    if ring.provider.name != "local":
        click.echo(
            f"--new-master-key is for the local provider (keys.provider is {ring.provider.name})",
            err=True,
        )
        sys.exit(2)
    ring.provider.allow_new_master_key = True


@keys.command("rotate")
@config_option
@click.option(
    "--now",
    "immediately",
    is_flag=True,
    help="Activate at once instead of after keys.prepublish (emergencies: verifiers that "
    "cached the key set refuse new tokens until they fetch it again).",
)
@click.option("--new-master-key", "new_master_key", is_flag=True, help=NEW_MASTER_KEY_HELP)
def keys_rotate(config: Path | None, immediately: bool, new_master_key: bool) -> None:
    """Schedule the next key (it signs after keys.prepublish); no restart needed."""

    async def action(ring: Any) -> tuple[dict[str, Any] | None, str]:
        if new_master_key:
            _allow_new_master_key(ring)
        record = await ring.rotate(immediately=immediately)
        if record is not None:
            return _describe(ring, record), ""
        return None, _already_scheduled(ring, immediately)

    made, refusal = _on_ring(config, action)
    if made is None:
        click.echo(refusal, err=True)
        sys.exit(1)
    click.echo(json.dumps(made))


def _already_scheduled(ring: Any, immediately: bool) -> str:
    """Why a rotation made nothing, and, for ``--now``, the way to a new key at once."""
    now = ring.now()
    pending = ring.timeline.pending(ring.keys, now)
    current = ring.timeline.current(ring.keys, now)
    said = "a successor is already scheduled; nothing to do"
    if pending:
        successor = _describe(ring, pending[-1])
        said = (
            f"a successor is already scheduled (kid {successor['kid']}, activates at"
            f" {successor['activates_at']}); nothing to do"
        )
    if immediately and current is not None:
        # Bringing the pending key forward would have verifiers that cached its later
        # active_from refuse its tokens; retiring the current key makes a new one current
        # at once and retires the pending one unused (docs/keys.md).
        said += (
            f". To replace the current key at once (a compromise), retire it:"
            f" dragoman keys retire --kid {current.kid}"
        )
    return said


@keys.command("retire")
@config_option
@click.option("--kid", required=True, help="The key to retire (kids may start with '-').")
@click.option("--new-master-key", "new_master_key", is_flag=True, help=NEW_MASTER_KEY_HELP)
def keys_retire(config: Path | None, kid: str, new_master_key: bool) -> None:
    """Retire a key now: it verifies nothing more; if it was current, a new key takes over.

    Exit 2 (after printing the retired key) if a key it retired is still enabled at its
    provider: another provider's key (run it again with that provider's settings), or a
    provider that failed to disable it. The retirement stands either way."""

    async def action(ring: Any) -> tuple[dict[str, Any], list[Any]]:
        if new_master_key:
            _allow_new_master_key(ring)
        try:
            retired = _describe(ring, await ring.retire(kid))
        except LookupError:
            click.echo(f"no key {kid!r}", err=True)
            sys.exit(1)
        return retired, list(ring.left_enabled)

    retired, left_enabled = _on_ring(config, action)
    click.echo(json.dumps(retired))
    if left_enabled:
        for record in left_enabled:
            click.echo(
                f"warning: key {record.kid} is retired but still enabled at the {record.provider}"
                f" provider ({record.ref}): run this command again with settings for that"
                " provider, or disable it there by hand",
                err=True,
            )
        sys.exit(2)
