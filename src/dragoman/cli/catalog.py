"""The operation catalog: list it, import one from OpenAPI, compare two."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import NoReturn, cast

import click

from dragoman.cli.common import config_option, load, main
from dragoman.settings import RISK_TIERS, RiskTier

_FILE = click.Path(dir_okay=False, path_type=Path)


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(2)


@main.group()
def catalog() -> None:
    """The operation catalog."""


@catalog.command("list")
@config_option
def catalog_list(config: Path | None) -> None:
    """List operations: id, method, path, scope."""
    for op in load(config).catalog.operations:
        click.echo(f"{op.id:<32} {op.method:<6} {op.path:<56} {op.scope}")


def _tiers(options: tuple[str, ...], file: Path | None) -> dict[str, RiskTier]:
    """``--tiers FILE`` (a TOML table ``operation_id = "tier"``), then ``--tier OP=TIER``."""
    entries: list[tuple[str, object]] = []
    if file is not None:
        try:
            entries += tomllib.loads(file.read_text("utf-8")).items()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            _fail(f"{file}: not a readable TOML file of tiers ({exc})")
    for option in options:
        op_id, sep, named = option.partition("=")
        if not sep or not op_id:
            _fail(f"--tier {option!r}: write it as OPERATION_ID=TIER")
        entries.append((op_id, named))
    tiers: dict[str, RiskTier] = {}
    for op_id, tier in entries:
        if tier not in RISK_TIERS:
            _fail(f"tier of {op_id!r}: {tier!r} is not one of {', '.join(RISK_TIERS)}")
        tiers[op_id] = cast(RiskTier, tier)
    return tiers


@catalog.command("import")
@click.argument("spec", type=_FILE)
@click.option("--out", "-o", type=_FILE, help="Write the TOML here (default: standard output).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--tier", "tier_options", multiple=True, metavar="OP=TIER", help="Set a tier.")
@click.option("--tiers", "tiers_file", type=_FILE, help='TOML file of `op_id = "tier"` lines.')
def catalog_import(
    spec: Path,
    out: Path | None,
    force: bool,
    tier_options: tuple[str, ...],
    tiers_file: Path | None,
) -> None:
    """Derive a catalog from the OpenAPI 3.x document SPEC (JSON or YAML)."""
    from dragoman.catalog.export import catalog_toml, comment_text
    from dragoman.catalog.openapi import SpecError, import_openapi, load_document

    if out is not None and out.exists() and not force:
        _fail(f"{out} exists; add --force to replace it")
    tiers = _tiers(tier_options, tiers_file)
    try:
        imported = import_openapi(load_document(spec), tiers)
    except SpecError as exc:
        _fail(str(exc))
    text = catalog_toml(imported, spec.name)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            out.write_text(text, "utf-8")
        except OSError as exc:
            _fail(f"{out}: cannot write it ({exc.strerror or exc})")
    for skipped in imported.skipped:  # from the document: escaped, one line each
        method, path = comment_text(skipped.method), comment_text(skipped.path)
        click.echo(f"skipped {method} {path}: {comment_text(skipped.reason)}", err=True)
    summary = (
        f"{len(imported.operations)} operations, {imported.candidates} candidate customer"
        f" bindings to review, {len(imported.skipped)} skipped"
    )
    click.echo(f"{out}: {summary}" if out is not None else summary, err=out is None)


@catalog.command("diff")
@click.argument("old", type=_FILE)
@click.argument("new", type=_FILE)
def catalog_diff(old: Path, new: Path) -> None:
    """Compare two catalogs (OpenAPI documents or TOML catalogs); exit 1 if they differ."""
    from dragoman.catalog.diff import diff_catalogs, load_catalog
    from dragoman.catalog.openapi import SpecError

    try:
        lines = diff_catalogs(load_catalog(old), load_catalog(new))
    except SpecError as exc:
        _fail(str(exc))
    for line in lines:
        click.echo(line)
    sys.exit(1 if lines else 0)
