"""The decision listener: ``/auth_request`` (nginx) and ``/ext_authz/...`` (Envoy).

A decision runs the proxy's own stages, built once, with three differences that come from
not forwarding:

- authentication never reads a client certificate (the connection is the gateway's, so its
  certificate would be the gateway's own; settings refuse a decision listener with mTLS as
  the only authenticator);
- a customer binding cannot rewrite the query or the body (the gateway forwards what the
  caller sent), so an inject binding there is enforced;
- there is no separate ``forward`` record: the decision's own record is written before the
  answer leaves, and an allow whose record could not be written is turned into 503
  ``audit_unavailable``, so the gateway never forwards a request that no record names.

Everything else (CSRF, the mapping and its freshness, the role policy, step-up, the rate
limits, anomaly rules, minting with the current key) is the same code, with the same codes
and the same audit record (event ``decision``).

Before any of it, the listener checks who is asking: a connection whose own address is not
in ``decision.allowed_peers`` (or that has none) is refused 403 ``peer_not_allowed`` on
every route, recorded like any refusal, and nothing else runs (:mod:`dragoman.decision.peers`).
Only then is X-Forwarded-For believed. With ``decision.tls`` the listener speaks HTTPS only,
and with its ``client_ca_file`` a gateway without a certificate from those CAs fails the
handshake, before the address check ever sees a request.
"""

from __future__ import annotations

import contextlib
import logging
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Handler

from dragoman.app import Proxy, parser_denial, proxy_runner
from dragoman.catalog.binding import CustomerBindingStage
from dragoman.catalog.overrides import refuse_override_headers
from dragoman.decision import answers
from dragoman.decision.original import (
    NGINX_METHOD,
    NGINX_TARGET,
    as_original,
    client_address,
    envoy_original,
    nginx_original,
)
from dragoman.decision.peers import AllowedPeers, PeerNotAllowed
from dragoman.identity.mtls import MtlsAuthenticator
from dragoman.identity.stage import AuthenticateStage
from dragoman.ids import random_hex
from dragoman.pipeline.errors import (
    AuditUnavailable,
    Denial,
    InternalError,
    OperationUnknown,
    Overloaded,
    PayloadTooLarge,
)
from dragoman.pipeline.stage import Stage
from dragoman.settings import DecisionSettings
from dragoman.side_listener import SideListener
from dragoman.tls import ServerTls

log = logging.getLogger(__name__)

NGINX_PATH = "/auth_request"
ENVOY_PREFIX = "/ext_authz"
EVENT = "decision"
PARTIAL_BODY = "x-envoy-auth-partial-body"


def decision_stages(proxy: Proxy) -> tuple[Stage, ...]:
    """The proxy's stages as a decision runs them (see the module's docstring)."""
    stages: list[Stage] = []
    for stage in proxy.stages:
        if stage.name == "authenticate":
            stages.append(
                AuthenticateStage(
                    [a for a in proxy.authenticators if not isinstance(a, MtlsAuthenticator)]
                )
            )
        elif stage.name == "customer_binding":
            stages.append(
                CustomerBindingStage(
                    max_body_bytes=proxy.settings.server.max_body_bytes,
                    body_timeout=proxy.settings.server.body_timeout,
                    rewrites=False,
                )
            )
        elif stage.name != "write_ahead":
            stages.append(stage)
    return tuple(stages)


class DecisionEndpoint:
    def __init__(self, proxy: Proxy, settings: DecisionSettings) -> None:
        self._proxy = proxy
        self._trust_forwarded_for = settings.trust_forwarded_for
        self._stages = decision_stages(proxy)
        self.peers = AllowedPeers(settings.allowed_peers)

    @web.middleware
    async def only_allowed_peers(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Every route of the listener (decisions, probes, unknown paths) answers allowed
        peers only. ``request.remote`` is the connection's own address here: nothing before
        this re-addresses the request."""
        if self.peers.allows(request.remote):
            return await handler(request)
        return await self._refuse_peer(request)

    async def _refuse_peer(self, request: web.Request) -> web.StreamResponse:
        """403 ``peer_not_allowed``, recorded like any refusal (event ``decision``) and
        nothing else: no admission, no stage, no token. For the record only, a check request
        is read as the caller's (so a customer in its target is kept out, as a template);
        the record's address is the connection's, never a forwarded one."""
        proxy = self._proxy
        peer = request.remote
        denial = _peer_denial(peer)
        envoy = request.raw_path.startswith(ENVOY_PREFIX + "/")
        nginx = request.raw_path.partition("?")[0] == NGINX_PATH
        asked = request
        if envoy or nginx:
            with contextlib.suppress(Denial):  # unreadable: recorded as the check request
                asked = self._asked(request, envoy=envoy, remote=None)
        ctx = proxy.context(asked)
        # server.trust_request_id is trust in the gateway: a stranger's id is not believed.
        ctx.request_id = random_hex()
        ctx.denial = denial
        await proxy.commit(ctx, EVENT)
        headers = proxy.base_headers(asked, ctx)
        # nginx reads 401/403 only and the problem from headers; anything else asking here
        # gets the problem itself (403 either way).
        return answers.deny(denial, ctx, headers, envoy=not nginx)

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        """A path (or method) the listener does not serve, asked by an allowed peer: 404
        ``operation_unknown`` (reason ``decision_route_unknown``), problem+json and
        recorded, never aiohttp's text answer. A gateway pointed at a wrong path reads a
        refusal."""
        proxy = self._proxy
        ctx = proxy.context(request)
        ctx.denial = OperationUnknown("decision_route_unknown")
        await proxy.commit(ctx, EVENT)
        return answers.deny(ctx.denial, ctx, proxy.base_headers(request, ctx), envoy=True)

    def refuse_unreadable(self, request: web.BaseRequest, status: int) -> web.StreamResponse:
        """What the listener's HTTP parser refused (``status`` as aiohttp chose it), answered
        and recorded as a refused decision. A peer that is not allowed gets what it gets on
        every route: 403 ``peer_not_allowed``. Nothing of the request is known (not even
        which gateway asks: aiohttp hands over a placeholder for its method and path), so the
        answer is nginx's (403, the real status and problem in ``X-Dragoman-Status`` and
        ``X-Dragoman-Problem``): the one form both gateways relay as a refusal."""
        proxy = self._proxy
        # The application's request factory makes every request a web.Request, the
        # refused ones included.
        ctx = proxy.context(cast(web.Request, request))
        ctx.request_id = random_hex()  # nothing it sent is believed
        peer = request.remote
        if not self.peers.allows(peer):
            ctx.denial = _peer_denial(peer)
        else:
            ctx.denial = parser_denial(status)
        proxy.record(ctx, EVENT)
        return answers.deny(ctx.denial, ctx, proxy.headers, envoy=False)

    @staticmethod
    def _asked(request: web.Request, *, envoy: bool, remote: str | None) -> web.Request:
        """The check request re-addressed as the caller's request it asks about."""
        original = envoy_original(request, ENVOY_PREFIX) if envoy else nginx_original(request)
        drop = () if envoy else (NGINX_METHOD, NGINX_TARGET)
        return as_original(request, original, drop=drop, remote=remote)

    async def nginx(self, request: web.Request) -> web.StreamResponse:
        return await self._decide(request, envoy=False)

    async def envoy(self, request: web.Request) -> web.StreamResponse:
        return await self._decide(request, envoy=True)

    async def _decide(self, request: web.Request, *, envoy: bool) -> web.StreamResponse:
        proxy = self._proxy
        # The peer is allowed (only_allowed_peers): its X-Forwarded-For may be believed.
        remote = client_address(request, self._trust_forwarded_for)
        unreadable: Denial | None = None
        try:
            asked = self._asked(request, envoy=envoy, remote=remote)
        except Denial as denial:
            asked, unreadable = request, denial
        ctx = proxy.context(asked)
        admitted = proxy.admit()
        try:
            if not admitted:
                raise Overloaded()
            if unreadable is not None:
                raise unreadable
            if proxy.audit.broken:
                raise AuditUnavailable()
            if envoy and request.headers.get(PARTIAL_BODY, "").lower() == "true":
                # A body cut at the gateway's limit would be checked short of what is sent.
                raise PayloadTooLarge("body_partial")
            proxy.forwarder.check_body(asked)
            refuse_override_headers(asked.headers)
            for stage in self._stages:
                await stage(ctx)
        except Denial as denial:
            ctx.denial = denial
        except Exception:
            log.exception("unexpected error in a decision (audit id %s)", ctx.audit_id)
            ctx.denial = InternalError()
        finally:
            if admitted:
                proxy.release()
        if not await proxy.commit(ctx, EVENT) and ctx.denial is None:
            ctx.denial = AuditUnavailable("audit_write_failed")
        headers = proxy.base_headers(asked, ctx)
        if ctx.denial is not None:
            return answers.deny(ctx.denial, ctx, headers, envoy=envoy)
        return answers.allow(ctx, headers, envoy=envoy)


def _peer_denial(peer: str | None) -> PeerNotAllowed:
    """The refusal of a connection whose address is not allowed (or that has none)."""
    return PeerNotAllowed("peer_not_allowed" if peer else "peer_unknown")


def decision_app(
    proxy: Proxy, settings: DecisionSettings, endpoint: DecisionEndpoint | None = None
) -> web.Application:
    """The decision listener's application. It shares the worker's proxy, which the
    proxy's own application starts and closes."""
    if endpoint is None:
        endpoint = DecisionEndpoint(proxy, settings)
    app = web.Application(
        client_max_size=proxy.settings.server.max_body_bytes,
        middlewares=[endpoint.only_allowed_peers],
    )
    app.router.add_get("/livez", proxy.livez, allow_head=False)
    app.router.add_get("/readyz", proxy.readyz, allow_head=False)
    app.router.add_route("*", NGINX_PATH, endpoint.nginx)
    app.router.add_route("*", ENVOY_PREFIX + "/{tail:.*}", endpoint.envoy)
    app.router.add_route("*", "/{tail:.*}", endpoint.unknown)
    return app


class DecisionListener(SideListener):
    """The decision application on ``settings.host``:``settings.port``, over TLS when
    ``settings.tls`` is set (its client certificate check admits the gateway in the
    handshake; nothing after it reads that certificate)."""

    def __init__(
        self,
        proxy: Proxy,
        settings: DecisionSettings,
        *,
        shared: bool,
        tls: ServerTls | None = None,
    ) -> None:
        """``shared``: several workers listen on the port (SO_REUSEPORT). ``tls``: the
        listener's TLS, when its owner made it already (None: made from ``settings.tls``)."""
        if tls is None and settings.tls is not None:
            tls = ServerTls(settings.tls, listener="decision")
        super().__init__(settings.host, settings.port, shared=shared, backlog=2048, tls=tls)
        self._proxy = proxy
        self._settings = settings

    def make_runner(self) -> web.AppRunner:
        return decision_runner(self._proxy, self._settings)


def decision_runner(proxy: Proxy, settings: DecisionSettings) -> web.AppRunner:
    """The decision application's runner: what its HTTP parser refuses is answered and
    recorded as a refused decision (:meth:`DecisionEndpoint.refuse_unreadable`)."""
    endpoint = DecisionEndpoint(proxy, settings)
    return proxy_runner(
        decision_app(proxy, settings, endpoint),
        proxy.settings,
        answer=endpoint.refuse_unreadable,
    )
