"""An audit sink wrapper whose records of one event fail to write (a full disk)."""

from __future__ import annotations

from typing import Any


class FailingEvent:
    """Wraps the proxy's audit sink: a batch holding a record of ``event`` fails."""

    def __init__(self, inner: Any, event: str) -> None:
        self.inner, self.event = inner, event

    def write_many(self, batch: list[dict[str, Any]]) -> None:
        if any(record.get("event") == self.event for record in batch):
            raise OSError("disk full")
        self.inner.write_many(batch)

    def close(self) -> None:
        self.inner.close()
