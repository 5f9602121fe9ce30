"""Imported at the start of a `dragoman` subprocess whose PYTHONPATH names this directory:
its wall clock reads SKEWED_CLOCK_OFFSET seconds off the real one (a host whose
clock drifted; the database server's clock stays true)."""

import os
import time

_offset = float(os.environ.get("SKEWED_CLOCK_OFFSET", "0"))
_real_time = time.time


def _skewed_time() -> float:
    return _real_time() + _offset


time.time = _skewed_time
