"""RequestContext: the one typed object every stage reads and fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from dragoman.catalog.model import Operation
    from dragoman.identity.principal import Principal
    from dragoman.mapping.entity import AccountMapping
    from dragoman.pipeline.errors import Denial
    from dragoman.pipeline.report_only import WouldDeny
    from dragoman.tokens.mint import MintedToken


@dataclass(slots=True)
class RequestContext:
    """State of one request as it moves through the pipeline.

    Stages fill fields in order; a field is None until the stage that owns it has run.
    Nothing here holds a caller credential or a minted token in a form that is logged:
    ``minted`` keeps the token for the forwarder, and the audit record takes only its jti
    and kid.
    """

    request: web.Request
    """The incoming aiohttp request (headers and body stream)."""
    audit_id: str
    """Unique id of this request's audit record; echoed in problem bodies."""
    request_id: str
    """Correlation id sent upstream as X-Request-Id (a validated client value or fresh)."""
    received_at: float
    """Wall-clock time the request arrived (seconds since the epoch)."""
    started: float
    """Monotonic time the request arrived, for latency."""
    method: str
    """HTTP method, upper-case."""
    raw_path: str
    """Path as received, still percent-encoded, without the query; forwarded as is."""

    principal: Principal | None = None
    """Step 1: the verified caller."""
    operation: Operation | None = None
    """Step 3: the catalog operation this request is."""
    path_params: dict[str, str] = field(default_factory=dict)
    """Step 3: decoded path parameters of the matched template."""
    mapping: AccountMapping | None = None
    """Step 4: the caller's account mapping once found (also when it then refuses the
    request, so the audit record names it); authorised for the operation if the request
    went on."""
    forward_query: str | None = None
    """Customer binding: the raw query string to forward instead of the caller's (None:
    forward the caller's as received)."""
    forward_headers: dict[str, str] = field(default_factory=dict)
    """Customer binding: headers dragoman writes (inject mode); each replaces every caller
    header of that name."""
    forward_body: bytes | None = None
    """Customer binding: the request body, buffered and checked, forwarded instead of the
    caller's stream (None: the caller's body streams through unread)."""
    session: str | None = None
    """Step 2: the browser session whose CSRF pair held, as its audit reference (a hash of
    its id, never the id: the id is half of every token of the session)."""
    minted: MintedToken | None = None
    """Step 6: the scoped token for the upstream."""
    upstream_status: int | None = None
    """Step 7: status the upstream answered (None when nothing was forwarded)."""
    stream_error: str | None = None
    """Set when the answer was cut short after its status line was sent."""
    recorded: bool = False
    """Step 8 is done: the request's record was written (before the answer's last bytes,
    when it was forwarded)."""
    denial: Denial | None = None
    """Why the request was refused, when it was."""
    would_deny: list[WouldDeny] = field(default_factory=list)
    """What report-only rules would have refused (:mod:`dragoman.pipeline.report_only`)."""

    @property
    def query(self) -> str:
        """The raw query string to forward (no ``?``; empty for none): the customer
        binding's rewrite when it made one, else the caller's as received."""
        if self.forward_query is not None:
            return self.forward_query
        return self.request.raw_path.partition("?")[2]
