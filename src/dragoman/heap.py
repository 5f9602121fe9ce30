"""The garbage collector, set for a long-running server.

A worker starts with everything it keeps for its whole life: settings, the catalog, keys,
the libraries' own tables, several hundred thousand objects. CPython's full collections
walk all of them each time, and a request waits while they do: 30 to 90 ms per full
collection on the reference machine under load, the whole of the proxy's tail latency.
Once the worker is built, :func:`settle` collects once and moves what survives to the
permanent generation (``gc.freeze``), which later collections skip; cycles made while
serving are still found and freed. ``gc.freeze`` is meant for exactly this (the Python
documentation's note on pre-fork and long-lived servers).

It also raises the youngest generation's threshold (:data:`YOUNG_THRESHOLD`). CPython
collects that generation whenever the objects made since its last pass, less those freed,
pass the threshold (700 by default). A busy worker's requests in flight hold some 70 young
objects each, ~4,500 at 64 connections, so their ordinary coming and going crossed 700
about every 50 requests. Each pass walked every live object of every request in flight
(~1 ms), found almost nothing to free (requests rarely make cycles; their objects go by
reference counting) and promoted the survivors, which the older generations then walked
again: ~5% of a loaded worker's CPU (``bench/gc_probe.py``). Above the in-flight set, a pass
comes only when cycles have really piled up.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Objects (made less freed) between two passes over the youngest generation: above what
~128 requests in flight hold, so their own churn no longer sets passes off. What it keeps
waiting is cyclic garbage only, at most this many objects (a few MB)."""


def settle() -> None:
    """Collect what start-up left, then exempt the survivors from later collections and
    let the youngest generation grow past what the requests in flight hold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
