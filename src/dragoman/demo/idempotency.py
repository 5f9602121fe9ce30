"""Idempotency keys of the sample payment platform (the convention of Stripe and the IETF
draft `Idempotency-Key` header): a client that did not hear the answer to a write retries it
with the same key, and the write happens once.

- The first request with a key runs, and its answer is kept.
- A later request with the key and the same method, path and body gets the kept answer,
  marked ``Idempotent-Replayed: true``, and runs nothing.
- The same key on another request: 422 ``idempotency_key_reused``.
- While the first is still running: 409 ``idempotency_in_progress`` (retry later).

Keys are scoped to the customer, so one customer's key never answers for another. Answers
that are the platform's own failures (5xx) are not kept: the retry runs again.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    fingerprint: str
    status: int
    body: bytes
    content_type: str


def _problem(status: int, code: str, title: str) -> web.Response:
    body = {"type": f"urn:demo-platform:{code}", "title": title, "status": status, "code": code}
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/problem+json"
    )


class IdempotencyKeys:
    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], KeptAnswer] = {}
        self._running: set[tuple[str, str]] = set()
        self.runs: Counter[tuple[str, str]] = Counter()
        """How many times the write of each (customer, key) actually ran (1 if all is well)."""
        self.replays = 0

    async def run(
        self,
        request: web.Request,
        customer_id: str,
        write: Callable[[], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        if key is None:
            return await write()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            return _problem(400, "idempotency_key_invalid", "The Idempotency-Key is malformed.")
        scoped = (customer_id, key)
        body = await request.read()
        fingerprint = hashlib.sha256(
            b"\0".join((request.method.encode(), request.path.encode(), body))
        ).hexdigest()
        kept = self._kept.get(scoped)
        if kept is not None:
            if kept.fingerprint != fingerprint:
                return _problem(
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used for another request.",
                )
            self.replays += 1
            replayed = web.Response(status=kept.status, body=kept.body)
            replayed.headers["Content-Type"] = kept.content_type
            replayed.headers["Idempotent-Replayed"] = "true"
            return replayed
        if scoped in self._running:
            return _problem(409, "idempotency_in_progress", "A request with this key is running.")
        self._running.add(scoped)
        try:
            self.runs[scoped] += 1
            answer: web.StreamResponse
            try:
                answer = await write()
            except web.HTTPException as refused:
                answer = refused
            if answer.status < 500 and isinstance(answer, web.Response):
                self._kept[scoped] = KeptAnswer(
                    fingerprint,
                    answer.status,
                    answer.body if isinstance(answer.body, bytes) else b"",
                    answer.headers.get("Content-Type", "application/octet-stream"),
                )
            if isinstance(answer, web.HTTPException):
                raise answer
            return answer
        finally:
            self._running.discard(scoped)

    @property
    def duplicated(self) -> int:
        """Writes that ran more than once for one key (0 if idempotency holds)."""
        return sum(n - 1 for n in self.runs.values() if n > 1)
