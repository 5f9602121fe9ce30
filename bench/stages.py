"""What each step of dragoman's pipeline costs, in process, without the network.

    .venv/bin/python bench/stages.py [--requests 20000] [--callers 1000] [--writes 20]
        [--concurrency 1] [--cprofile tottime]

Starts the upstream and the issuer as ``make bench`` does, builds one worker's proxy from
the same settings (memory backends), seeds the callers, and then, in this process, runs
the caller mix through the pipeline with requests made by aiohttp's test helper: the
context, every stage, the request's audit record (group commit, as in ``forward``) and the
headers sent upstream. Each step is timed with ``perf_counter_ns``; the table gives the
mean microseconds per request and the share of the total. What the table leaves out is
what every proxy pays: parsing the caller's request, the upstream exchange and writing the
answer (the pass-through row of ``make bench``). The first pass over every caller is a
warm-up (JWKS fetch, verification and mapping caches), not counted.

``--concurrency N`` runs the requests N at a time, as a loaded worker has them in flight:
their objects are alive together (what sets the garbage collector off) and their records
share a group. Then only the wall time per request is printed. Under valgrind's callgrind
it gives a machine-independent count of instructions per request for two builds
(bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import io
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import uvloop  # noqa: E402
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402

import callers as callers_mod  # noqa: E402
import stack as stack_mod  # noqa: E402
from dragoman import heap  # noqa: E402
from dragoman.app import PROXY_KEY, Proxy, build_app  # noqa: E402
from dragoman.audit.record import request_record  # noqa: E402
from dragoman.pipeline.errors import Denial  # noqa: E402
from dragoman.settings import load_settings  # noqa: E402
from scenario import LIST_PATH  # noqa: E402

CARD = b'{"card_number":"4242424242424242","exp_month":12,"exp_year":2030}'


def requests_for(found: list[callers_mod.Caller], writes: float, seed: int) -> list[web.Request]:
    chooser = random.Random(seed)
    made = []
    for caller in found:
        path = LIST_PATH.replace("{customer}", caller.customer)
        headers = {"Authorization": f"Bearer {caller.token}", "Host": "127.0.0.1"}
        if chooser.random() * 100 < writes:
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(CARD))
            made.append(make_mocked_request("POST", path, headers=headers))
        else:
            made.append(make_mocked_request("GET", path, headers=headers))
    return made


async def one(proxy: Proxy, request: web.Request, spent: collections.Counter[str]) -> None:
    clock = time.perf_counter_ns
    t0 = clock()
    ctx = proxy.context(request)
    t1 = clock()
    spent["context"] += t1 - t0
    try:
        for stage in proxy.stages:
            t0 = clock()
            await stage(ctx)
            spent[type(stage).__name__] += clock() - t0
        t0 = clock()
        proxy.forwarder._request_headers(ctx)
        proxy.cors.response_headers(request)
        spent["upstream headers"] += clock() - t0
    except Denial as denial:
        raise SystemExit(f"refused: {denial!r}") from None
    t0 = clock()
    record = request_record(ctx, event="request")
    t1 = clock()
    spent["audit record: build"] += t1 - t0
    await proxy.audit.commit(record)
    spent["audit record: write"] += clock() - t1


async def measure(config: Path, found: list[callers_mod.Caller], args: argparse.Namespace) -> str:
    settings = load_settings(config)
    app = build_app(settings, migrate_store=False)
    runner = web.AppRunner(app)
    await runner.setup()
    heap.settle()
    proxy = app[PROXY_KEY]
    await proxy.forwarder.close()  # nothing is forwarded here
    try:
        spent: collections.Counter[str] = collections.Counter()
        for request in requests_for(found, args.writes, 1):
            await one(proxy, request, spent)  # warm-up
        spent.clear()
        # Made before any is timed: making a thousand test requests takes seconds on a slow
        # machine, and between two of a caller's requests its cached mapping (5 s) expired.
        batches = []
        made, seed = 0, 2
        while made < args.requests:
            batches.append(requests_for(found, args.writes, seed)[: args.requests - made])
            made += len(batches[-1])
            seed += 1
        profiler = cProfile.Profile() if args.cprofile else None
        started = time.perf_counter_ns()
        for batch in batches:
            if profiler is not None:
                profiler.enable()
            if args.concurrency > 1:
                for at in range(0, len(batch), args.concurrency):
                    group = batch[at : at + args.concurrency]
                    await asyncio.gather(*(one(proxy, request, spent) for request in group))
            else:
                for request in batch:
                    await one(proxy, request, spent)
            if profiler is not None:
                profiler.disable()
        wall = time.perf_counter_ns() - started
    finally:
        await runner.cleanup()
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.cprofile).print_stats(40)
        print(out.getvalue())
    gc_note = f"gc: {gc.get_freeze_count()} objects frozen at start"
    if args.concurrency > 1:
        # The steps of requests in flight together overlap: only the whole is meaningful.
        return (
            f"{wall / made / 1000:.1f} µs per request (wall), {args.concurrency} at a time;"
            f" {made} requests, {args.writes:g}% writes; {gc_note}"
        )
    total = sum(spent.values())
    rows = [f"{'step':<24} | µs/req | share", f"{'-' * 24}-+--------+------"]
    for name, ns in spent.most_common():
        rows.append(f"{name:<24} | {ns / made / 1000:6.1f} | {100 * ns / total:4.0f}%")
    rows.append(f"{'total':<24} | {total / made / 1000:6.1f} |")
    return "\n".join(rows) + f"\n\n{made} requests, {args.writes:g}% writes; {gc_note}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--writes", type=float, default=20.0, help="Percent of POST writes.")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="Requests in flight together (asyncio.gather): their young objects live at once,"
        " as in a loaded worker, and their records share a group. Above 1 only the total per"
        " request is printed (the steps overlap).",
    )
    parser.add_argument(
        "--cprofile",
        metavar="SORT",
        help="Also run cProfile over the timed requests and print its top functions by SORT"
        " (tottime, cumulative): slower, but it names what a step spends its time on.",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dragoman-stages-") as tmp:
        stack, urls = stack_mod.plan_base(Path(tmp))
        config = stack_mod.add_dragoman(stack, urls, "dragoman", 1, "memory")
        with stack_mod.running(stack.base):
            found = stack_mod.write_callers(stack, urls["issuer"], args.callers)
            callers_mod.seed(config, args.callers)
            print(uvloop.run(measure(config, found, args)))  # the worker's loop
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
