"""Where dragoman's time goes: py-spy samples one dragoman worker under the caller mix.

    .venv/bin/python bench/hotspots.py --py-spy /path/to/py-spy [--seconds 20] [--writes 20]
        [--backends memory|sqlite-redis|pg-redis] [--target dragoman|passthrough]

Starts the upstream, the issuer and dragoman (one worker; memory backends unless
``--backends`` names another of ``make bench``'s rows) as `make bench` does, seeds the
callers, drives the caller mix with wrk and, after a warm-up (``--warmup``: every caller's
first token verification is done by then), records the worker with `py-spy record
--format raw` (collapsed stacks; py-spy is not a pinned dependency: install it anywhere,
`pip install py-spy`). Samples of aiosqlite's worker thread waiting on its queue are left
out: py-spy counts a thread blocked in C as busy (they were ~11% of the samples). py-spy's
``--gil`` would drop them too, but also the worker's own time in C code that releases the
GIL, such as OpenSSL's signature (half of its samples). Prints the functions with the most
samples, by their own time and by the time spent in them and below, then **by dragoman
function**: each sample charged to the deepest of dragoman's frames in its stack, so a
function's figure holds the libraries it calls (orjson, hashlib, OpenSSL,
prometheus_client) but not aiohttp's client and server, shown apart. Keeps the raw stacks
(bench/results/hotspots-<target>.txt) for a flame graph (speedscope, inferno,
flamegraph.pl).

``--target passthrough`` samples the benchmark's plain pass-through proxy under the same
load instead: what aiohttp itself costs (server, client, streaming), to set beside
dragoman's own figures for the same functions.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callers as callers_mod  # noqa: E402
import loadgen  # noqa: E402
import stack as stack_mod  # noqa: E402
from scenario import LIST_PATH  # noqa: E402

RESULTS = HERE / "results"


def by_function(frame: str) -> str:
    """``f (path:line)`` -> ``f (path)``: one row per function rather than per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if where else frame


def idle_frames() -> frozenset[str]:
    """Frames where a helper thread waits in C for work, which py-spy samples as busy: the
    line of aiosqlite's worker thread that blocks on its queue (found in the installed
    version's source, so an upgrade that moves it is followed)."""
    import aiosqlite.core

    lines, start = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)
    return frozenset(
        f"_connection_worker_thread (aiosqlite/core.py:{start + offset})"
        for offset, text in enumerate(lines)
        if "tx.get()" in text
    )


def stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's collapsed stacks (frames, samples), without the idle ones."""
    idle = idle_frames()
    for line in raw.read_text("utf-8").splitlines():
        stack, _, weight = line.rpartition(" ")
        frames = stack.split(";")
        if weight.isdigit() and frames[-1] not in idle:
            yield frames, int(weight)


def top(raw: Path, count: int) -> str:
    """The heaviest functions of py-spy's collapsed stacks, by self and by total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for stack, n in stacks(raw):
        samples += n
        frames = [by_function(f) for f in stack]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples"]
    for title, counter in (
        ("self", own),
        ("total", total),
        ("dragoman function (with the libraries it calls)", by_dragoman(raw)),
    ):
        lines.append(f"\n-- by {title} --")
        for frame, n in counter.most_common(count):
            lines.append(f"{100 * n / samples:5.1f}%  {frame}")
    return "\n".join(lines)


AIOHTTP = ("aiohttp/", "yarl/", "multidict/", "propcache/")
"""The server and client stack the pass-through has too (``--target passthrough``)."""
OUTSIDE = "(no dragoman frame: aiohttp's server, the event loop)"
UNDER = "(aiohttp under a dragoman frame: the upstream client, the response)"


def _is_dragoman(frame: str) -> bool:
    # The command line and the server's start are in every stack: not a step.
    return "(dragoman/" in frame and "(dragoman/cli/" not in frame and "server.py" not in frame


def by_dragoman(raw: Path) -> collections.Counter[str]:
    """Samples per dragoman function, each charged to the deepest dragoman frame of its
    stack unless aiohttp's code lies right below that frame (then to :data:`UNDER`)."""
    charged: collections.Counter[str] = collections.Counter()
    for frames, n in stacks(raw):
        deepest = max((i for i, f in enumerate(frames) if _is_dragoman(f)), default=None)
        if deepest is None:
            charged[OUTSIDE] += n
        elif deepest + 1 < len(frames) and any(p in frames[deepest + 1] for p in AIOHTTP):
            charged[UNDER] += n
        else:
            charged[by_function(frames[deepest])] += n
    return charged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", required=True, help="Path of the py-spy binary.")
    stack_mod.add_mix_arguments(parser, seconds=20.0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--target",
        choices=("dragoman", "passthrough"),
        default="dragoman",
        help="What to sample: dragoman, or the plain pass-through proxy under the same load.",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="Seconds of load before sampling starts.",
    )
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="Sample without pausing the worker: less overhead, but some stacks come out cut.",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    raw = RESULTS / f"hotspots-{args.target}.txt"
    with tempfile.TemporaryDirectory(prefix="dragoman-profile-") as tmp:
        stack, urls = stack_mod.plan_base(Path(tmp))
        if args.target == "passthrough":
            stack_mod.add_passthrough(stack, urls, 1)  # no state: --backends does not apply
        else:
            database = stack_mod.backends_database(args.backends)
            config = stack_mod.add_dragoman(stack, urls, "dragoman", 1, args.backends, database)
        with stack_mod.running(stack.base):
            stack_mod.write_callers(stack, urls["issuer"], args.callers)
            if args.target == "dragoman":
                callers_mod.seed(config, args.callers)
            with stack_mod.running(stack.services):
                assert stack.callers_file is not None
                target = stack.targets[-1]
                spec = loadgen.LoadSpec(
                    url=target.url,
                    threads=1,
                    connections=args.connections,
                    duration_s=args.warmup + args.seconds + 2,
                    script=loadgen.MIX_SCRIPT,
                    script_args=(str(stack.callers_file), f"{args.writes:g}", LIST_PATH),
                )
                found: dict[str, loadgen.WrkResult] = {}
                load = threading.Thread(target=lambda: found.update(r=loadgen.run(spec)[0]))
                load.start()
                time.sleep(args.warmup)
                (pid,) = (p.pid for s in target.services if (p := s.process) is not None)
                record = [args.py_spy, "record", "--pid", str(pid), "--subprocesses"]
                record += ["--rate", "250", "--duration", str(int(args.seconds))]
                record += ["--format", "raw", "-o", str(raw)]
                if args.nonblocking:
                    record.append("--nonblocking")
                subprocess.run(
                    record,
                    check=True,
                    capture_output=True,
                )
                load.join()
    result = found.get("r")
    if result is not None:
        print(f"{result.requests_per_s:.0f} req/s under the profiler (slower than without)")
    print(top(raw, args.top))
    print(f"\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
