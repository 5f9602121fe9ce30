"""`dragoman mappings`: the account mappings."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from dragoman.cli.common import T, config_option, load, main, run, store_unavailable
from dragoman.settings import Settings


@main.group()
def mappings() -> None:
    """Manage account mappings (cloud account -> payment customer)."""


def _store(settings: Settings) -> Any:
    from dragoman.mapping.factory import open_mapping_store
    from dragoman.state.sql import make_engine

    return open_mapping_store(settings, make_engine(settings.store.database_url, pool_size=1))


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


async def _with_store(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from dragoman.mapping.maintenance import seal_plaintext
    from dragoman.mapping.store import StoreUnavailable
    from dragoman.state import migrate

    store = _store(settings)
    try:
        if settings.store.auto_migrate:
            await migrate.upgrade(store.engine)
            await seal_plaintext(store)
        return await action(store)
    except StoreUnavailable as exc:
        store_unavailable(exc)
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
    settings = load(config)
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
        mapping = run(lambda: _with_store(settings, action))
    except MappingExists:
        click.echo(f"cloud account {account!r} is already linked", err=True)
        sys.exit(1)
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


@mappings.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def mappings_list(config: Path | None, as_json: bool) -> None:
    """List mappings."""
    settings = load(config)
    found = run(lambda: _with_store(settings, lambda store: store.list()))
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
    settings = load(config)
    mapping = run(lambda: _with_store(settings, lambda store: _find(store, ref)))
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


def _set_status(config: Path | None, ref: str, actor: str, status: str) -> None:
    from dragoman.mapping.store import RevokedIsFinal, VersionConflict

    settings = load(config)

    async def action(store: Any) -> Any:
        mapping = await _find(store, ref)
        return await store.update(
            mapping.id, expected_version=mapping.version, actor=actor, status=status
        )

    try:
        mapping = run(lambda: _with_store(settings, action))
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
