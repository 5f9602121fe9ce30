"""Browser sessions (SEMANTICS §5): the record, the store protocol, the in-memory store.

A session is made by the handshake and bound to the principal who made it. It holds the
randomness of its live CSRF token T(n) and, after a refresh, of T(n-1) until its grace
deadline. Rotation T(n) -> T(n+1) happens only when T(n) itself is presented: T(n) becomes
the previous token (live until ``now + grace``), the one before it dies at once. A refresh
that presents the previous token while it is still live (a second tab refreshing at the
same moment) changes nothing and learns the current token. Sessions expire at a fixed time
from their handshake; refreshes do not extend it.

Backends: :class:`MemorySessionStore` (one process, the default) and
:class:`dragoman.browser.redis_sessions.RedisSessionStore` (shared by instances). A store
that cannot answer, or an in-memory store at its cap (``browser.max_sessions``), raises
:class:`SessionStoreUnavailable`; the caller refuses the request (SEMANTICS §6).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dragoman.identity.principal import Principal
    from dragoman.settings import BrowserSettings


class SessionStoreUnavailable(Exception):
    """The session store cannot be reached or did not answer."""


@dataclass(frozen=True, slots=True)
class Session:
    """One browser session; ids and token randomness are base64url of 32 random bytes."""

    id: str
    subject: str
    """The principal the session is bound to: subject, issuer and cloud account."""
    issuer: str
    cloud_account: str | None
    created_at: float
    expires_at: float
    current: str
    """Randomness of the live token T(n)."""
    previous: str | None = None
    """Randomness of T(n-1), live until ``previous_until``."""
    previous_until: float = 0.0
    refreshes: int = 0

    def owned_by(self, principal: Principal) -> bool:
        return (
            self.subject == principal.subject
            and self.issuer == principal.issuer
            and self.cloud_account == principal.cloud_account
        )

    def is_live(self, randomness: str, now: float) -> bool:
        """Whether a token with this randomness is live now (constant-time comparisons)."""
        wanted = randomness.encode()
        live = hmac.compare_digest(wanted, self.current.encode())
        if self.previous is not None:
            in_grace = now < self.previous_until
            live |= hmac.compare_digest(wanted, self.previous.encode()) and in_grace
        return live

    def rotated(self, presented: str, fresh: str, now: float, grace: float) -> Session:
        """The session after a refresh presenting ``presented`` (unchanged unless it is T(n))."""
        if not hmac.compare_digest(presented.encode(), self.current.encode()):
            return self
        return replace(
            self,
            current=fresh,
            previous=self.current,
            previous_until=now + grace,
            refreshes=self.refreshes + 1,
        )


class SessionStore(Protocol):
    """Where sessions live. Every operation is one atomic step of the backend."""

    async def create(self, session: Session, now: float) -> None:
        """Store a new session until its ``expires_at``."""
        ...

    async def get(self, session_id: str, now: float) -> Session | None:
        """The session, or None when it does not exist or has expired."""
        ...

    async def rotate(
        self, session_id: str, presented: str, fresh: str, now: float, grace: float
    ) -> Session | None:
        """Apply :meth:`Session.rotated` atomically; the session after it, None if gone."""
        ...

    async def delete(self, session_id: str) -> None:
        """End the session (logout); deleting a missing session is not an error."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers (for /readyz); raise SessionStoreUnavailable
        when it does not."""
        ...

    async def close(self) -> None: ...


class MemorySessionStore:
    """Sessions in this process's memory: lost on restart, invisible to other processes.

    It holds at most ``max_sessions`` (``browser.max_sessions``). A creation at the cap first
    sweeps the expired sessions; if the store is still full it raises
    :class:`SessionStoreUnavailable` (the handshake answers 503 ``session_unavailable``):
    a flood of handshakes must not evict the live sessions of others.
    """

    SWEEP_EVERY = 1024
    """Creations between two sweeps of expired sessions."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._sessions: dict[str, Session] = {}
        self._created = 0
        self._max = max_sessions

    def __len__(self) -> int:
        """Sessions held, expired ones not swept yet included."""
        return len(self._sessions)

    def _sweep(self, now: float) -> None:
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}

    async def create(self, session: Session, now: float) -> None:
        self._created += 1
        if self._created % self.SWEEP_EVERY == 0:
            self._sweep(now)
        if session.id not in self._sessions and len(self._sessions) >= self._max:
            self._sweep(now)
            if len(self._sessions) >= self._max:
                raise SessionStoreUnavailable("session store full")
        self._sessions[session.id] = session

    async def get(self, session_id: str, now: float) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= now:
            del self._sessions[session_id]
            return None
        return session

    async def rotate(
        self, session_id: str, presented: str, fresh: str, now: float, grace: float
    ) -> Session | None:
        session = await self.get(session_id, now)
        if session is None:
            return None
        after = session.rotated(presented, fresh, now, grace)
        self._sessions[session_id] = after
        return after

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def ping(self) -> None:
        return None  # in this process: always there

    async def close(self) -> None:
        self._sessions.clear()


def open_session_store(settings: BrowserSettings) -> SessionStore:
    """The configured backend (Redis is imported only when configured)."""
    if settings.session_backend == "redis":
        from dragoman.browser.redis_sessions import RedisSessionStore

        if settings.session_redis_url is None:
            raise ValueError("the redis session backend needs session_redis_url")
        return RedisSessionStore.from_url(settings.session_redis_url)
    return MemorySessionStore(max_sessions=settings.max_sessions)
