"""The `dragoman` command.

dragoman serve          run the proxy
dragoman demo           run the demo (add --check for the scripted walk-through)
dragoman check-config   validate a settings file and list every problem
dragoman mappings       add | list | show | suspend | revoke account mappings
dragoman keys           init | list | new-master-key
dragoman db             upgrade | current
dragoman catalog        list the operations of the catalog
dragoman settings-doc   print the settings reference (docs/settings.md)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from dragoman import __version__
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


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except SettingsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


@click.group()
@click.version_option(__version__, prog_name="dragoman")
def main() -> None:
    """dragoman: a trust-translation proxy."""


@main.command()
@config_option
@click.option("--log-level", default="INFO", show_default=True)
def serve(config: Path | None, log_level: str) -> None:
    """Run the proxy."""
    from dragoman.server import run

    sys.exit(run(_settings(config), log_level=log_level))


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE (with the DRAGOMAN_* environment) and list every problem."""
    try:
        settings = load_settings(file)
    except SettingsError as exc:
        click.echo(f"{file}: {len(exc.problems)} problem(s)", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    operations = len(settings.catalog.operations)
    issuers = len(settings.identity.oidc)
    click.echo(f"{file}: OK ({issuers} issuer(s), {operations} operation(s))")


@main.command()
@click.option("--check", is_flag=True, help="Run the scripted walk-through and exit.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--proxy-port", default=8080, show_default=True)
@click.option("--platform-port", default=8090, show_default=True)
@click.option("--issuer-port", default=8070, show_default=True)
@click.option("--console-port", default=8060, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
)
def demo(
    check: bool,
    host: str,
    proxy_port: int,
    platform_port: int,
    issuer_port: int,
    console_port: int,
    state_dir: Path,
) -> None:
    """Run the demo: identity issuer, payment platform, console page and dragoman."""
    from dragoman.demo.runner import DemoPorts, run_check, run_demo

    if check:
        sys.exit(run_check())
    ports = DemoPorts(
        proxy=proxy_port, platform=platform_port, issuer=issuer_port, console=console_port
    )
    sys.exit(run_demo(host=host, ports=ports, state_dir=state_dir))


# -- mappings ----------------------------------------------------------------------------------


@main.group()
def mappings() -> None:
    """Manage account mappings (cloud account -> payment customer)."""


def _store(settings: Settings) -> Any:
    from dragoman.mapping.store import MappingStore, make_engine

    return MappingStore(make_engine(settings.store.database_url, pool_size=1))


def _parse_grant(text: str) -> Any:
    from dragoman.mapping.entity import Grant

    kind, sep, rest = text.partition(":")
    name, eq, operations = rest.rpartition("=")
    ops = tuple(o.strip() for o in operations.split(",") if o.strip())
    if not sep or not eq or kind not in ("principal", "role") or not name or not ops:
        raise click.BadParameter(
            f"{text!r}: expected principal:NAME=OPS or role:NAME=OPS (OPS comma-separated)"
        )
    return Grant(operations=ops, **{kind: name})


def _mapping_json(mapping: Any) -> dict[str, Any]:
    return {
        "id": mapping.id,
        "cloud_account": mapping.cloud_account,
        "payment_customer": mapping.payment_customer,
        "status": mapping.status.value,
        "created_at": mapping.created_at.isoformat(),
        "created_by": mapping.created_by,
        "verification_method": mapping.verification_method,
        "verification_evidence": mapping.verification_evidence,
        "last_validated_at": mapping.last_validated_at.isoformat(),
        "version": mapping.version,
        "grants": [g.to_json() for g in mapping.grants],
    }


def _store_unavailable(exc: Exception) -> NoReturn:
    click.echo(f"the state store is unavailable ({exc})", err=True)
    sys.exit(3)


async def _with_store(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from dragoman.mapping.store import StoreUnavailable
    from dragoman.state import migrate

    store = _store(settings)
    try:
        if settings.store.auto_migrate:
            await migrate.upgrade(store.engine)
        return await action(store)
    except StoreUnavailable as exc:
        _store_unavailable(exc)
    finally:
        await store.close()


@mappings.command("add")
@config_option
@click.option("--account", required=True, help="Cloud account id.")
@click.option("--customer", required=True, help="Payment customer id.")
@click.option("--by", "created_by", required=True, help="Who creates the link (for audit).")
@click.option("--verification-method", default="manual", show_default=True)
@click.option("--evidence", default=None, help="Reference to the verification evidence.")
@click.option(
    "--grant",
    "grants",
    multiple=True,
    required=True,
    help="principal:NAME=OPS or role:NAME=OPS; OPS are operation ids or scopes, comma-separated.",
)
def mappings_add(
    config: Path | None,
    account: str,
    customer: str,
    created_by: str,
    verification_method: str,
    evidence: str | None,
    grants: tuple[str, ...],
) -> None:
    """Link a cloud account to a payment customer."""
    from dragoman.catalog.model import operations_from_settings
    from dragoman.mapping.entity import unknown_grant_entries
    from dragoman.mapping.store import MappingExists

    parsed = [_parse_grant(g) for g in grants]
    settings = _settings(config)
    catalog = operations_from_settings(settings.catalog)
    unknown = unknown_grant_entries(parsed, catalog)
    if catalog and unknown:
        click.echo(
            f"--grant names operations that are not in the catalog: {', '.join(unknown)}"
            " (see `dragoman catalog list`)",
            err=True,
        )
        sys.exit(2)

    async def action(store: Any) -> Any:
        return await store.add(
            cloud_account=account,
            payment_customer=customer,
            created_by=created_by,
            verification_method=verification_method,
            verification_evidence=evidence,
            grants=parsed,
        )

    try:
        mapping = _run(lambda: _with_store(settings, action))
    except MappingExists:
        click.echo(f"cloud account {account!r} is already linked", err=True)
        sys.exit(1)
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


@mappings.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def mappings_list(config: Path | None, as_json: bool) -> None:
    """List mappings."""
    settings = _settings(config)
    found = _run(lambda: _with_store(settings, lambda store: store.list()))
    for mapping in found:
        if as_json:
            click.echo(json.dumps(_mapping_json(mapping)))
        else:
            click.echo(
                f"{mapping.id}  {mapping.cloud_account}  {mapping.status.value:<9}"
                f"  v{mapping.version}  validated {mapping.last_validated_at:%Y-%m-%d %H:%M}Z"
            )


async def _find(store: Any, ref: str) -> Any:
    from dragoman.mapping.store import MappingNotFound

    try:
        return await store.get(ref)
    except MappingNotFound:
        found = await store.find_by_account(ref)
        if found is None:
            click.echo(f"no mapping with id or cloud account {ref!r}", err=True)
            sys.exit(1)
        return found


@mappings.command("show")
@config_option
@click.argument("ref")
def mappings_show(config: Path | None, ref: str) -> None:
    """Show one mapping, by id or cloud account."""
    settings = _settings(config)
    mapping = _run(lambda: _with_store(settings, lambda store: _find(store, ref)))
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


def _set_status(config: Path | None, ref: str, actor: str, status: str) -> None:
    from dragoman.mapping.store import RevokedIsFinal, VersionConflict

    settings = _settings(config)

    async def action(store: Any) -> Any:
        mapping = await _find(store, ref)
        return await store.update(
            mapping.id, expected_version=mapping.version, actor=actor, status=status
        )

    try:
        mapping = _run(lambda: _with_store(settings, action))
    except VersionConflict:
        click.echo("the mapping changed meanwhile; try again", err=True)
        sys.exit(1)
    except RevokedIsFinal:
        click.echo("the mapping is revoked, for good; link the account anew", err=True)
        sys.exit(1)
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


@mappings.command("suspend")
@config_option
@click.argument("ref")
@click.option("--by", "actor", required=True, help="Who suspends it (for audit).")
def mappings_suspend(config: Path | None, ref: str, actor: str) -> None:
    """Suspend a mapping: every request for it is refused (mapping_inactive)."""
    _set_status(config, ref, actor, "suspended")


@mappings.command("revoke")
@config_option
@click.argument("ref")
@click.option("--by", "actor", required=True, help="Who revokes it (for audit).")
def mappings_revoke(config: Path | None, ref: str, actor: str) -> None:
    """Revoke a mapping for good."""
    _set_status(config, ref, actor, "revoked")


# -- keys --------------------------------------------------------------------------------------


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

    settings = _settings(config)

    async def go() -> T:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            if settings.store.auto_migrate:
                await migrate.upgrade(engine)
            ring = open_key_ring(settings.keys, settings.store, engine)
            try:
                await ring.refresh()
                return await action(ring)
            finally:
                await ring.close()
        finally:
            await engine.dispose()

    try:
        return _run(go)
    except StoreUnavailable as exc:
        _store_unavailable(exc)
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
        records = await ring.store.load() if everything else ring.keys
        return [_describe(ring, r) for r in records]

    for line in _on_ring(config, action):
        click.echo(json.dumps(line))


@keys.command("rotate")
@config_option
@click.option(
    "--now",
    "immediately",
    is_flag=True,
    help="Activate at once instead of after keys.prepublish (emergencies: verifiers that "
    "cached the key set refuse new tokens until they fetch it again).",
)
def keys_rotate(config: Path | None, immediately: bool) -> None:
    """Schedule the next key (it signs after keys.prepublish); no restart needed."""

    async def action(ring: Any) -> dict[str, Any] | None:
        record = await ring.rotate(immediately=immediately)
        return None if record is None else _describe(ring, record)

    made = _on_ring(config, action)
    if made is None:
        click.echo("a successor is already scheduled; nothing to do", err=True)
        sys.exit(1)
    click.echo(json.dumps(made))


@keys.command("retire")
@config_option
@click.option("--kid", required=True, help="The key to retire (kids may start with '-').")
def keys_retire(config: Path | None, kid: str) -> None:
    """Retire a key now: it verifies nothing more; if it was current, a new key takes over."""

    async def action(ring: Any) -> dict[str, Any]:
        try:
            return _describe(ring, await ring.retire(kid))
        except LookupError:
            click.echo(f"no key {kid!r}", err=True)
            sys.exit(1)

    click.echo(json.dumps(_on_ring(config, action)))


# -- db, catalog, settings ------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The mapping database."""


def _on_engine(config: Path | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(engine)`` on the configured database; exit 3 if it is unreachable."""
    from dragoman.mapping.store import StoreUnavailable, make_engine

    settings = _settings(config)

    async def go() -> T:
        engine = make_engine(settings.store.database_url, pool_size=1)
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    try:
        return _run(go)
    except StoreUnavailable as exc:
        _store_unavailable(exc)


@db.command("upgrade")
@config_option
def db_upgrade(config: Path | None) -> None:
    """Apply migrations."""
    from dragoman.state import migrate

    async def upgrade(engine: Any) -> str | None:
        await migrate.upgrade(engine)
        return await migrate.current_revision(engine)

    click.echo(f"at revision {_on_engine(config, upgrade)}")


@db.command("current")
@config_option
def db_current(config: Path | None) -> None:
    """Print the schema revision."""
    from dragoman.state import migrate

    click.echo(_on_engine(config, migrate.current_revision) or "(empty)")


@main.group()
def catalog() -> None:
    """The operation catalog."""


@catalog.command("list")
@config_option
def catalog_list(config: Path | None) -> None:
    """List operations: id, method, path, scope."""
    for op in _settings(config).catalog.operations:
        click.echo(f"{op.id:<32} {op.method:<6} {op.path:<56} {op.scope}")


@main.command("settings-doc")
def settings_doc() -> None:
    """Print the settings reference (the content of docs/settings.md)."""
    from dragoman.settings_doc import render

    click.echo(render(), nl=False)
