"""`dragoman mappings`: the account mappings.

Every read and write, refusals included, is written to the configured audit trail
(``audit.sink``) as a mapping record (:mod:`dragoman.mapping.audit`): the actor is the
``--by`` of the command (reads without it name the operating-system user), the purpose
``cli mappings <command>``. When the trail cannot be written the command exits 3, and a
read prints nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from dragoman.cli.audited import EXIT_UNAVAILABLE, by_option, os_user, run_audited, with_store
from dragoman.cli.common import config_option, load, main
from dragoman.settings import Settings

EXIT_REFUSED = 1
EXIT_AMBIGUOUS = 2


@main.group()
def mappings() -> None:
    """Manage account mappings (cloud account -> payment customer)."""


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


def _check_grants(settings: Settings, grants: list[Any]) -> str | None:
    """The complaint about grant entries the catalog does not know and roles policy.roles
    does not define (None: all known)."""
    from dragoman.catalog.model import operations_from_settings
    from dragoman.mapping.entity import unknown_grant_entries
    from dragoman.policy.roles import RolePolicy, undefined_roles_message

    complaints = []
    catalog = operations_from_settings(settings.catalog)
    unknown = unknown_grant_entries(grants, catalog)
    if catalog and unknown:
        complaints.append(
            f"--grant names operations that are not in the catalog: {', '.join(unknown)}"
            " (see `dragoman catalog list`)"
        )
    undefined = RolePolicy.from_settings(settings.policy).undefined_roles(g.role for g in grants)
    if undefined:
        complaints.append("--grant " + undefined_roles_message(undefined))
    return "\n".join(complaints) or None


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


def _refuse(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_REFUSED)


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
    """Link a cloud account to a payment customer (unverified: see `mappings link`)."""
    from dragoman.mapping.audit import MappingAction
    from dragoman.mapping.store import MappingExists

    parsed = [_parse_grant(g) for g in grants]
    settings = load(config)
    problem = _check_grants(settings, parsed)
    if problem is not None:
        click.echo(problem, err=True)
        sys.exit(2)

    async def work(store: Any, audit: Any) -> Any:
        audit.started(MappingAction.CREATE)
        try:
            mapping = await store.add(
                cloud_account=account,
                payment_customer=customer,
                created_by=created_by,
                verification_method=verification_method,
                verification_evidence=evidence,
                grants=parsed,
            )
        except MappingExists:
            audit.refused(MappingAction.CREATE, "mapping_exists", "account_linked")
            _refuse(f"cloud account {account!r} is already linked")
        audit.ok(MappingAction.CREATE, mapping=mapping)
        return mapping

    mapping = run_audited(
        lambda: with_store(
            settings,
            "add",
            MappingAction.CREATE,
            work,
            actor=created_by,
            customer=customer,
            account=account,
        )
    )
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


@mappings.command("link")
@config_option
@click.option("--account", required=True, help="Cloud account id.")
@click.option("--customer", required=True, help="Payment customer id.")
@click.option("--by", "actor", required=True, help="Who links them (for audit).")
@click.option(
    "--grant",
    "grants",
    multiple=True,
    help="principal:NAME=OPS or role:NAME=OPS; default: mapping.registration.default_grants.",
)
def mappings_link(
    config: Path | None, account: str, customer: str, actor: str, grants: tuple[str, ...]
) -> None:
    """Link a cloud account to a payment customer, verified with the payment platform first.

    The customer must exist, be neither deleted nor merged, and its record must name the
    account; otherwise nothing is written and the command exits 1 with the reason (3 when
    the platform or the store cannot be asked).
    """
    from dragoman.mapping.audit import MappingAction
    from dragoman.pipeline.errors import Denial, DependencyUnavailable

    parsed = [_parse_grant(g) for g in grants]
    settings = load(config)
    problem = _check_grants(settings, parsed)
    if problem is not None:
        click.echo(problem, err=True)
        sys.exit(2)

    async def work(store: Any, audit: Any) -> Any:
        return await _link(settings, store, audit, account, customer, actor, parsed)

    try:
        mapping = run_audited(
            lambda: with_store(
                settings,
                "link",
                MappingAction.LINK_ATTEMPT,
                work,
                actor=actor,
                customer=customer,
                account=account,
            )
        )
    except Denial as denial:
        click.echo(f"not linked: {denial.code} ({denial.reason}): {denial.detail}", err=True)
        unavailable = isinstance(denial, DependencyUnavailable)
        sys.exit(EXIT_UNAVAILABLE if unavailable else EXIT_REFUSED)
    except ValueError as exc:  # registration grants that name nothing in the catalog
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


async def _link(
    settings: Settings,
    store: Any,
    audit: Any,
    account: str,
    customer: str,
    actor: str,
    grants: list[Any],
) -> Any:
    """Start what verification needs (the key ring to mint, the platform client), then link
    through the registrar, which audits the attempt."""
    from dragoman.app import open_platform_client
    from dragoman.catalog.model import operations_from_settings
    from dragoman.keys.factory import KeyConfigError, open_key_ring
    from dragoman.mapping.registration import open_registrar
    from dragoman.tokens.mint import TokenMinter

    catalog = operations_from_settings(settings.catalog)
    try:
        ring = open_key_ring(settings.keys, settings.store, store.engine)
    except KeyConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    try:
        await ring.refresh()  # a ring without a current key mints nothing: platform_unavailable
        await ring.measure_clock(log_changes=False)  # nor one whose clock is off the store's
        minter = TokenMinter(
            ring,
            issuer=settings.tokens.issuer,
            audience=settings.upstream.audience,
            ttl=settings.tokens.ttl,
        )
        platform = open_platform_client(settings, catalog, minter)
        try:
            registrar = open_registrar(
                settings,
                store=store,
                platform=platform,
                auditor=audit.auditor,
                catalog=catalog,
            )
            return await registrar.link(
                account,
                customer,
                actor=actor,
                grants=grants or registrar.default_grants,
                purpose=audit.purpose,
            )
        finally:
            if platform is not None:
                await platform.close()
    finally:
        await ring.close()


@mappings.command("list")
@config_option
@by_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def mappings_list(config: Path | None, actor: str | None, as_json: bool) -> None:
    """List mappings."""
    from dragoman.mapping.audit import MappingAction

    settings = load(config)

    async def work(store: Any, audit: Any) -> Any:
        found = await store.list()
        audit.ok(MappingAction.LIST)
        for mapping in found:
            audit.ok(MappingAction.READ, mapping=mapping)
        return found

    found = run_audited(
        lambda: with_store(settings, "list", MappingAction.LIST, work, actor=actor or os_user())
    )
    for mapping in found:
        if as_json:
            click.echo(json.dumps(_mapping_json(mapping)))
        else:
            click.echo(
                f"{mapping.id}  {mapping.cloud_account}  {mapping.status.value:<9}"
                f"  v{mapping.version}  validated {mapping.last_validated_at:%Y-%m-%d %H:%M}Z"
            )


Ref = tuple[str, str]
"""What names a mapping: its kind (``either``, ``id``, ``account``) and the value."""


def ref_options(command: Any) -> Any:
    """REF (a mapping id or a cloud account), or ``--id`` / ``--account`` to say which."""
    command = click.option(
        "--account", "by_account", default=None, help="The mapping of this cloud account."
    )(command)
    command = click.option("--id", "by_id", default=None, help="The mapping with this id.")(command)
    return click.argument("ref", required=False)(command)


def _ref(ref: str | None, by_id: str | None, by_account: str | None) -> Ref:
    given = [
        (kind, value)
        for kind, value in (("either", ref), ("id", by_id), ("account", by_account))
        if value is not None
    ]
    if len(given) != 1:
        raise click.UsageError("name the mapping once: REF, --id ID or --account ACCOUNT")
    return given[0]


async def _find(store: Any, audit: Any, action: Any, ref: Ref) -> Any:
    """The mapping named by ``ref``; an unknown one is recorded, exits 1. A bare REF that is
    one mapping's id and another's cloud account is recorded refused, exits 2."""
    from dragoman.mapping.store import MappingNotFound

    kind, value = ref
    by_id = None
    if kind != "account":
        try:
            by_id = await store.get(value)
        except MappingNotFound:
            by_id = None
    by_account = None if kind == "id" else await store.find_by_account(value)
    if by_id is not None and by_account is not None and by_id.id != by_account.id:
        audit.refused(action, "mapping_ambiguous", "ambiguous_ref")
        click.echo(
            f"{value!r} is the id of mapping {by_id.id} and the cloud account of mapping"
            f" {by_account.id}; say which: --id {value} or --account {value}",
            err=True,
        )
        sys.exit(EXIT_AMBIGUOUS)
    found = by_id or by_account
    if found is None:
        audit.refused(action, "mapping_not_found", "unknown_ref")
        named = {"either": "id or cloud account", "id": "id", "account": "cloud account"}[kind]
        _refuse(f"no mapping with {named} {value!r}")
    return found


@mappings.command("show")
@config_option
@by_option
@ref_options
def mappings_show(
    config: Path | None,
    actor: str | None,
    ref: str | None,
    by_id: str | None,
    by_account: str | None,
) -> None:
    """Show one mapping: REF is its id or its cloud account (one that is both, of two
    mappings, is refused: say which with --id or --account)."""
    from dragoman.mapping.audit import MappingAction

    named = _ref(ref, by_id, by_account)
    settings = load(config)

    async def work(store: Any, audit: Any) -> Any:
        mapping = await _find(store, audit, MappingAction.READ, named)
        audit.ok(MappingAction.READ, mapping=mapping)
        return mapping

    mapping = run_audited(
        lambda: with_store(settings, "show", MappingAction.READ, work, actor=actor or os_user())
    )
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


def _set_status(config: Path | None, ref: Ref, actor: str, status: str) -> None:
    from dragoman.mapping.audit import MappingAction
    from dragoman.mapping.store import RevokedIsFinal, VersionConflict

    settings = load(config)
    action = MappingAction.SUSPEND if status == "suspended" else MappingAction.REVOKE
    command = "suspend" if action is MappingAction.SUSPEND else "revoke"

    async def work(store: Any, audit: Any) -> Any:
        mapping = await _find(store, audit, action, ref)
        audit.started(action, mapping=mapping)
        try:
            changed = await store.update(
                mapping.id, expected_version=mapping.version, actor=actor, status=status
            )
        except VersionConflict:
            audit.refused(action, "version_conflict", mapping=mapping)
            _refuse("the mapping changed meanwhile; try again")
        except RevokedIsFinal:
            audit.refused(action, "revoked_is_final", mapping=mapping)
            _refuse("the mapping is revoked, for good; link the account anew")
        audit.ok(action, mapping=changed)
        return changed

    mapping = run_audited(lambda: with_store(settings, command, action, work, actor=actor))
    click.echo(json.dumps(_mapping_json(mapping), indent=2))


@mappings.command("suspend")
@config_option
@ref_options
@click.option("--by", "actor", required=True, help="Who suspends it (for audit).")
def mappings_suspend(
    config: Path | None, ref: str | None, by_id: str | None, by_account: str | None, actor: str
) -> None:
    """Suspend a mapping: every request for it is refused (mapping_inactive). REF is its id
    or its cloud account (one that is both, of two mappings, is refused: say which with
    --id or --account)."""
    _set_status(config, _ref(ref, by_id, by_account), actor, "suspended")


@mappings.command("revoke")
@config_option
@ref_options
@click.option("--by", "actor", required=True, help="Who revokes it (for audit).")
def mappings_revoke(
    config: Path | None, ref: str | None, by_id: str | None, by_account: str | None, actor: str
) -> None:
    """Revoke a mapping for good. REF is its id or its cloud account (one that is both, of
    two mappings, is refused: say which with --id or --account)."""
    _set_status(config, _ref(ref, by_id, by_account), actor, "revoked")
