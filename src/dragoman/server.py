"""Runs the proxy: one uvloop worker process per core, sharing the port with SO_REUSEPORT.

The parent checks and prepares what must happen once (the TLS files and the audit file
load, migrations, the key file), then starts the workers, restarts any that die, and
passes SIGTERM/SIGINT on for a graceful stop: each worker stops accepting, lets in-flight
requests finish within ``server.shutdown_timeout``, and flushes its audit sink. A worker
that keeps dying as it starts is not restarted forever (:class:`RestartPolicy`): the
supervisor stops the others and exits 1.

With ``audit.sink = "stdout"`` and several workers, the supervisor makes a lock file the
workers' :class:`~dragoman.audit.stdout.SharedStdout` take around each write, so
their lines on the shared stdout never interleave; its own "listening" line is logged
(stderr), leaving stdout to the audit records.

Metrics (``[metrics]``, docs/metrics.md) and the decision API (``[decision]``,
docs/decision.md) are served on listeners of their own by every worker.
With several workers the supervisor makes a fresh directory for prometheus_client's
multiprocess mode and names it in ``PROMETHEUS_MULTIPROC_DIR`` before it starts them; any
worker answers a scrape with the sum over all of them, and the directory is removed when
the supervisor stops.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvloop
from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from dragoman import heap
from dragoman.app import PROXY_KEY, build_app, proxy_runner
from dragoman.audit.chain import ChainError
from dragoman.audit.chained import ChainedFileSink
from dragoman.audit.sink import FileSink
from dragoman.audit.stdout import LOCK_ENV as STDOUT_LOCK_ENV
from dragoman.decision import DecisionListener
from dragoman.keys.factory import KeyConfigError, open_key_ring
from dragoman.keys.provider import KeyUnavailableError
from dragoman.logs import LogFormat
from dragoman.logs import configure as configure_logging
from dragoman.mapping.maintenance import upgrade_store
from dragoman.observability import MULTIPROC_ENV, MetricsListener, exposition
from dragoman.settings import Settings
from dragoman.state.sql import StoreUnavailable, make_engine
from dragoman.tls import ServerTls, TlsWatch

log = logging.getLogger(__name__)


async def _prepare(settings: Settings) -> None:
    engine = make_engine(settings.store.database_url, pool_size=1)
    try:
        if settings.store.auto_migrate:
            await upgrade_store(settings, engine)
        ring = open_key_ring(settings.keys, settings.store, engine)
        try:
            await ring.settle()
        finally:
            await ring.close()
    finally:
        await engine.dispose()


def prepare(settings: Settings) -> None:
    """What runs once before workers start: schema migrations, and the key set (the first
    key is made here, so workers start with one)."""
    asyncio.run(_prepare(settings))


def unloadable_tls(settings: Settings) -> str | None:
    """Why a listener's TLS files do not load, or hold a certificate that is expired or not
    valid yet (None: they do, or there is no TLS): said once, before any worker starts,
    rather than by every worker as it dies."""
    from dragoman.tls import CertificateNotValidNow

    for key, tls in (("server.tls", settings.server.tls), ("decision.tls", settings.decision.tls)):
        if tls is None or (key == "decision.tls" and not settings.decision.enabled):
            continue
        try:
            ServerTls(tls, listener=key)  # what each worker does with them
        except CertificateNotValidNow as exc:  # loads, but no handshake would succeed
            return f"{key}: {exc}"
        except (OSError, ssl.SSLError, ValueError) as exc:
            return f"{key}: the certificate and key do not load ({exc})"
    return None


def unopenable_audit(settings: Settings) -> str | None:
    """Why the audit file sink does not open (None: it does, or records go to stdout): a
    torn or unchained last line (the sink stops until an operator repairs it), a read-only
    or unwritable directory. Said once, before any worker starts, rather than by every
    worker as it dies. Opened as a worker opens it (the lock taken, the tail read and
    checked, the lock released); nothing is written: no signer, so no closing checkpoint."""
    audit = settings.audit
    if audit.sink != "file":
        return None
    try:
        if audit.chain:
            ChainedFileSink(audit.path).close()
        else:
            FileSink(audit.path).close()
    except OSError as exc:
        repair = (
            "; repair it first (docs/audit.md, Fail closed)" if isinstance(exc, ChainError) else ""
        )
        return f"the audit file {audit.path} cannot be opened ({exc}){repair}"
    return None


def worker_count(settings: Settings) -> int:
    return settings.server.workers or os.cpu_count() or 1


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    # A worker whose supervisor died (SIGKILL, OOM) would otherwise keep the port open
    # forever, serving with settings nobody manages any more.
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("worker %d: supervisor %d is gone; stopping", os.getpid(), parent)
            stop.set()
            return
        await asyncio.sleep(1.0)


async def serve_worker(
    settings: Settings,
    *,
    announce: bool = True,
    parent: int | None = None,
    metrics_dir: str | None = None,
) -> None:
    """Serve one worker until SIGTERM/SIGINT. ``metrics_dir``: the multiprocess metrics
    directory its supervisor made (None: this process is the only worker)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watchdog = asyncio.create_task(_watch_parent(parent, stop)) if parent else None
    app = build_app(settings, migrate_store=False)
    runner = proxy_runner(app, settings, shutdown_timeout=settings.server.shutdown_timeout)
    await runner.setup()
    heap.settle()  # built: what the worker keeps for life is now exempt from collections
    tls = None if settings.server.tls is None else ServerTls(settings.server.tls, listener="proxy")
    tls_watch = TlsWatch(tls)
    site = web.TCPSite(
        runner,
        settings.server.host,
        settings.server.port,
        reuse_port=True,
        backlog=2048,
        shutdown_timeout=settings.server.shutdown_timeout,
        ssl_context=None if tls is None else tls.context,
    )
    await site.start()
    tls_watch.start()
    decision_tls = (
        ServerTls(settings.decision.tls, listener="decision")
        if settings.decision.enabled and settings.decision.tls is not None
        else None
    )
    metrics: MetricsListener | None = None
    if settings.metrics.enabled:
        served_tls = [t for t in (tls, decision_tls) if t is not None]
        metrics = MetricsListener(
            settings.metrics,
            exposition(app[PROXY_KEY].keys, metrics_dir, tls=served_tls),
            shared=metrics_dir is not None,
            header_timeout=settings.server.header_timeout,
            keepalive_timeout=settings.server.keepalive_timeout,
        )
        metrics_url = await metrics.start()
    decision: DecisionListener | None = None
    if settings.decision.enabled:
        decision = DecisionListener(
            app[PROXY_KEY], settings.decision, shared=metrics_dir is not None, tls=decision_tls
        )
        decision_url = await decision.start()
    if announce:
        log.info("worker %d serving on %s", os.getpid(), site.name)
        if metrics is not None:
            log.info("worker %d serving metrics on %s/metrics", os.getpid(), metrics_url)
        if decision is not None:
            log.info("worker %d serving decisions on %s", os.getpid(), decision_url)
    await stop.wait()
    log.info("worker %d stopping", os.getpid())
    if watchdog is not None:
        watchdog.cancel()
    await tls_watch.stop()
    if decision is not None:
        await decision.close()  # before the proxy it shares is closed
    await runner.cleanup()
    if metrics is not None:
        await metrics.close()
    await _finish_stragglers()


async def _finish_stragglers(grace: float = 5.0) -> None:
    """Cancel what is left after cleanup; a task that will not end must not keep a stopping
    worker (and its port) alive: the worker then exits hard, its audit sink already closed."""
    pending = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, stuck = await asyncio.wait(pending, timeout=grace)
    if stuck:
        log.error("worker %d: %d task(s) ignored cancellation; exiting", os.getpid(), len(stuck))
        logging.shutdown()
        os._exit(1)


def _worker_main(
    settings: Settings, log_level: str, log_format: LogFormat, parent: int, metrics_dir: str
) -> None:
    configure_logging(log_level, log_format)
    try:
        uvloop.run(serve_worker(settings, parent=parent, metrics_dir=metrics_dir))
    except Exception:
        # Through logging (redacted, in the log's format), not multiprocessing's raw print.
        log.exception("worker %d failed", os.getpid())
        sys.exit(1)


def run(settings: Settings, *, log_level: str = "INFO", log_format: LogFormat = "text") -> int:
    """Serve until SIGTERM or SIGINT. Returns the exit status."""
    configure_logging(log_level, log_format)
    refused = unloadable_tls(settings) or unopenable_audit(settings)
    if refused is not None:
        log.error("cannot start: %s", refused)
        return 2
    try:
        prepare(settings)
    except (KeyConfigError, KeyUnavailableError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except StoreUnavailable as exc:
        log.error("cannot start: the state store is unavailable (%s)", exc)
        return 3
    count = worker_count(settings)
    if count > 1 and settings.server.port == 0:
        log.error("server.port 0 (any free port) works with one worker only")
        return 2
    if count > 1 and settings.metrics.enabled and settings.metrics.port == 0:
        log.error("metrics.port 0 (any free port) works with one worker only")
        return 2
    if count > 1 and settings.decision.enabled and settings.decision.port == 0:
        log.error("decision.port 0 (any free port) works with one worker only")
        return 2
    # Logged (stderr, in the log's format), not printed: stdout may carry the audit records
    # (audit.sink = "stdout"), and a capture of it must hold nothing else.
    log.info(
        "dragoman listening on %s://%s:%d (%d worker%s)",
        "https" if settings.server.tls else "http",
        settings.server.host,
        settings.server.port,
        count,
        "s" if count > 1 else "",
    )
    if count == 1:
        try:
            uvloop.run(serve_worker(settings))
        except Exception:
            log.exception("worker %d failed", os.getpid())
            return 1
        return 0
    return _supervise(settings, count, log_level, log_format)


class RestartPolicy:
    """Whether a worker that died is started again. A worker that dies within
    ``fast_death`` seconds of its start, ``limit`` times in a row, is failing at start (a
    port another program holds, a dependency that refuses it): restarting it for ever would
    only hide that. A worker that ran longer than ``fast_death`` before dying clears its
    count and is restarted."""

    def __init__(self, slots: int, *, limit: int = 5, fast_death: float = 10.0) -> None:
        self.limit = limit
        self.fast_death = fast_death
        self._fast = [0] * slots

    def restart(self, slot: int, ran_for: float) -> bool:
        """Record that the worker in ``slot`` died after ``ran_for`` seconds; whether to
        start another."""
        self._fast[slot] = self._fast[slot] + 1 if ran_for < self.fast_death else 0
        return self._fast[slot] < self.limit


def _supervise(settings: Settings, count: int, log_level: str, log_format: LogFormat) -> int:
    # A fresh directory each run: files left by an earlier run would add its counts.
    metrics_dir = tempfile.mkdtemp(prefix="dragoman-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # spawned workers inherit it at their start
    lock_dir = None
    if settings.audit.sink == "stdout":
        # The workers share one stdout: each takes this lock around its write.
        lock_dir = tempfile.mkdtemp(prefix="dragoman-audit-")
        lock_file = os.path.join(lock_dir, "stdout.lock")
        os.close(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600))
        os.environ[STDOUT_LOCK_ENV] = lock_file
    try:
        return _supervise_workers(settings, count, log_level, log_format, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if lock_dir is not None:
            shutil.rmtree(lock_dir, ignore_errors=True)


def _supervise_workers(
    settings: Settings, count: int, log_level: str, log_format: LogFormat, metrics_dir: str
) -> int:
    context = multiprocessing.get_context("spawn")
    stopping = False
    status = 0
    policy = RestartPolicy(count)
    started: list[float] = []

    def start() -> BaseProcess:
        process = context.Process(
            target=_worker_main,
            args=(settings, log_level, log_format, os.getpid(), metrics_dir),
            name="dragoman-worker",
        )
        process.start()
        return process

    def stop_workers() -> None:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        stop_workers()

    workers: list[BaseProcess] = []
    for _ in range(count):
        workers.append(start())
        started.append(time.monotonic())
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping:
        time.sleep(0.5)
        for index, process in enumerate(workers):
            if process.is_alive() or stopping:
                continue
            if process.pid is not None:
                mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
            if not policy.restart(index, time.monotonic() - started[index]):
                log.error(
                    "worker %s exited with %s: %d workers in a row died within %.0f s of"
                    " their start (their errors are above); stopping",
                    process.pid,
                    process.exitcode,
                    policy.limit,
                    policy.fast_death,
                )
                stopping, status = True, 1
                stop_workers()
                break
            log.warning("worker %s exited with %s; restarting", process.pid, process.exitcode)
            workers[index] = start()
            started[index] = time.monotonic()
    deadline = time.monotonic() + settings.server.shutdown_timeout + 5
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `dragoman serve`")
