"""Running a `dragoman mappings` command against the store with its audit trail open.

The command's mapping records go to the configured sink (``audit.sink``, ``audit.path``).
A sink that cannot be opened or written ends the command with exit 3, like an
unreachable store: a read whose record cannot be written prints nothing.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from dragoman.cli.common import T, run, store_unavailable
from dragoman.settings import Settings

if TYPE_CHECKING:
    from dragoman.audit.sink import AuditSink

EXIT_UNAVAILABLE = 3


def _store(settings: Settings) -> Any:
    from dragoman.mapping.factory import open_mapping_store
    from dragoman.state.sql import make_engine

    return open_mapping_store(settings, make_engine(settings.store.database_url, pool_size=1))


def os_user() -> str:
    try:
        return "os:" + getpass.getuser()
    except (KeyError, OSError):
        return f"os:uid-{os.getuid()}"


by_option = click.option(
    "--by",
    "actor",
    default=None,
    help="Who reads (for audit); default: the operating-system user.",
)


class AuditTrailFailed(Exception):
    """The audit sink could not be opened or written."""


def audit_failed(exc: BaseException) -> NoReturn:
    click.echo(f"the audit trail cannot be written ({exc}); see audit.sink", err=True)
    sys.exit(EXIT_UNAVAILABLE)


class SinkWriter:
    """A command's writes to the audit sink: a failed write raises AuditTrailFailed."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        try:
            self._sink.write_many(records)
        except OSError as exc:
            raise AuditTrailFailed(str(exc)) from None


def open_writer(settings: Settings) -> tuple[SinkWriter, AuditSink]:
    from dragoman.audit.sink import open_audit_sink

    try:
        sink = open_audit_sink(settings.audit)
    except OSError as exc:
        audit_failed(exc)
    return SinkWriter(sink), sink


async def with_store(
    settings: Settings,
    command: str,
    action: Any,
    work: Callable[[Any, Any], Awaitable[T]],
    *,
    actor: str,
    customer: str | None = None,
    account: str | None = None,
) -> T:
    """Run ``work(store, audit)`` on the migrated store; ``audit`` is the command's audit
    scope. A store that cannot be reached is recorded (failed) and exits 3."""
    from dragoman.mapping.audit import MappingAuditor, Outcome
    from dragoman.mapping.maintenance import seal_plaintext
    from dragoman.mapping.store import StoreUnavailable
    from dragoman.state import migrate

    writer, sink = open_writer(settings)
    store = _store(settings)
    audit = MappingAuditor(writer.write, store.codec).scope(
        actor=actor, purpose=f"cli mappings {command}", customer=customer, account=account
    )
    try:
        if settings.store.auto_migrate:
            await migrate.upgrade(store.engine)
            await seal_plaintext(store)
        return await work(store, audit)
    except StoreUnavailable as exc:
        audit.refused(
            action, "mapping_unavailable", "mapping_store_unavailable", outcome=Outcome.FAILED
        )
        store_unavailable(exc)
    finally:
        await store.close()
        sink.close()


def run_audited(make: Callable[[], Awaitable[T]]) -> T:
    try:
        return run(make)
    except AuditTrailFailed as exc:
        audit_failed(exc)
