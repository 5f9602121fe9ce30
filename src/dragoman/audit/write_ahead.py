"""Writes are recorded before they are forwarded: the last stage of the pipeline.

A request's record is written when its answer is complete (step 8, with the upstream's
status and the latency). A replica that dies between forwarding a write and that moment
(SIGKILL, OOM, a lost node) would leave a change at the upstream that no record names. So
for every method that can change something, a ``forward`` record is written before the
request leaves: the principal, account, customer, operation and the ``jti`` and ``kid`` of
the token the upstream will receive, in a ``write(2)`` that outlives the process (with the
other records of its turn of the loop: :mod:`dragoman.audit.trail`). The usual ``request``
record follows with the outcome. If the ``forward`` record cannot be written, nothing is
forwarded (503 ``audit_unavailable``). Reads change nothing and keep one record.
"""

from __future__ import annotations

from typing import Any, Protocol

from dragoman.audit.record import request_record
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import AuditUnavailable

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EVENT = "forward"


class Trail(Protocol):
    async def commit(self, record: dict[str, Any]) -> bool: ...


class WriteAheadStage:
    name = "write_ahead"

    def __init__(self, trail: Trail) -> None:
        self._trail = trail

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.method in SAFE_METHODS:
            return
        if not await self._trail.commit(request_record(ctx, event=EVENT)):
            raise AuditUnavailable("audit_write_failed")
