"""Builds the proxy's aiohttp application from settings: components and stages, once.

The request pipeline (SEMANTICS §1) is a tuple of stages built here at start; a request
runs them in order, then the forwarder. A Denial from any of them ends the request with a
problem+json answer. Whatever happens, the audit record is written and the security
headers are set.

Routes the proxy answers itself (never forwarded):
``/livez``, ``/readyz``, ``/.well-known/jwks.json``, ``/_dragoman/whoami``,
``/_dragoman/registration`` (POST links the caller's account, DELETE unlinks it;
:mod:`dragoman.mapping.http`) and ``/_dragoman/session`` (POST the browser session
handshake, ``/_dragoman/session/refresh`` rotates its CSRF token, DELETE logs out;
:mod:`dragoman.browser.session_http`), ``/_dragoman/client.js`` and
``/_dragoman/pages/NAME`` (the browser client and ``browser.pages_dir``;
:mod:`dragoman.browser.pages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.web_server import Server

from dragoman.alerts import AlertSink, open_alert_sinks
from dragoman.anomaly import AnomalyStage, open_anomaly_stage
from dragoman.audit.postgres import AuditShipper, open_audit_shipper
from dragoman.audit.record import masked_path, path_literals, request_record
from dragoman.audit.sink import AuditSink, open_audit_sink
from dragoman.audit.trail import AuditTrail
from dragoman.audit.write_ahead import WriteAheadStage
from dragoman.browser.cors import CorsPolicy
from dragoman.browser.csrf import CsrfStage, CsrfTokens, CsrfVerifier, load_csrf_key
from dragoman.browser.headers import answer_headers, security_headers
from dragoman.browser.pages import PageServer
from dragoman.browser.session_http import REFRESH_PATH, SESSION_PATH, SessionEndpoint
from dragoman.browser.sessions import SessionStore, open_session_store
from dragoman.browser.stage import BrowserChecksStage
from dragoman.catalog.binding import CustomerBindingStage
from dragoman.catalog.matcher import InvalidPath, RouteMatcher
from dragoman.catalog.model import Operation, operations_from_settings
from dragoman.catalog.stage import ResolveOperationStage
from dragoman.forward import Forwarder
from dragoman.identity.base import Authenticator
from dragoman.identity.factory import build_authenticators
from dragoman.identity.principal import Principal
from dragoman.identity.stage import AuthenticateStage
from dragoman.ids import random_hex, random_uuid
from dragoman.keys.factory import open_key_ring
from dragoman.keys.ring import KeyRing
from dragoman.limits.factory import open_rate_limits
from dragoman.limits.stage import RateLimitStage
from dragoman.logs import quiet_parser_refusals
from dragoman.mapping.factory import open_mapping_store
from dragoman.mapping.http import REGISTRATION_PATH, open_registration
from dragoman.mapping.maintenance import seal_plaintext
from dragoman.mapping.platform import PlatformClient
from dragoman.mapping.reconcile_schedule import ReconcileScheduler, open_scheduler
from dragoman.mapping.stage import MapAccountStage, MappingGate
from dragoman.mapping.store import MappingStore
from dragoman.observability import (
    Check,
    ProxyMetrics,
    Readiness,
    ping_probe,
    shared_metrics,
    sync_probe,
)
from dragoman.observability.in_flight import sample_in_flight
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    AuditUnavailable,
    Denial,
    InternalError,
    OriginDenied,
    Overloaded,
    RequestUnreadable,
)
from dragoman.pipeline.expect import check_expectation, close_if_waiting, defer_continue
from dragoman.pipeline.problem import problem_response
from dragoman.pipeline.recorded import recorded_answer
from dragoman.pipeline.stage import Stage, guard_stages
from dragoman.policy.roles import RolePolicy
from dragoman.policy.step_up import StepUpStage
from dragoman.settings import Settings
from dragoman.state import migrate
from dragoman.state.redis import warn_if_evicting
from dragoman.state.sql import make_engine
from dragoman.timeouts import HeadTimedServer, HeadTimeoutHandler
from dragoman.tokens.mint import TokenMinter
from dragoman.tokens.stage import MintTokenStage

log = logging.getLogger(__name__)

WHOAMI_GUARDS = ("authenticate", "browser_checks", "csrf")
"""The pipeline stages /_dragoman/whoami runs before it answers, in this order."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


@dataclass(slots=True)
class Proxy:
    """Everything a worker needs to serve requests, built once from settings."""

    settings: Settings
    authenticators: Sequence[Authenticator]
    store: MappingStore
    keys: KeyRing
    forwarder: Forwarder
    audit: AuditTrail
    cors: CorsPolicy
    catalog: list[Operation]
    gate: MappingGate
    policy: RolePolicy
    """The role policy (policy.roles): caps every role grant, for requests and whoami."""
    minter: TokenMinter
    platform: PlatformClient | None
    """Reads the upstream's customer records (None without mapping.platform.customer_operation
    in the catalog): registration and reconciliation use it."""
    stages: tuple[Stage, ...]
    headers: Mapping[str, str]
    routes: RouteMatcher
    sessions: SessionStore
    """Browser sessions (browser.session_backend)."""
    csrf: CsrfVerifier
    """Checks a request's CSRF pair against the sessions."""
    _store_watch: asyncio.Task[None] | None = None
    in_flight: int = 0
    """Proxied requests and decisions this worker is handling now (server.max_in_flight)."""
    in_flight_peak: int = 0
    """The most of them at once since the last :meth:`in_flight_sample`."""
    _in_flight_sampler: asyncio.Task[None] | None = None
    alerts: AlertSink | None = None
    reconcile: ReconcileScheduler | None = None
    """The scheduled reconciliation (None when reconcile.schedule is off)."""
    rate_limits: RateLimitStage | None = None
    """The rate-limit stage (limits), closed with the proxy: it may hold a Redis client."""
    anomaly: AnomalyStage | None = None
    """The anomaly stage (anomaly), closed with the proxy: it may hold a Redis client and
    its own alert sinks."""
    audit_shipper: AuditShipper | None = None
    """Copies the audit file into the audit database (audit.database_url; None: off)."""
    metrics: ProxyMetrics | None = None
    """The metric families the components feed (served by :mod:`dragoman.observability`)."""
    step_up: StepUpStage | None = None
    """The step-up stage (policy.step_up): whoami names what a sign-in lacks."""
    readiness: Readiness = field(init=False)
    """The named checks of /readyz, built once from the components."""
    whoami_guards: tuple[Stage, ...] = field(init=False)
    """The first stages, which whoami runs (:data:`WHOAMI_GUARDS`)."""
    path_literals: frozenset[str] = field(init=False)
    """The catalog paths' literal segments: what a refused path's record keeps of it."""

    def __post_init__(self) -> None:
        self.readiness = Readiness(self._readiness_checks())
        self.whoami_guards = guard_stages(self.stages[:3], WHOAMI_GUARDS, "whoami")
        self.path_literals = path_literals(self.catalog)

    def _readiness_checks(self) -> list[Check]:
        """In the order /readyz lists failures. Backends kept in this process (memory)
        always answer; a Redis backend is pinged; nothing here names a URL or a host."""
        audit = self.audit
        checks = [
            Check("state_store", ping_probe(self.store.ping)),
            Check("signing_key", ping_probe(self.keys.check_signing)),
            Check("audit_sink", sync_probe(lambda: not audit.broken)),
        ]
        shipper = self.audit_shipper
        if shipper is not None:
            checks.append(Check("audit_shipper", sync_probe(lambda: not shipper.failing)))
        # With limits.fallback = "local" the operator keeps reads going while Redis is down:
        # the Redis backends then only degrade this replica (each request still fails
        # closed on its own: writes, sensitive operations and browser sessions get 503).
        partial = self.settings.limits.fallback == "local"
        checks.append(Check("browser_sessions", ping_probe(self.sessions.ping), partial))
        if self.rate_limits is not None:
            checks.append(Check("rate_limits", ping_probe(self.rate_limits.ping), partial))
        if self.anomaly is not None:
            checks.append(Check("anomaly_state", ping_probe(self.anomaly.ping), partial))
        return checks

    # -- the pipeline ----------------------------------------------------------------------

    def context(self, request: web.Request) -> RequestContext:
        offered = request.headers.get("X-Request-Id", "")
        if not (self.settings.server.trust_request_id and _REQUEST_ID.match(offered)):
            offered = random_hex()
        return RequestContext(
            request=request,
            audit_id=random_uuid(),
            request_id=offered,
            received_at=time.time(),
            started=time.monotonic(),
            method=request.method,
            raw_path=request.raw_path.partition("?")[0],
        )

    def base_headers(self, request: web.Request, ctx: RequestContext) -> dict[str, str]:
        return answer_headers(self.headers, self.cors, request, ctx.request_id)

    def admit(self) -> bool:
        """Count one more request in flight, or False when the worker is at
        ``server.max_in_flight`` (the caller then refuses it: :class:`Overloaded`). An
        admitted request is let go with :meth:`release`."""
        limit = self.settings.server.max_in_flight
        if limit and self.in_flight >= limit:
            return False
        self.in_flight += 1
        if self.in_flight > self.in_flight_peak:
            self.in_flight_peak = self.in_flight
        return True

    def release(self) -> None:
        self.in_flight -= 1

    def in_flight_sample(self) -> tuple[int, int]:
        """The requests in flight now and the most at once since the previous call."""
        peak, self.in_flight_peak = self.in_flight_peak, self.in_flight
        return self.in_flight, peak

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._handle(request)
        close_if_waiting(request, response)
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ctx = self.context(request)
        event = "request"
        admitted = self.admit()
        try:
            if not admitted:
                raise Overloaded()
            if self.audit.broken:
                raise AuditUnavailable()
            if CorsPolicy.is_preflight(request):
                event = "preflight"
                return self._preflight(request, ctx)
            check_expectation(request)
            self.forwarder.check_body(request)
            for stage in self.stages:
                await stage(ctx)
            # The record is written before the caller can hold the whole answer, so an
            # answer a caller received always has its record, whatever happens next.
            return await self.forwarder.forward(
                ctx,
                self.cors.response_headers(request),
                before_complete=lambda: self.commit(ctx, event),
            )
        except Denial as denial:
            ctx.denial = denial
            # A refused preflight must not look approved: no CORS headers on it.
            headers = (
                {**self.headers, "X-Request-Id": ctx.request_id}
                if event == "preflight"
                else self.base_headers(request, ctx)
            )
            return problem_response(denial, audit_id=ctx.audit_id, headers=headers)
        except Exception:
            log.exception("unexpected error in the pipeline (audit id %s)", ctx.audit_id)
            ctx.denial = InternalError()
            return problem_response(
                ctx.denial, audit_id=ctx.audit_id, headers=self.base_headers(request, ctx)
            )
        finally:
            if admitted:
                self.release()
            if not ctx.recorded:
                self.record(ctx, event)

    def refuse_unreadable(self, request: web.BaseRequest, status: int) -> web.StreamResponse:
        """What the HTTP parser refused (status as it chose, 400 mostly): answered
        problem+json ``bad_request`` and recorded like any refusal, with what could be read
        of it (the peer's address; no method or path)."""
        # The application's request factory makes every request a web.Request, the
        # refused ones included.
        ctx = self.context(cast(web.Request, request))
        ctx.denial = parser_denial(status)
        self.record(ctx, "request")
        return problem_response(
            ctx.denial, audit_id=ctx.audit_id, headers=self.headers, status=status
        )

    def record(self, ctx: RequestContext, event: str) -> None:
        self.audit.write(self._final_record(ctx, event))

    async def commit(self, ctx: RequestContext, event: str) -> bool:
        """:meth:`record`, in the group of records written at the next turn of the loop."""
        return await self.audit.commit(self._final_record(ctx, event))

    def _final_record(self, ctx: RequestContext, event: str) -> dict[str, object]:
        """The request's one record; from here on it counts as recorded."""
        ctx.recorded = True
        if ctx.operation is not None:
            return request_record(ctx, event=event)
        route = self._route_of(ctx)
        if route is not None:
            return request_record(ctx, event=event, route=route)
        path = masked_path(ctx.raw_path, self.catalog, self.path_literals)
        return request_record(ctx, event=event, path=path)

    def _route_of(self, ctx: RequestContext) -> Operation | None:
        """The operation a refused request's path names, for its audit record only."""
        try:
            match = self.routes.match(ctx.method, ctx.raw_path)
        except InvalidPath:
            return None
        return match.operation if match is not None else None

    def _preflight(self, request: web.Request, ctx: RequestContext) -> web.StreamResponse:
        approved = self.cors.preflight_headers(request)
        if approved is None:
            raise OriginDenied("preflight_refused")
        response = web.Response(status=204)
        response.headers.update(self.headers)
        response.headers.update(approved)
        return response

    # -- endpoints the proxy answers itself --------------------------------------------------

    def _step_up_hints(
        self, principal: Principal, operations: Sequence[str]
    ) -> dict[str, dict[str, object]]:
        """For each of ``operations`` whose tier's step-up the sign-in does not meet: why,
        and what a new sign-in must show (RFC 9470's max_age and acr_values)."""
        if self.step_up is None:
            return {}
        tiers = {operation.id: operation.tier for operation in self.catalog}
        hints = {}
        for operation in operations:
            tier = tiers.get(operation)
            unmet = None if tier is None else self.step_up.unmet(principal, tier)
            if unmet is not None:
                hints[operation] = unmet
        return hints

    def _json(self, data: object, status: int = 200, cache: str = "no-store") -> web.Response:
        response = web.Response(
            status=status, body=json.dumps(data).encode(), content_type="application/json"
        )
        response.headers.update(self.headers)
        response.headers["Cache-Control"] = cache
        return response

    async def livez(self, request: web.Request) -> web.StreamResponse:
        return self._json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """200 when every dependency answers and a signing key is current; else 503 with
        the names of the failing checks (:meth:`_readiness_checks`), nothing more. 200
        ``degraded`` when only partial checks fail (the replica serves what it can)."""
        problems, serving = await self.readiness.state()
        if not problems:
            return self._json({"status": "ready"})
        if serving:
            return self._json({"status": "degraded", "failing": problems})
        return self._json({"status": "unavailable", "failing": problems}, status=503)

    async def jwks(self, request: web.Request) -> web.StreamResponse:
        if not self.keys.fresh():
            # A stale view may lack a pending key or still list one retired meanwhile, and a
            # verifier would cache it for jwks_max_age: refuse, as /readyz does (a verifier
            # keeps the set it has, and the load balancer takes this replica out).
            return self._json({"status": "unavailable", "failing": ["signing_key"]}, status=503)
        response = web.Response(body=self.keys.jwks_body(), content_type="application/jwk-set+json")
        response.headers.update(self.headers)
        response.headers["Cache-Control"] = (
            f"public, max-age={int(self.settings.keys.jwks_max_age)}"
        )
        return response

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        """The caller's principal, account, customer and the operations granted to it, and
        which of those its sign-in is not recent or strong enough for (``step_up``).

        Widgets use it to build paths that name their customer, to show only what the
        caller may do, and to ask for a fresh sign-in before an operation that needs one
        rather than after its refusal. It runs authentication and the mapping checks like
        any request.
        """
        response = await self._whoami_recorded(request)
        close_if_waiting(request, response)
        return response

    async def _whoami_recorded(self, request: web.Request) -> web.StreamResponse:
        """:meth:`whoami`'s answer or refusal, with its record written first."""
        ctx = self.context(request)

        async def answer() -> web.StreamResponse:
            if self.audit.broken:
                raise AuditUnavailable()
            check_expectation(request)
            return await self._whoami(request, ctx)

        # It names the caller's customer: a read of the mapping no record names. (As in
        # handle(), a bug answers problem+json 500 and is recorded as one.)
        return await recorded_answer(
            ctx,
            answer,
            record=lambda: self.audit.write(request_record(ctx, event="whoami")),
            headers=lambda: self.base_headers(request, ctx),
            where="whoami",
        )

    async def _whoami(self, request: web.Request, ctx: RequestContext) -> web.Response:
        """The answer of :meth:`whoami`, or the denial that stops it. It runs the
        pipeline's guards as any request does: authentication, then (from a browser) the
        CSRF pair, since the answer names the caller's customer."""
        for stage in self.whoami_guards:
            await stage(ctx)
        assert ctx.principal is not None
        if self.rate_limits is not None:
            # Each answer reads the mapping and writes a record: counted as a read.
            await self.rate_limits.check_account(ctx, "read")
        ctx.mapping = await self.gate.find(ctx.principal)
        self.gate.check(ctx.mapping)  # after: the audit record names a refusing mapping
        operations = ctx.mapping.allowed_operations(ctx.principal, self.catalog, self.policy)
        response = self._json(
            {
                "principal": ctx.principal.subject,
                "cloud_account": ctx.principal.cloud_account,
                "customer": ctx.mapping.payment_customer,
                "operations": operations,
                "step_up": self._step_up_hints(ctx.principal, operations),
            }
        )
        response.headers.update(self.cors.response_headers(request))
        response.headers["X-Request-Id"] = ctx.request_id
        return response

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, migrate_store: bool) -> None:
        if migrate_store:
            await migrate.upgrade(self.store.engine)
            await seal_plaintext(self.store)
        await self.forwarder.start()
        await self.keys.start()
        for url, holds in self._shared_counters():
            await warn_if_evicting(url, holds)
        if self.alerts is not None:
            await self.alerts.start()
        if self.reconcile is not None:
            self.reconcile.start()
        if self.audit_shipper is not None:
            self.audit_shipper.start()
        if self.metrics is not None:
            self._in_flight_sampler = asyncio.create_task(
                sample_in_flight(
                    self.in_flight_sample, self.metrics.in_flight, self.metrics.in_flight_peak
                )
            )
        if self.settings.mapping.cache_ttl > 0:
            self._store_watch = asyncio.create_task(
                self.store.watch(self.settings.store.health_interval)
            )

    def _shared_counters(self) -> list[tuple[str, str]]:
        """The Redis servers holding what an eviction would turn into an allow."""
        limits, anomaly = self.settings.limits, self.settings.anomaly
        found: dict[str, list[str]] = {}
        if limits.backend == "redis" and limits.redis_url:
            found.setdefault(limits.redis_url, []).append("rate limits")
        if anomaly.backend == "redis" and anomaly.redis_url:
            found.setdefault(anomaly.redis_url, []).append("anomaly state")
        return [(url, " and ".join(holds)) for url, holds in found.items()]

    async def close(self) -> None:
        if self.reconcile is not None:
            await self.reconcile.close()  # a run in progress resumes at the next start
        if self.alerts is not None:
            await self.alerts.close()
        if self._in_flight_sampler is not None:
            self._in_flight_sampler.cancel()
            self._in_flight_sampler = None
        if self._store_watch is not None:
            # Wait for the cancelled ping to give its connection back before the engine is
            # disposed; a ping cut off mid-query would otherwise wait forever.
            self._store_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_watch
            self._store_watch = None
        await self.forwarder.close()
        for authenticator in self.authenticators:
            await authenticator.close()
        if self.platform is not None:
            await self.platform.close()
        await self.keys.close()
        await self.sessions.close()
        await self.store.close()
        if self.rate_limits is not None:
            await self.rate_limits.close()
        if self.anomaly is not None:
            await self.anomaly.close()
        self.audit.close()
        if self.audit_shipper is not None:
            # After the sink's close: its closing checkpoint is shipped too.
            await self.audit_shipper.close()


def open_platform_client(
    settings: Settings, catalog: list[Operation], minter: TokenMinter
) -> PlatformClient | None:
    wanted = settings.mapping.platform.customer_operation
    operation = next((op for op in catalog if op.id == wanted), None)
    if operation is None:
        return None
    return PlatformClient(
        settings.mapping.platform,
        operation,
        upstream_url=settings.upstream.url,
        minter=minter,
        issuer=settings.tokens.issuer,
    )


def build_proxy(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    audit_sink: AuditSink | None = None,
) -> Proxy:
    """Every component and the stage chain, from settings."""
    # With metrics off nothing serves the families, so nothing counts into them: under load
    # the counting cost ~2.5% of a worker's CPU (a lock per increment, and with several
    # workers a write to prometheus_client's multiprocess files).
    metrics = shared_metrics() if settings.metrics.enabled else None
    tls = settings.server.tls
    authenticators = build_authenticators(
        settings.identity,
        clock=clock,
        jwks_fetched=None if metrics is None else metrics.jwks_meter(),
        client_ca_file=tls.client_ca_file if tls is not None else None,
    )
    catalog = operations_from_settings(settings.catalog)
    engine = make_engine(settings.store.database_url, pool_size=settings.store.pool_size)
    store = open_mapping_store(settings, engine)
    keys = open_key_ring(settings.keys, settings.store, engine, clock=clock)
    headers = security_headers(settings.browser)
    cors = CorsPolicy(settings.browser.allowed_origins, {op.method for op in catalog})
    gate = MappingGate(
        store,
        stale_after=settings.mapping.stale_after,
        clock=clock,
        observe_age=None if metrics is None else metrics.observe_mapping_age(),
    )
    policy = RolePolicy.from_settings(settings.policy)
    minter = TokenMinter(
        keys,
        issuer=settings.tokens.issuer,
        audience=settings.upstream.audience,
        ttl=settings.tokens.ttl,
        clock=clock,
    )
    routes = RouteMatcher(catalog)
    sessions = open_session_store(settings.browser)
    csrf = CsrfVerifier(CsrfTokens(load_csrf_key(settings.browser)), sessions, clock=clock)
    rate_limits = open_rate_limits(
        settings.limits,
        key=store.codec.account_index,
        clock=clock,
        observe=None if metrics is None else metrics.rate_limit_meter(),
    )
    alerts = open_alert_sinks(settings.alerts)
    sink_name = settings.audit.sink if audit_sink is None else "custom"
    audit = AuditTrail(
        audit_sink or open_audit_sink(settings.audit, clock=clock),
        None if metrics is None else metrics.request_meter(sink_name),
    )
    stages: tuple[Stage, ...] = (
        AuthenticateStage(authenticators),
        BrowserChecksStage(cors),
        CsrfStage(csrf, settings.browser.csrf),
        ResolveOperationStage(routes),
        (step_up := StepUpStage(settings.policy.step_up, clock=clock)),
        MapAccountStage(gate, policy),
        rate_limits,
        CustomerBindingStage(
            max_body_bytes=settings.server.max_body_bytes,
            body_timeout=settings.server.body_timeout,
        ),
        (
            anomaly := open_anomaly_stage(
                settings, catalog, alerts=alerts, account_key=store.codec.account_index, clock=clock
            )
        ),
        MintTokenStage(minter, settings.upstream.url),
        WriteAheadStage(audit),
    )
    platform = open_platform_client(settings, catalog, minter)
    return Proxy(
        settings=settings,
        authenticators=authenticators,
        store=store,
        keys=keys,
        forwarder=Forwarder(
            settings.upstream,
            max_body_bytes=settings.server.max_body_bytes,
            security_headers=headers,
            body_timeout=settings.server.body_timeout,
            write_timeout=settings.server.write_timeout,
        ),
        audit=audit,
        audit_shipper=None if audit_sink is not None else open_audit_shipper(settings.audit),
        cors=cors,
        catalog=catalog,
        gate=gate,
        policy=policy,
        minter=minter,
        platform=platform,
        alerts=alerts,
        reconcile=open_scheduler(
            settings,
            store,
            platform,
            alerts,
            audit=audit.write,
            audit_many=audit.write_many,
            clock=clock,
        ),
        stages=stages,
        headers=headers,
        routes=routes,
        sessions=sessions,
        csrf=csrf,
        rate_limits=rate_limits,
        anomaly=anomaly,
        metrics=metrics,
        step_up=step_up,
    )


PROXY_KEY = web.AppKey("proxy", Proxy)


RefusalAnswer = Callable[[web.BaseRequest, int], web.StreamResponse]
"""The answer to a request the HTTP parser refused, and the status aiohttp chose."""


class ProblemRequestHandler(HeadTimeoutHandler):
    """A connection whose request head must arrive within ``server.header_timeout``
    (:class:`~dragoman.timeouts.HeadTimeoutHandler`), and which answers what the HTTP
    parser refuses with its server's :attr:`ProblemServer.answer`. aiohttp's own answer is
    the parser's message as text/plain, and that message quotes the refused line: a bearer
    token, a cookie (SEMANTICS §7)."""

    def __init__(self, manager: Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        assert isinstance(manager, ProblemServer)
        self._answer = manager.answer

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the refusal (one line: ParserRefusalFilter) and raises
        # when part of an answer has left already; its text answer is not used.
        super().handle_error(request, status, exc, message)
        response = self._answer(request, status)
        response.force_close()
        return response


class ProblemServer(HeadTimedServer):
    """Connections that are :class:`ProblemRequestHandler`, answering with :attr:`answer`
    (a class of it per runner: :class:`ProxyRunner`)."""

    handler = ProblemRequestHandler
    answer: RefusalAnswer


class ProxyRunner(web.AppRunner):
    """An :class:`~aiohttp.web.AppRunner` whose connections are
    :class:`ProblemRequestHandler`: what the parser refuses is answered with ``answer``,
    and a request head must arrive within ``header_timeout``."""

    def __init__(
        self,
        app: web.Application,
        *,
        answer: RefusalAnswer,
        header_timeout: float,
        **options: Any,
    ) -> None:
        super().__init__(app, **options)
        self._server_class = type(
            "ProxyServer",
            (ProblemServer,),
            {"answer": staticmethod(answer), "header_timeout": header_timeout},
        )

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # aiohttp builds its Server itself (Application._make_handler); the subclass only
        # changes which request handler a new connection gets.
        server.__class__ = self._server_class
        return server


def proxy_runner(
    app: web.Application,
    settings: Settings,
    *,
    answer: RefusalAnswer | None = None,
    **options: Any,
) -> web.AppRunner:
    """The runner of a worker's application, without aiohttp's access log (the audit trail
    records requests, redacted). The header parser lets through twice the longest accepted
    bearer token, so an oversized token is refused by the authenticator (401, audited)
    rather than by the parser. Request bodies are never decompressed: a content-coded body
    is forwarded as sent, so its bytes always match the Content-Length the upstream is told
    (a body inflated on the way would run past it, into a second request). What the parser
    refuses is logged as one line, not a traceback (:class:`~dragoman.logs.ParserRefusalFilter`),
    and answered by ``answer`` (default: the application's proxy records it).

    Slow callers: a request head must be whole within ``server.header_timeout`` (aiohttp
    has no such limit: :class:`~dragoman.timeouts.HeadTimeoutHandler`), and a kept-alive
    connection is closed ``server.keepalive_timeout`` after an answer without a next
    request (aiohttp's default is an hour)."""
    field = max(8190, 2 * settings.identity.max_token_bytes + 1024)
    quiet_parser_refusals()
    if answer is None:
        proxy = app.get(PROXY_KEY)
        answer = proxy.refuse_unreadable if proxy is not None else _unreadable
    return ProxyRunner(
        app,
        answer=answer,
        header_timeout=settings.server.header_timeout,
        keepalive_timeout=settings.server.keepalive_timeout,
        access_log=None,
        max_field_size=field,
        auto_decompress=False,
        **options,
    )


def _unreadable(request: web.BaseRequest, status: int) -> web.StreamResponse:
    """What the parser refused, answered without a proxy to record it (a listener of
    its own): problem+json, no record."""
    denial = parser_denial(status)
    return problem_response(denial, audit_id=random_uuid(), headers={}, status=status)


def parser_denial(status: int) -> Denial:
    """The denial of what aiohttp answers itself: a request its parser refused, or (500)
    an exception a handler let through."""
    return InternalError() if status >= 500 else RequestUnreadable()


def build_app(
    settings: Settings,
    *,
    migrate_store: bool | None = None,
    clock: Callable[[], float] = time.time,
    audit_sink: AuditSink | None = None,
) -> web.Application:
    """The aiohttp application of one worker."""
    proxy = build_proxy(settings, clock=clock, audit_sink=audit_sink)
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[PROXY_KEY] = proxy
    app.router.add_get("/livez", proxy.livez, allow_head=False)
    app.router.add_get("/readyz", proxy.readyz, allow_head=False)
    app.router.add_get("/.well-known/jwks.json", proxy.jwks, allow_head=False)
    app.router.add_get(
        "/_dragoman/whoami", proxy.whoami, allow_head=False, expect_handler=defer_continue
    )
    sessions = SessionEndpoint(
        proxy.csrf,
        lifetime=settings.browser.session_lifetime,
        grace=settings.browser.csrf_grace,
        guards=proxy.stages[:2],
        cors=proxy.cors,
        headers=proxy.headers,
        audit=proxy.audit,
        context=proxy.context,
        limit=proxy.rate_limits.check_session if proxy.rate_limits else None,
        clock=clock,
    )
    PageServer(settings.browser, proxy.headers, unknown=proxy.handle).add_routes(app)
    # Each refuses an expectation itself (417 problem+json, recorded), never aiohttp's text.
    app.router.add_post(SESSION_PATH, sessions.handshake, expect_handler=defer_continue)
    app.router.add_post(REFRESH_PATH, sessions.refresh, expect_handler=defer_continue)
    app.router.add_delete(SESSION_PATH, sessions.logout, expect_handler=defer_continue)
    if settings.mapping.registration.enabled:
        registration = open_registration(
            settings,
            store=proxy.store,
            platform=proxy.platform,
            audit=proxy.audit,
            catalog=proxy.catalog,
            guards=proxy.stages[:3],
            cors=proxy.cors,
            headers=proxy.headers,
            context=proxy.context,
            limit=proxy.rate_limits.check_account if proxy.rate_limits else None,
            clock=clock,
        )
        app.router.add_post(REGISTRATION_PATH, registration.create, expect_handler=defer_continue)
        app.router.add_delete(REGISTRATION_PATH, registration.delete, expect_handler=defer_continue)
    app.router.add_route("*", "/{tail:.*}", proxy.handle, expect_handler=defer_continue)
    do_migrate = settings.store.auto_migrate if migrate_store is None else migrate_store

    async def on_startup(_: web.Application) -> None:
        await proxy.start(do_migrate)

    async def on_cleanup(_: web.Application) -> None:
        await proxy.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
