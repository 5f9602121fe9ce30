"""`dragoman audit verify`: check a hash-chained audit log (docs/audit.md).
`dragoman audit report`: what report-only rules would have refused (docs/report-only.md).


Exit 0 with a one-line summary when the chain is intact; 1 naming the first bad index and
what is wrong; 2 when the arguments cannot be used (a key or a directory)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from dragoman.cli.common import main

EXIT_BROKEN = 1
EXIT_USAGE = 2


@main.group()
def audit() -> None:
    """Audit trail tools."""


def _files(paths: tuple[Path, ...]) -> list[Path]:
    from dragoman.audit.rotation import log_files

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            try:
                files.extend(log_files(path))
            except ValueError as exc:
                click.echo(str(exc), err=True)
                sys.exit(EXIT_USAGE)
        else:
            files.append(path)
    return files


@audit.command("verify")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Checkpoint public key (PEM); repeat for several. Without: signatures unchecked.",
)
@click.option(
    "--expect-at-least",
    type=click.IntRange(min=0),
    default=None,
    help="Fail (truncated) if the chain holds fewer records (a count kept elsewhere).",
)
@click.option(
    "--closed", is_flag=True, help="Fail (truncated) unless the log ends with a checkpoint."
)
@click.option("--chain", "chain", default=None, help="Verify only this chain (stdout capture).")
@click.option(
    "--partial", is_flag=True, help="The first record anchors the chain (older files pruned)."
)
@click.option(
    "--database",
    "database",
    default=None,
    metavar="URL",
    help="Verify the audit_records table of this database (with files: and that they agree).",
)
def verify_command(
    paths: tuple[Path, ...],
    keys: tuple[Path, ...],
    expect_at_least: int | None,
    closed: bool,
    chain: str | None,
    partial: bool,
    database: str | None,
) -> None:
    """Verify FILE... (in chain order) or a DIRECTORY (its rotated files, then the live one),
    and/or the audit_records table of --database URL."""
    from dragoman.audit.checkpoint import CheckpointKeyError, load_public_keys
    from dragoman.audit.verify import verify

    if not paths and database is None:
        click.echo("give FILE_OR_DIR... or --database URL", err=True)
        sys.exit(EXIT_USAGE)
    try:
        public = load_public_keys(list(keys)) if keys else None
    except CheckpointKeyError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    options = {
        "keys": public,
        "expect_at_least": expect_at_least,
        "closed": closed,
        "chain": chain,
        "partial": partial,
    }
    if database is not None:
        _verify_database(database, _files(paths), options)
        return
    report = verify(
        _files(paths),
        keys=public,
        expect_at_least=expect_at_least,
        closed=closed,
        chain=chain,
        partial=partial,
    )
    if report.intact:
        click.echo(report.summary())
        return
    click.echo(report.summary(), err=True)
    sys.exit(EXIT_BROKEN)


def _verify_database(url: str, files: list[Path], options: dict[str, Any]) -> None:
    """The table's chains (and, with files, the files and whether both agree)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dragoman.audit.postgres_verify import MissingDatabase, disagreement, verify_table
    from dragoman.audit.verify import verify

    try:
        tables = verify_table(url, **options)
    except MissingDatabase as exc:
        # A SQLite path carries no password: name it (a typo is then plain to see).
        click.echo(f"cannot read the audit database: no such file {exc.filename}", err=True)
        sys.exit(EXIT_USAGE)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        # The class only: the message of a failed connect may carry the URL.
        click.echo(f"cannot read the audit database ({type(exc).__name__})", err=True)
        sys.exit(EXIT_USAGE)
    broken = False
    for table in tables:
        label = f"table chain {table.chain}: " if table.chain else "table: "
        click.echo(label + table.report.summary(), err=not table.report.intact)
        broken |= not table.report.intact
    if files:
        report = verify(files, **options)
        click.echo("files: " + report.summary(), err=not report.intact)
        broken |= not report.intact
        for table in tables:
            problem = disagreement(files, table)
            if problem is not None:
                click.echo(f"files and table disagree: {problem}", err=True)
                broken = True
    if broken:
        sys.exit(EXIT_BROKEN)


def _moment(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time (UTC unless it names a zone), or a duration before now (``24h``)."""
    from dragoman.settings import parse_duration

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = None
        if not isinstance(seconds, (int, float)):
            click.echo(f"{option}: give an ISO 8601 time or a duration such as 24h", err=True)
            sys.exit(EXIT_USAGE)
        return datetime.now(UTC) - timedelta(seconds=float(seconds))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@audit.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--since", default=None, help="From this time (ISO 8601) or this long ago (24h).")
@click.option("--until", default=None, help="Up to this time (ISO 8601) or this long ago.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def report_command(
    paths: tuple[Path, ...], since: str | None, until: str | None, as_json: bool
) -> None:
    """Summarise what report-only rules would have refused, per rule, in FILE... or a
    DIRECTORY's audit files, within --since and --until."""
    from dragoman.audit.report import summarise

    report = summarise(
        _files(paths), since=_moment(since, "--since"), until=_moment(until, "--until")
    )
    click.echo(json.dumps(report.as_json(), indent=2) if as_json else report.text())
