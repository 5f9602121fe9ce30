"""GET /metrics on a listener of its own (``[metrics]``), never on the proxy's port.

With one worker the answer is this process's registry plus the worker's key ring and TLS
certificates. With
several (``server.workers`` > 1) the supervisor gives every worker one fresh directory in
``PROMETHEUS_MULTIPROC_DIR`` before starting it: each worker writes its counters there, all
of them listen on the metrics port with SO_REUSEPORT, and whichever answers a scrape sums
every worker's files (prometheus_client's multiprocess mode), so a scrape never depends on
which worker it reached.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from dragoman.keys.ring import KeyRing
from dragoman.observability.keys import KeyRingCollector
from dragoman.observability.tls import TlsCollector
from dragoman.settings import MetricsSettings
from dragoman.settings.server import DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT
from dragoman.side_listener import SideListener
from dragoman.tls import ServerTls

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PATH = "/metrics"


class Exposition:
    """What one scrape reads: several collectors, in order."""

    def __init__(self, sources: Sequence[Collector]) -> None:
        self._sources = tuple(sources)

    def collect(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source.collect()


def exposition(
    keys: KeyRing, multiproc_dir: str | None = None, tls: Sequence[ServerTls] = ()
) -> Exposition:
    """This process's metrics (or, given ``multiproc_dir``, every worker's), and the key
    ring's and the TLS listeners' gauges, read from ``keys`` and ``tls`` at scrape time."""
    base: Collector = REGISTRY
    if multiproc_dir is not None:
        base = MultiProcessCollector(None, multiproc_dir)  # type: ignore[no-untyped-call]
    return Exposition([base, KeyRingCollector(keys), TlsCollector(tls)])


def metrics_app(source: Collector) -> web.Application:
    async def metrics(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=generate_latest(source))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        response.headers["Cache-Control"] = "no-store"
        return response

    app = web.Application()
    app.router.add_get(PATH, metrics)
    return app


class MetricsListener(SideListener):
    """The metrics application on ``settings.host``:``settings.port``."""

    def __init__(
        self,
        settings: MetricsSettings,
        source: Collector,
        *,
        shared: bool,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    ) -> None:
        """``shared``: several workers listen on the port (SO_REUSEPORT).
        ``header_timeout``, ``keepalive_timeout``: the server's (``server.*``)."""
        super().__init__(
            settings.host,
            settings.port,
            shared=shared,
            header_timeout=header_timeout,
            keepalive_timeout=keepalive_timeout,
        )
        self._source = source

    def make_runner(self) -> web.AppRunner:
        return web.AppRunner(metrics_app(self._source), access_log=None)
