"""The log sink: every alert, always, as one WARNING line of the ``dragoman.alerts`` logger
(through the redacting formatter of :mod:`dragoman.logs`)."""

from __future__ import annotations

import asyncio
import json
import logging

from dragoman.alerts.base import Alert, AlertObserver, notify, settled

LOGGER = "dragoman.alerts"
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


class LogSink:
    name = "log"

    def __init__(
        self, logger: logging.Logger | None = None, *, observer: AlertObserver | None = None
    ) -> None:
        self._log = logger or logging.getLogger(LOGGER)
        self._observer = observer
        self.emitted = 0

    def emit(self, alert: Alert) -> None:
        body = json.dumps(alert.to_json(), sort_keys=True, separators=(",", ":"))
        try:
            self._log.log(_LEVELS[alert.severity], "alert %s %s", alert.kind, body)
        except Exception:  # a broken handler must not reach the caller
            notify(self._observer, self.name, alert, "failed")
            return
        self.emitted += 1
        notify(self._observer, self.name, alert, "delivered")

    def deliver(self, alert: Alert) -> asyncio.Future[bool]:
        """Logged (or, a broken handler, finally failed): done with it either way."""
        self.emit(alert)
        return settled()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
