"""`dragoman mappings rekey`: every mapping's data key re-wrapped under the active KEK.

Runs beside the serving proxies (which must know both the old and the new KEK while it
runs): each batch is one short transaction, each row guarded by the KEK it was read with,
so nothing a proxy or another rekey writes meanwhile is overwritten. Interrupted, it leaves
every row wrapped by one KEK or the other; run again, it finishes the rest. Rows written
before revision 0003 are sealed first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dragoman.cli.common import config_option, load, run, store_unavailable
from dragoman.cli.mappings import mappings
from dragoman.settings import Settings

EXIT_REFUSED = 1


@dataclass
class Outcome:
    active: str
    sealed: int = 0
    rewrapped: int = 0
    before: dict[str | None, int] | None = None
    after: dict[str | None, int] | None = None
    refused: str | None = None


def _describe(in_use: dict[str | None, int]) -> str:
    parts = [
        f"{count} under {kek!r}" if kek is not None else f"{count} not sealed"
        for kek, count in sorted(in_use.items(), key=lambda item: str(item[0]))
    ]
    return ", ".join(parts) or "no mappings"


class _Reporter:
    """Progress on stderr: a bar on a terminal, otherwise a line at most every second."""

    def __init__(self, total: int, active: str) -> None:
        self._total = total
        self._tty = sys.stderr.isatty()
        self._bar: Any = None
        self._shown = 0
        self._last: float | None = None
        if self._tty and total:
            self._bar = click.progressbar(
                length=total, label=f"re-wrapping under {active!r}", file=sys.stderr
            )
            self._bar.__enter__()

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.length = max(self._bar.length or 0, total)
            self._bar.update(done - self._shown)
            self._shown = done
            return
        now = time.monotonic()
        if self._last is None or now - self._last >= 1.0 or done >= total:
            click.echo(f"rekey: {done}/{total} data keys re-wrapped", err=True)
            self._last = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


async def _rekey(settings: Settings, batch_size: int, say: Callable[[str], None]) -> Outcome:
    from dragoman.mapping import maintenance
    from dragoman.mapping.crypto import MappingCryptoError
    from dragoman.mapping.factory import open_mapping_store
    from dragoman.state import migrate
    from dragoman.state.sql import make_engine

    store = open_mapping_store(settings, make_engine(settings.store.database_url, pool_size=1))
    active = store.codec.cipher.active_kek
    outcome = Outcome(active)
    try:
        if settings.store.auto_migrate:
            await migrate.upgrade(store.engine)
        else:
            current, head = await migrate.current_revision(store.engine), migrate.head_revision()
            if current != head:
                outcome.refused = (
                    f"the database is at revision {current or '(empty)'}, not {head}:"
                    " run `dragoman db upgrade` first"
                )
                return outcome
        outcome.before = await maintenance.keks_in_use(store)
        missing = maintenance.missing_keks(store, outcome.before)
        if missing:
            counts = ", ".join(f"{outcome.before[kek]} under {kek!r}" for kek in missing)
            outcome.refused = (
                f"refusing to rekey: data keys are wrapped by KEK(s) that are not configured"
                f" ({counts}). Configure them in mapping.encryption.keks beside the active"
                f" KEK {active!r} and run again; nothing was changed."
            )
            return outcome
        outcome.sealed = await maintenance.seal_plaintext(store)
        if outcome.sealed:
            say(f"sealed {outcome.sealed} mappings written before encryption at rest")
        total = await maintenance.count_to_rekey(store)
        say(f"{total} data keys to re-wrap under KEK {active!r} ({_describe(outcome.before)})")
        reporter = _Reporter(total, active)
        try:
            outcome.rewrapped = await maintenance.rekey(
                store, batch_size=batch_size, progress=reporter
            )
        except MappingCryptoError as exc:
            outcome.refused = (
                f"rekey stopped: {exc}. The batches before it are done, the rest untouched;"
                " fix the row or the KEK settings and run again."
            )
            return outcome
        finally:
            reporter.close()
        outcome.after = await maintenance.keks_in_use(store)
        return outcome
    finally:
        await store.close()


@mappings.command("rekey", short_help="Re-wrap every data key under the active KEK.")
@config_option
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Rows re-wrapped per transaction.",
)
def mappings_rekey(config: Path | None, batch_size: int) -> None:
    """Re-wrap every mapping's data key under mapping.encryption.active_kek.

    Safe while the proxy serves, provided every instance has both the old and the new KEK
    configured. Resumable: if interrupted, run it again. Exits 0 once every mapping is
    wrapped by the active KEK, 1 if it cannot (a KEK missing, a row that does not open),
    3 if the database cannot be reached.
    """
    from dragoman.mapping.store import StoreUnavailable

    settings = load(config)

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        outcome = run(lambda: _rekey(settings, batch_size, say))
    except StoreUnavailable as exc:
        store_unavailable(exc)
    except KeyboardInterrupt:
        click.echo("rekey interrupted; run it again to finish (no row is half done)", err=True)
        sys.exit(130)
    if outcome.refused is not None:
        click.echo(outcome.refused, err=True)
        sys.exit(EXIT_REFUSED)
    assert outcome.after is not None
    active = outcome.active
    left = {kek: n for kek, n in outcome.after.items() if kek != active}
    click.echo(
        f"rekey done: {outcome.rewrapped} data keys re-wrapped under KEK {active!r}"
        f" ({outcome.sealed} sealed from plaintext); mappings now: {_describe(outcome.after)}"
    )
    if left:
        click.echo(
            f"{sum(left.values())} mappings were written meanwhile under another KEK"
            " (an instance whose active_kek is not the new one?): run rekey again",
            err=True,
        )
        sys.exit(EXIT_REFUSED)
