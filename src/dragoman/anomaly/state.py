"""Where the counts and blocks live: the protocol both backends keep, and the memory one.

One call, :meth:`AnomalyState.observe`, is the whole decision for one sensitive request,
atomic with respect to every other request of the account: it refuses nothing itself, but
answers an active block (and then counts nothing), or counts the request into every rule it
feeds, says which rules fired, and starts the block of any firing ``block`` rule. The
Redis backend (:mod:`dragoman.anomaly.redis_state`) does the same in one Lua script, so
both backends pass the same behaviour tests.

What is counted, per account and rule (times in integer milliseconds, window
``(now - window, now]``):

- threshold and baseline: the rule's operations, in a sliding window. A threshold rule
  fires when the count exceeds its threshold. A baseline rule also keeps the EWMA of the
  account's counts per fixed window (``floor(now / window)``); when a window ends, its
  count updates the EWMA (the first completed window starts it; windows without changes
  count as zeros), and the rule fires when the sliding count reaches ``min_count`` and
  exceeds ``factor`` times the EWMA. An account without a completed window has no
  baseline yet and the rule does not judge it (the threshold rule does); nor one whose
  last change is more than ``BASELINE_MEMORY`` windows old (its history is forgotten).
- card testing: unpaired adds (kept ``pair_within``); a delete pairs with the latest
  unpaired add at most ``pair_within`` old, and the rule fires when the pairs in the
  window reach ``pairs``. Only the delete that completes a pair can fire.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dragoman.anomaly.rules import Feed, Rule

BASELINE_MEMORY = 50
"""Windows a baseline is kept without changes (by then the EWMA has decayed to nothing)."""


class StateUnavailable(Exception):
    """The shared store could not answer; the caller refuses the request (fail closed)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """What one rule saw for this request."""

    rule: Rule
    count: int
    """Changes (card testing: pairs) in the window, this request included."""
    baseline: float | None
    """baseline: the EWMA the count was compared with (None for other kinds)."""
    fired: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    hits: tuple[Hit, ...]
    blocked_by: str | None = None
    """The rule whose block refuses this request (set before it, or by it)."""
    blocked_until_ms: int = 0
    counted: bool = True
    """False when an active block refused the request before anything was counted."""


class AnomalyState(Protocol):
    async def observe(
        self, account: str, now_ms: int, feeds: Sequence[Feed], nonce: str
    ) -> Verdict:
        """Count one sensitive request of ``account`` (an opaque key) into ``feeds``.

        ``nonce`` is unique per request. Raises :class:`StateUnavailable`."""
        ...

    async def ping(self) -> None:
        """Return when the state answers (for /readyz); raise StateUnavailable when it
        does not."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Baseline:
    bucket: int
    count: int
    ewma: float | None


def fired(rule: Rule, count: int, baseline: float | None) -> bool:
    """The firing condition of threshold and baseline rules (card testing: ``pairs``)."""
    if rule.kind == "threshold":
        return count > rule.threshold
    if rule.kind == "baseline":
        return baseline is not None and count >= rule.min_count and count > baseline * rule.factor
    return count >= rule.pairs


def roll(state: _Baseline, bucket: int, smoothing: float) -> None:
    """Close the windows before ``bucket``: the last active one's count updates the EWMA,
    the empty ones between decay it."""
    if bucket <= state.bucket:
        return
    ewma = float(state.count) if state.ewma is None else state.ewma
    if state.ewma is not None:
        ewma += smoothing * (state.count - ewma)
    gap = bucket - state.bucket - 1
    if gap > 0:
        ewma *= (1.0 - smoothing) ** gap
    state.bucket, state.count, state.ewma = bucket, 0, ewma


class MemoryState:
    """Counts in this process only (one instance, one worker). Every observation runs
    without awaiting, so it is atomic on the event loop."""

    SWEEP_EVERY = 4096

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._windows = {r.name: r.window_ms for r in rules}
        self._events: dict[tuple[str, str], list[int]] = {}
        self._adds: dict[tuple[str, str], list[int]] = {}
        self._pairs: dict[tuple[str, str], list[int]] = {}
        self._baselines: dict[tuple[str, str], _Baseline] = {}
        self._blocks: dict[str, tuple[int, str]] = {}
        self._observed = 0

    async def observe(
        self, account: str, now_ms: int, feeds: Sequence[Feed], nonce: str
    ) -> Verdict:
        self._observed += 1
        if self._observed % self.SWEEP_EVERY == 0:
            self._sweep(now_ms)
        block = self._blocks.get(account)
        if block is not None and block[0] > now_ms:
            return Verdict((), blocked_by=block[1], blocked_until_ms=block[0], counted=False)
        hits = tuple(self._count(account, now_ms, feed) for feed in feeds)
        for hit in hits:
            if hit.fired and hit.rule.enforced_action == "block":
                until = now_ms + hit.rule.block_for_ms
                current = self._blocks.get(account)
                if current is None or current[0] <= now_ms or until > current[0]:
                    self._blocks[account] = (until, hit.rule.name)
        block = self._blocks.get(account)
        if block is not None and block[0] > now_ms:
            return Verdict(hits, blocked_by=block[1], blocked_until_ms=block[0])
        return Verdict(hits)

    def _count(self, account: str, now_ms: int, feed: Feed) -> Hit:
        rule = feed.rule
        key = (account, rule.name)
        if rule.kind == "card_testing":
            return self._pair(key, now_ms, feed)
        events = self._events.setdefault(key, [])
        bisect.insort(events, now_ms)
        _drop_until(events, now_ms - rule.window_ms)
        count = len(events)
        baseline: float | None = None
        if rule.kind == "baseline":
            bucket = now_ms // rule.window_ms
            state = self._baselines.get(key)
            if state is None or bucket - state.bucket > BASELINE_MEMORY:
                state = self._baselines[key] = _Baseline(bucket, 0, None)
            roll(state, bucket, rule.smoothing)
            state.count += 1
            baseline = state.ewma
        return Hit(rule, count, baseline, fired(rule, count, baseline))

    def _pair(self, key: tuple[str, str], now_ms: int, feed: Feed) -> Hit:
        rule = feed.rule
        adds = self._adds.setdefault(key, [])
        pairs = self._pairs.setdefault(key, [])
        _drop_until(pairs, now_ms - rule.window_ms)
        if feed.role == "add":
            bisect.insort(adds, now_ms)
            _drop_before(adds, now_ms - rule.pair_within_ms)
            return Hit(rule, len(pairs), None, False)
        _drop_before(adds, now_ms - rule.pair_within_ms)
        latest = bisect.bisect_right(adds, now_ms) - 1
        if latest < 0:
            return Hit(rule, len(pairs), None, False)
        del adds[latest]
        bisect.insort(pairs, now_ms)
        return Hit(rule, len(pairs), None, fired(rule, len(pairs), None))

    def _sweep(self, now_ms: int) -> None:
        """Forget what has left every window (bounded memory over time)."""
        windows = self._windows
        for store in (self._events, self._adds, self._pairs):
            for key in [
                k for k, v in store.items() if not v or v[-1] <= now_ms - windows.get(k[1], 0)
            ]:
                del store[key]
        for key, state in list(self._baselines.items()):
            window = windows.get(key[1], 0)
            if not window or now_ms // window - state.bucket > BASELINE_MEMORY:
                del self._baselines[key]
        for account in [a for a, (until, _) in self._blocks.items() if until <= now_ms]:
            del self._blocks[account]

    async def ping(self) -> None:
        return None  # in this process: always there

    async def close(self) -> None:
        return None


def _drop_until(times: list[int], limit: int) -> None:
    """Remove the times ``<= limit`` (out of a window ``(limit, now]``)."""
    del times[: bisect.bisect_right(times, limit)]


def _drop_before(times: list[int], limit: int) -> None:
    """Remove the times ``< limit`` (a pair may still form at exactly ``pair_within``)."""
    del times[: bisect.bisect_left(times, limit)]
