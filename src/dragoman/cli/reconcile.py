"""`dragoman reconcile`: compare every mapping with the payment platform's records."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

import click

from dragoman.cli.common import config_option, load, main, store_unavailable
from dragoman.settings import Settings

EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class ConfigProblem(click.ClickException):
    exit_code = EXIT_CONFIG


class BarProgress:
    """A progress bar on the terminal (stderr)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, total: int) -> None:
        self._bar = click.progressbar(
            length=total,
            label="reconciling",
            file=sys.stderr,
            show_pos=True,
            show_percent=True,
            show_eta=True,
        )
        self._bar.__enter__()

    def advance(self, checked: int) -> None:
        if self._bar is not None:
            self._bar.update(checked)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class LineProgress:
    """Plain lines on stderr when it is not a terminal: every tenth, or every 10 s."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._total = 0
        self._done = 0
        self._step = 1
        self._next = 1
        self._last = 0.0

    def start(self, total: int) -> None:
        self._total, self._done = total, 0
        self._step = max(1, total // 10)
        self._next = self._step
        self._last = time.monotonic()
        click.echo(f"reconciling: {total} mapping(s) to check", err=True)

    def advance(self, checked: int) -> None:
        self._done += checked
        now = time.monotonic()
        if self._done >= self._next or now - self._last >= self._every:
            percent = 100 * self._done // self._total if self._total else 100
            click.echo(f"reconciling: {self._done}/{self._total} ({percent}%)", err=True)
            while self._next <= self._done:
                self._next += self._step
            self._last = now

    def finish(self) -> None:
        return None


async def _reconcile(
    settings: Settings,
    *,
    resume: Literal["auto", "only", "fresh"],
    concurrency: int | None,
    progress: Any,
) -> Any:
    from dragoman.alerts import open_alert_sinks
    from dragoman.app import open_platform_client
    from dragoman.catalog.model import operations_from_settings
    from dragoman.cli.audited import open_writer
    from dragoman.keys.factory import open_key_ring
    from dragoman.mapping.audit import MappingAuditor
    from dragoman.mapping.factory import open_mapping_store
    from dragoman.mapping.maintenance import seal_plaintext
    from dragoman.mapping.reconcile import Reconciler
    from dragoman.state import migrate
    from dragoman.state.sql import make_engine
    from dragoman.tokens.mint import TokenMinter

    engine = make_engine(settings.store.database_url, pool_size=4)
    try:
        if settings.store.auto_migrate:
            await migrate.upgrade(engine)
        store = open_mapping_store(settings, engine)
        if settings.store.auto_migrate:
            await seal_plaintext(store)
        ring = open_key_ring(settings.keys, settings.store, engine)
        try:
            await ring.refresh()
            # Minted by this host's clock: one off the store's past keys.max_clock_skew
            # signs nothing (the calls fail as the proxy's would), rather than tokens the
            # upstream refuses as not yet valid or expired.
            await ring.measure_clock(log_changes=False)
            if ring.current_key() is None:
                raise ConfigProblem(
                    "no signing key is current: start the proxy (it makes the first key)"
                    " or run `dragoman keys rotate`"
                )
            minter = TokenMinter(
                ring,
                issuer=settings.tokens.issuer,
                audience=settings.upstream.audience,
                ttl=settings.tokens.ttl,
            )
            platform = open_platform_client(
                settings, operations_from_settings(settings.catalog), minter
            )
            if platform is None:
                raise ConfigProblem(
                    f"the catalog has no {settings.mapping.platform.customer_operation!r}"
                    " operation (mapping.platform.customer_operation): nothing to ask the"
                    " platform with"
                )
            alerts = open_alert_sinks(settings.alerts)
            await alerts.start()
            writer, sink = open_writer(settings)
            try:
                reconciler = Reconciler(
                    store,
                    platform,
                    settings.reconcile,
                    alerts=alerts,
                    trigger="cli",
                    concurrency=concurrency,
                    timeout=max(30.0, 10 * settings.store.query_timeout),
                    auditor=MappingAuditor(writer.write, store.codec, write_many=writer.write_many),
                )
                return await reconciler.run(
                    resume=resume,
                    progress=progress,
                    started=lambda run, resumed: click.echo(
                        f"{'resuming' if resumed else 'starting'} reconciliation run {run.id}",
                        err=True,
                    ),
                )
            finally:
                sink.close()
                await alerts.close()
                await platform.close()
        finally:
            await ring.close()
    finally:
        await engine.dispose()


def dump_tasks() -> None:
    """Every task of the running loop, with where it waits, on stderr (SIGUSR1): what a run
    that seems stuck is waiting for."""
    tasks = asyncio.all_tasks()
    print(f"dragoman reconcile: {len(tasks)} task(s)", file=sys.stderr)
    for task in tasks:
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def _run_cancellable(make: Any) -> Any:
    """Run the coroutine; SIGTERM cancels it like Ctrl-C does (the run records what it
    finished and stays resumable); SIGUSR1 prints what every task waits for."""
    terminated = False

    async def go() -> Any:
        nonlocal terminated
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        return await make()

    try:
        return asyncio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo(
            "interrupted: the run is unfinished; `dragoman reconcile --resume` continues it",
            err=True,
        )
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


@main.command("reconcile")
@config_option
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Customer records asked for at once (default: reconcile.concurrency).",
)
@click.option(
    "--resume", is_flag=True, help="Only continue the unfinished run (exit 1 if there is none)."
)
@click.option("--fresh", is_flag=True, help="Abandon an unfinished run and start a new one.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON summary here (default: reconcile.report_path).",
)
def reconcile(
    config: Path | None,
    concurrency: int | None,
    resume: bool,
    fresh: bool,
    report_path: Path | None,
) -> None:
    """Compare every mapping with the payment platform's own records.

    Matched mappings are validated; drifted ones are marked stale or suspended (per
    reconcile.on_*) and alerted once. Without --resume or --fresh, an unfinished run is
    continued (mappings it finished are not checked again), else a new run starts.

    Exit status: 0 the run completed (drift found or not), 1 it did not (mappings left
    unchecked: resume it), 2 a settings problem, 3 the state store is unreachable, 4
    another runner is at work, 130/143 interrupted (resumable).
    """
    from dragoman.cli.audited import AuditTrailFailed, audit_failed
    from dragoman.mapping.reconcile import LeaseLost, NothingToResume, RunnerBusy
    from dragoman.state.sql import StoreUnavailable

    if resume and fresh:
        raise click.UsageError("--resume and --fresh exclude each other")
    from dragoman.keys.factory import KeyConfigError
    from dragoman.logs import configure

    settings = load(config)

    configure("WARNING")  # alerts are logged (logger dragoman.alerts) to stderr
    progress = BarProgress() if sys.stderr.isatty() else LineProgress()
    mode: Literal["auto", "only", "fresh"] = "only" if resume else "fresh" if fresh else "auto"
    try:
        report = _run_cancellable(
            lambda: _reconcile(settings, resume=mode, concurrency=concurrency, progress=progress)
        )
    except StoreUnavailable as exc:
        store_unavailable(exc)
    except AuditTrailFailed as exc:  # what the run wrote is recorded; it stopped there
        audit_failed(exc)
    except KeyConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except RunnerBusy as exc:
        click.echo(f"another reconciliation is running: {exc}", err=True)
        sys.exit(EXIT_BUSY)
    except (NothingToResume, LeaseLost) as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_INCOMPLETE)
    for line in report.lines():
        click.echo(line)
    target = report_path or settings.reconcile.report_path
    if target is not None:
        try:
            report.write(Path(target))
        except OSError as exc:
            click.echo(f"cannot write the report to {target}: {exc.strerror}", err=True)
            sys.exit(EXIT_INCOMPLETE)
        click.echo(f"report written to {target}")
    sys.exit(0 if report.completed else EXIT_INCOMPLETE)
