"""Alerts and the sinks they go to.

An :class:`Alert` is something an operator should look at: a mapping that drifted from the
payment platform's records (reconciliation), later an abuse pattern (the guards). A sink
takes an alert with :meth:`AlertSink.emit`, which never blocks and never raises: a sink
that delivers over the network queues the alert and delivers it in the background, and
counts what it had to drop. :class:`FanOut` hands each alert to every configured sink.

What an alert carries is chosen by its producer and is never a secret: ids dragoman made
(a mapping id, a run id), blind indexes, kinds and counts. A plaintext account or customer
id never goes into an alert. The free-text ``message`` is redacted all the same.

Knowing it arrived: :meth:`FanOut.deliver` (and :func:`deliver` for any sink) takes an
alert like ``emit`` and returns a future that settles once every sink is done with it:
``True`` when each delivered it or finally gave up on it (a final failure, logged),
``False`` when one dropped it (its queue full, or closed before delivering it). A caller
that must not lose an alert (reconciliation's outbox) marks it sent only on ``True``.

Counting hook: every sink reports each outcome (``delivered``, ``retried``, ``failed``,
``dropped``) to an optional :data:`AlertObserver`; a Prometheus counter plugs in there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from dragoman.audit.redact import redact_text

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
Outcome = Literal["delivered", "retried", "failed", "dropped"]
FieldValue = str | int | float | bool | None

AlertObserver = Callable[[str, "Alert", Outcome], None]
"""Called with (sink name, alert, outcome) each time a sink settles an alert or retries
it. Must be quick and must not raise (it runs on the event loop)."""


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    """What happened, a stable code: ``mapping_drift``."""
    fields: Mapping[str, FieldValue]
    """dragoman's own identifiers and codes only (never secrets, never plaintext ids)."""
    message: str = ""
    severity: Severity = "warning"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    """Stable for one discrepancy, so a receiver can drop a retried delivery it has seen."""
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "at": round(self.at, 3),
            "message": redact_text(self.message),
            "fields": dict(self.fields),
        }


class AlertSink(Protocol):
    name: str

    def emit(self, alert: Alert) -> None:
        """Take ``alert``; never blocks, never raises."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Deliver what is queued (within the sink's own time limit), then stop."""
        ...


def settled(done: bool = True) -> asyncio.Future[bool]:
    """A future already settled with ``done`` (a sink that is done with an alert at once)."""
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(done)
    return future


def deliver(sink: AlertSink, alert: Alert) -> asyncio.Future[bool]:
    """``sink.emit(alert)``, and a future telling whether ``sink`` is done with it (see the
    module docstring). A sink with its own ``deliver`` says when; for any other, taking the
    alert is all there is to it."""
    own = getattr(sink, "deliver", None)
    if own is not None:
        future: asyncio.Future[bool] = own(alert)
        return future
    sink.emit(alert)
    return settled()


def notify(observer: AlertObserver | None, sink: str, alert: Alert, outcome: Outcome) -> None:
    if observer is None:
        return
    try:
        observer(sink, alert, outcome)
    except Exception:
        log.exception("alert observer failed")


class FanOut:
    """Every alert to every sink; one failing sink never keeps the others from theirs."""

    name = "fanout"

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = tuple(sinks)

    def emit(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.emit(alert)
            except Exception:
                log.exception("alert sink %s failed to take an alert", sink.name)

    def deliver(self, alert: Alert) -> asyncio.Future[bool]:
        """Every sink takes ``alert``; the future is True once every one is done with it
        (delivered, or finally failed), False if one dropped it."""
        futures = []
        for sink in self.sinks:
            try:
                futures.append(deliver(sink, alert))
            except Exception:
                log.exception("alert sink %s failed to take an alert", sink.name)
                futures.append(settled(False))
        if all(future.done() for future in futures):  # every sink done at once (the log)
            return settled(all(not f.cancelled() and f.result() is True for f in futures))
        together = asyncio.gather(*futures, return_exceptions=True)
        result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def done(gathered: asyncio.Future[list[Any]]) -> None:
            if not result.done():
                result.set_result(
                    not gathered.cancelled() and all(r is True for r in gathered.result())
                )

        together.add_done_callback(done)
        return result

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def close(self) -> None:
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("alert sink %s failed to close", sink.name)
