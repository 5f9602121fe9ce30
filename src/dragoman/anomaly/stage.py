"""The anomaly stage (SEMANTICS §1 step 5): counts sensitive operations per account and
applies the rules that fire.

It runs after the customer binding and before minting, so what it counts is a request that
is authenticated, resolved, authorised for its mapping and bound to the right customer:
an attempt everything before it allowed. Requests refused earlier are never counted (a
caller cannot run up someone else's counts, nor its own with requests that did nothing).
Every request that reaches it is counted, including one a rule refuses for a step-up
(the retry after a new sign-in counts again) and one that fails later at the upstream;
only a request refused by an active block is not counted (it does nothing, and a blocked
account must not learn a baseline from its own refused attempts).

Counts are keyed on the verified cloud account (the mapping's account, equal to the
principal's) through the mapping store's keyed blind index, never on an address or a
header the client chooses. Operations no rule
names pass untouched, and never touch the store. With the store unavailable, sensitive
operations are refused (503 ``anomaly_unavailable``): nothing is allowed uncounted.

What happens when rules fire, for this request: an active block, or a ``block`` rule
firing now, refuses it (403 ``anomaly_blocked`` with Retry-After); otherwise a firing
``step_up`` rule refuses it (401 ``insufficient_user_authentication``, the step-up answer
of :mod:`dragoman.policy.step_up`) unless the caller signed in within the rule's
``step_up_max_age``; ``alert`` rules let it go on. Every firing rule sends an alert.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable

from dragoman.alerts import AlertSink
from dragoman.anomaly.alerts import Applied, anomaly_alert
from dragoman.anomaly.rules import RuleBook
from dragoman.anomaly.state import AnomalyState, Hit, StateUnavailable, Verdict
from dragoman.identity.principal import Principal
from dragoman.ids import random_hex
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import AnomalyBlocked, AnomalyUnavailable, StepUpRequired
from dragoman.pipeline.report_only import report
from dragoman.policy.step_up import StepUpStage
from dragoman.settings import StepUpSettings

log = logging.getLogger(__name__)


def account_ref(cloud_account: str) -> str:
    """An unkeyed opaque key of an account, for a stage built without the proxy's keyed
    index (tests); a plain hash of a low-entropy id can be reversed by trying them all."""
    return hashlib.sha256(b"dragoman-anomaly\x00" + cloud_account.encode()).hexdigest()[:32]


MAX_ALERT_KEYS = 100_000
"""(rule, outcome, account) keys remembered for alert de-duplication."""


class AnomalyStage:
    name = "anomaly"

    def __init__(
        self,
        rules: RuleBook,
        state: AnomalyState,
        alerts: AlertSink,
        *,
        account_key: Callable[[str], str] = account_ref,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``account_key`` turns a cloud account into the opaque key of its counts and the
        ``account_ref`` of its alerts; the proxy passes the mapping store's keyed blind
        index, so neither Redis nor an alert reveals the account, and an alert's reference
        matches the ``account_index`` of the account's mapping audit records."""
        self._account_key = account_key
        self._rules = rules
        self._state = state
        self._alerts = alerts
        self._alerts_started = False
        self._clock = clock
        self._step_up = StepUpStage({}, clock=clock)
        self._alerted: dict[tuple[str, str, str], int] = {}
        """(rule, outcome, account) -> when its last alert went out (ms)."""
        self._longest_window_ms = max((r.window_ms for r in rules.rules), default=0)

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None and ctx.operation is not None  # earlier stages
        feeds = self._rules.feeds(ctx.operation)
        if not feeds:
            return
        account = ctx.mapping.cloud_account if ctx.mapping is not None else None
        if account is None or account != ctx.principal.cloud_account:
            raise AnomalyUnavailable("account_unknown")  # not reached after the mapping
        ref = self._account_key(account)
        now_ms = math.floor(self._clock() * 1000)
        try:
            verdict = await self._state.observe(ref, now_ms, feeds, random_hex())
        except StateUnavailable as exc:
            log.warning("anomaly store unavailable (%s); refusing a sensitive operation", exc)
            raise AnomalyUnavailable() from None
        await self._start_alerts()
        refusal = self._apply(verdict, ctx, ref, now_ms)
        if refusal is not None:
            raise refusal

    def _apply(
        self, verdict: Verdict, ctx: RequestContext, ref: str, now_ms: int
    ) -> AnomalyBlocked | StepUpRequired | None:
        assert ctx.principal is not None and ctx.operation is not None
        step_up: StepUpRequired | None = None
        for hit in verdict.hits:
            if not hit.fired:
                continue
            applied: Applied = hit.rule.action
            if hit.rule.report_only:
                applied = "report_only"
                self._report(hit, ctx)
            elif hit.rule.action == "step_up":
                failure = self._step_up_failure(ctx.principal, hit)
                applied = "step_up_satisfied" if failure is None else "step_up"
                step_up = step_up or failure
            if not self._first_in_window(hit, applied, ref, now_ms):
                continue
            self._alerts.emit(
                anomaly_alert(
                    hit,
                    applied=applied,
                    account_ref=ref,
                    mapping_id=ctx.mapping.id if ctx.mapping is not None else None,
                    operation=ctx.operation.id,
                )
            )
        if verdict.blocked_by is not None:
            left = math.ceil((verdict.blocked_until_ms - now_ms) / 1000)
            return AnomalyBlocked(verdict.blocked_by, retry_after=left)
        return step_up

    def _report(self, hit: Hit, ctx: RequestContext) -> None:
        """What a report-only rule's action would have answered."""
        assert ctx.principal is not None
        rule = hit.rule
        denial: AnomalyBlocked | StepUpRequired | None = None
        if rule.action == "block":
            denial = AnomalyBlocked(rule.name, retry_after=math.ceil(rule.block_for_ms / 1000))
        elif rule.action == "step_up":
            denial = self._step_up_failure(ctx.principal, hit)
        if denial is not None:
            report(ctx, f"anomaly.rules.{rule.name}", denial)

    def _first_in_window(self, hit: Hit, applied: Applied, ref: str, now_ms: int) -> bool:
        """Whether this firing is the first of its rule, with this outcome, for the account
        within the rule's window. A rule keeps firing on every later change until its
        window drains; its action applies each time, but one alert per window says it all
        (an account hammering the API must not flood the sinks, nor spend the proxy's time
        logging)."""
        key = (hit.rule.name, applied, ref)
        last = self._alerted.get(key)
        if last is not None and now_ms - last < hit.rule.window_ms:
            return False
        if len(self._alerted) >= MAX_ALERT_KEYS:
            self._alerted = {
                k: t for k, t in self._alerted.items() if now_ms - t < self._longest_window_ms
            }
            if len(self._alerted) >= MAX_ALERT_KEYS:
                self._alerted.clear()  # alert again rather than grow without bound
        self._alerted[key] = now_ms
        return True

    def _step_up_failure(self, principal: Principal, hit: Hit) -> StepUpRequired | None:
        try:
            self._step_up.check(principal, StepUpSettings(max_age=hit.rule.step_up_max_age))
        except StepUpRequired as denial:
            return denial
        return None

    async def _start_alerts(self) -> None:
        # The webhook sinks deliver from a task on the serving loop: start them on it.
        if not self._alerts_started:
            self._alerts_started = True
            await self._alerts.start()

    async def ping(self) -> None:
        """Raise StateUnavailable while the shared anomaly state cannot answer (/readyz)."""
        await self._state.ping()

    async def close(self) -> None:
        if self._alerts_started:
            await self._alerts.close()
        await self._state.close()
