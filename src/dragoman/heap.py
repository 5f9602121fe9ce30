"""The garbage collector, set for a long-running server.

A worker starts with everything it keeps for its whole life: settings, the catalog, keys,
the libraries' own tables, several hundred thousand objects. CPython's full collections
walk all of them each time, and a request waits while they do: 30 to 90 ms per full
collection on the reference machine under load, the whole of the proxy's tail latency.
Once the worker is built, :func:`settle` collects once and moves what survives to the
permanent generation (``gc.freeze``), which later collections skip; cycles made while
serving are still found and freed. ``gc.freeze`` is meant for exactly this (the Python
documentation's note on pre-fork and long-lived servers).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what start-up left, then exempt the survivors from later collections."""
    gc.collect()
    gc.freeze()
