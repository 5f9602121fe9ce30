"""The generic cell rate algorithm (GCRA) as one pure decision.

A rule allows ``count`` requests per ``period`` sustained and ``burst`` at once. GCRA keeps
a single number per subject, the theoretical arrival time (TAT): when the subject's next
request would be due if it had sent at exactly the sustained rate. A request at ``now``
conforms when ``TAT - now <= tolerance``; it then moves the TAT one emission interval on.
One number per key (no window boundaries where twice the limit slips through) makes the
Redis script small and the decision exact.

Everything is an integer number of microseconds: the same arithmetic runs in the Redis Lua
script (whose numbers are doubles, exact for integers below 2**53), so the two backends
decide identically, and no float rounding lets one more request through a full bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

MICROSECONDS = 1_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one key; every duration in microseconds."""

    allowed: bool
    tat: int
    """The TAT to store if the request goes ahead (unchanged when refused)."""
    remaining: int
    """Requests that would still conform at ``now`` after this one (0 when refused)."""
    retry_after: int
    """How long until a request would conform again (0 when allowed)."""
    reset_after: int
    """How long until the subject is idle again: a full burst, and its key may go."""


def emission_interval(count: int, period: int) -> int:
    """Microseconds between two requests at the sustained rate, rounded up: rounding down
    would let a little more than the rate through."""
    return -(-period * MICROSECONDS // count)


def burst_tolerance(interval: int, burst: int) -> int:
    """How far ahead of ``now`` the TAT may run while a request still conforms: ``burst``
    requests at once fit when the first finds the TAT at ``now``."""
    return interval * (burst - 1)


def decide(tat: int | None, now: int, interval: int, tolerance: int) -> Decision:
    """Whether a request at ``now`` conforms, given the stored ``tat`` (None: never seen
    or idle, the same thing).

    A TAT past ``now + tolerance + interval`` is one no request can have stored at this
    clock: the clock stepped back (an NTP step, a restored snapshot). The subject starts
    afresh, as the Redis keys' expiry makes it there, instead of being refused for as long
    as the step."""
    start = now if tat is None or tat < now or tat - now > tolerance + interval else tat
    ahead = start - now
    if ahead > tolerance:
        return Decision(False, start, 0, ahead - tolerance, ahead)
    new_tat = start + interval
    return Decision(True, new_tat, (tolerance - ahead) // interval, 0, new_tat - now)


def whole_seconds(microseconds: int) -> int:
    """Seconds rounded up, at least 1 (Retry-After and RateLimit ``t``)."""
    return max(1, -(-microseconds // MICROSECONDS))
