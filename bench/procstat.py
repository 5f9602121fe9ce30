"""CPU time and peak memory of the servers under test, from /proc (Linux).

- CPU: utime + stime (``/proc/<pid>/stat`` fields 14 and 15, in clock ticks) summed over
  every live process whose process group is one of the target's (each service runs in its
  own session, so its workers share its group). A run's CPU is the difference between a
  sample before and one after it; divided by the requests answered, it is the CPU time per
  request of that target (all its processes, workers included).
- Memory: ``VmHWM`` (peak resident set size) from ``/proc/<pid>/status`` of each of those
  processes; the largest one is reported (per process, not summed).
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def group_pids(pgids: set[int]) -> list[int]:
    """Live processes whose process group is one of ``pgids``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and int(fields[2]) in pgids:
                found.append(int(entry))
    return found


def cpu_seconds(pgids: set[int]) -> float:
    """utime + stime of every live process in ``pgids``, in seconds."""
    ticks = 0
    for pid in group_pids(pgids):
        fields = _stat_fields(str(pid))
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def peak_rss_mb(pgids: set[int]) -> float:
    """The largest VmHWM among the processes of ``pgids``, in MB."""
    peak = 0
    for pid in group_pids(pgids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024
