"""The webhook sink: alerts POSTed as JSON to a URL, in the background, with retries.

``emit`` only puts the alert on a bounded queue and returns: a slow or dead receiver never
slows the caller down. When the queue is full the new alert is dropped and counted
(``stats.dropped``, and a warning in the log). One task per sink delivers the queue in
order; an attempt that fails for a reason worth retrying (no connection, a timeout, 408,
425, 429 or 5xx) is retried up to ``retries`` times after an exponential backoff with
jitter (or the receiver's ``Retry-After``, within ``max_backoff``); another 4xx is final.

``deliver`` is ``emit`` with a future that settles when the sink is done with the alert:
True once delivered or finally failed (given up, logged), False when it was dropped (the
queue full, or the sink closed before delivering it).

Each delivery carries ``Idempotency-Key: <alert id>`` (a retried delivery may arrive
twice), and, with a secret, ``X-Dragoman-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`` so the receiver can tell the alert came from dragoman.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from dragoman.alerts.base import Alert, AlertObserver, notify

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))

Queued = tuple[Alert, "asyncio.Future[bool] | None"]


@dataclass(slots=True)
class WebhookStats:
    queued: int = 0
    delivered: int = 0
    retries: int = 0
    failed: int = 0
    """Given up: retries exhausted, or a final 4xx answer."""
    dropped: int = 0
    """Not delivered: the queue was full, or the sink closed before it was (queued or in
    flight)."""


class WebhookSink:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        queue_size: int = 1000,
        secret: bytes | None = None,
        drain_timeout: float = 5.0,
        observer: AlertObserver | None = None,
    ) -> None:
        self.url = url
        self.name = f"webhook:{urlsplit(url).netloc}"
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._secret = secret
        self._drain_timeout = drain_timeout
        self._observer = observer
        self._queue: asyncio.Queue[Queued] = asyncio.Queue(maxsize=queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = WebhookStats()

    # -- the caller's side -------------------------------------------------------------------

    def emit(self, alert: Alert) -> None:
        self._take(alert, None)

    def deliver(self, alert: Alert) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._take(alert, future)
        return future

    def _take(self, alert: Alert, future: asyncio.Future[bool] | None) -> None:
        if self._closed:
            self._drop(alert, "the sink is closed", future)
            return
        try:
            self._queue.put_nowait((alert, future))
        except asyncio.QueueFull:
            self._drop(alert, "the queue is full", future)
            return
        self.stats.queued += 1

    def _drop(self, alert: Alert, why: str, future: asyncio.Future[bool] | None = None) -> None:
        _settle(future, False)
        self.stats.dropped += 1
        if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
            log.warning(
                "%s dropped alert %s (%s; %d dropped so far)",
                self.name,
                alert.id,
                why,
                self.stats.dropped,
            )
        notify(self._observer, self.name, alert, "dropped")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
            self._task = asyncio.create_task(self._deliver_forever(), name=self.name)

    async def close(self) -> None:
        """Stop taking alerts, deliver what is queued for up to ``drain_timeout`` seconds,
        then give up on the rest (counted as dropped)."""
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_timeout):
                    await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            alert, future = self._queue.get_nowait()
            self._drop(alert, "undelivered at close", future)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        while True:
            alert, future = await self._queue.get()
            try:
                await self._deliver(alert)
            except asyncio.CancelledError:
                self._drop(alert, "cut short at close", future)
                raise
            except Exception:  # never let one alert stop the sink
                log.exception("%s: delivering alert %s failed", self.name, alert.id)
                self.stats.failed += 1
                notify(self._observer, self.name, alert, "failed")
            finally:
                self._queue.task_done()
            _settle(future, True)  # delivered, or finally failed (logged)

    def _headers(self, body: bytes, alert: Alert) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": alert.id,
            "User-Agent": "dragoman-alerts",
        }
        if self._secret is not None:
            stamp = str(int(time.time()))
            mac = hmac.new(self._secret, stamp.encode() + b"." + body, hashlib.sha256)
            headers["X-Dragoman-Signature"] = f"t={stamp},v1={mac.hexdigest()}"
        return headers

    async def _deliver(self, alert: Alert) -> None:
        assert self._session is not None
        body = json.dumps(alert.to_json(), separators=(",", ":")).encode()
        why = ""
        for attempt in range(self._retries + 1):
            if attempt:
                self.stats.retries += 1
                notify(self._observer, self.name, alert, "retried")
            retry_after: float | None = None
            try:
                async with self._session.post(
                    self.url,
                    data=body,
                    headers=self._headers(body, alert),
                    allow_redirects=False,
                ) as response:
                    if 200 <= response.status < 300:
                        self.stats.delivered += 1
                        notify(self._observer, self.name, alert, "delivered")
                        return
                    why = f"answered {response.status}"
                    if response.status not in RETRYABLE:
                        break
                    retry_after = _seconds(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = type(exc).__name__
            if attempt < self._retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        self.stats.failed += 1
        log.warning("%s: gave up on alert %s (%s)", self.name, alert.id, why)
        notify(self._observer, self.name, alert, "failed")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        ceiling = min(self._backoff * float(2**attempt), self._max_backoff)
        return ceiling * random.uniform(0.5, 1.0)  # jitter: instances do not retry in step


def _settle(future: asyncio.Future[bool] | None, done: bool) -> None:
    if future is not None and not future.done():
        future.set_result(done)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: use our own backoff
    return seconds if seconds >= 0 else None
