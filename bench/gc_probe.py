"""What the garbage collector costs one dragoman worker under the caller mix.

    .venv/bin/python bench/gc_probe.py [--seconds 10] [--young-threshold N]
        [--backends memory|sqlite-redis|pg-redis] [--connections 64]

Starts the upstream, the issuer and dragoman (one worker) as `make bench` does, with a
probe loaded into the worker (a ``sitecustomize`` module on its ``PYTHONPATH``): from the
moment the worker has settled its heap (``dragoman.heap.settle``), a ``gc.callbacks`` hook
counts the collector's passes per generation and the worker thread's CPU time in them.
wrk drives the caller mix; at the end the worker exits and the probe's figures are
printed beside the requests served: passes, CPU per pass, GC CPU per request and its
share of the worker's CPU, and the worker's resident and peak memory at exit (a long
``--seconds`` shows whether the garbage a rarer pass leaves waiting adds up).

``--young-threshold N`` runs the worker with the youngest generation's threshold at N
instead of dragoman's (:data:`dragoman.heap.YOUNG_THRESHOLD`; 700 is CPython's default),
to see what the setting buys.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callers as callers_mod  # noqa: E402
import loadgen  # noqa: E402
import stack as stack_mod  # noqa: E402
from scenario import LIST_PATH  # noqa: E402

# Loaded by the worker's interpreter at start (sitecustomize): nothing of it runs in a
# process that is not `dragoman serve`.
PROBE = """
import sys
if "serve" in sys.argv:
    import atexit, gc, os, threading, time

    _override = int(os.environ.get("GC_PROBE_YOUNG_THRESHOLD") or 0)
    _set_threshold = gc.set_threshold

    def _threshold(first, *rest):
        _set_threshold(_override or first, *rest)

    gc.set_threshold = _threshold
    _freeze = gc.freeze
    _passes = {0: [0, 0], 1: [0, 0], 2: [0, 0]}
    _started = {}
    _since = []

    def _settled():
        _freeze()
        _since.append(os.times())

    gc.freeze = _settled

    def _hook(phase, info):
        if not _since:
            return
        if phase == "start":
            _started[threading.get_ident()] = time.thread_time_ns()
            return
        began = _started.pop(threading.get_ident(), None)
        if began is not None:
            counted = _passes[info["generation"]]
            counted[0] += 1
            counted[1] += time.thread_time_ns() - began

    gc.callbacks.append(_hook)

    def _report():
        if not _since:
            return
        now, then = os.times(), _since[0]
        cpu = (now.user + now.system) - (then.user + then.system)
        memory = {}
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "VmRSS"):
                    memory[name] = int(value.split()[0]) // 1024
        figures = {
            "threshold": gc.get_threshold()[0],
            "cpu_s": cpu,
            "passes": {g: tuple(v) for g, v in _passes.items()},
            "memory_mb": memory,
        }
        with open(os.environ["GC_PROBE_OUT"], "w") as out:
            out.write(repr(figures))

    atexit.register(_report)
"""


def report(figures: dict[str, object], requests: int) -> str:
    passes = figures["passes"]
    assert isinstance(passes, dict)
    cpu_s = float(str(figures["cpu_s"]))
    lines = [
        f"youngest generation's threshold: {figures['threshold']}",
        f"worker CPU since its heap settled: {cpu_s:.2f} s for ~{requests} requests",
        "generation | passes | CPU ms | µs/pass | µs/request",
        "-----------+--------+--------+---------+-----------",
    ]
    total_ns = 0
    for generation, (count, ns) in sorted(passes.items()):
        total_ns += ns
        per_pass = ns / count / 1000 if count else 0.0
        per_request = ns / requests / 1000 if requests else 0.0
        cpu_ms = ns / 1e6
        lines.append(
            f"{generation:>10} | {count:>6} | {cpu_ms:6.1f} | {per_pass:7.0f} | {per_request:9.2f}"
        )
    share = 100 * total_ns / 1e9 / cpu_s if cpu_s else 0.0
    per_request = total_ns / requests / 1000 if requests else 0.0
    lines.append(f"all: {per_request:.2f} µs per request, {share:.1f}% of the worker's CPU")
    memory = figures.get("memory_mb")
    if isinstance(memory, dict) and memory:
        lines.append(
            f"worker memory at exit: {memory['VmRSS']} MB resident, peak {memory['VmHWM']} MB"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stack_mod.add_mix_arguments(parser, seconds=10.0)
    parser.add_argument(
        "--young-threshold",
        type=int,
        default=0,
        help="Run the worker with this threshold for the youngest generation (0: dragoman's).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dragoman-gc-") as tmp:
        probe_dir = Path(tmp) / "probe"
        probe_dir.mkdir()
        (probe_dir / "sitecustomize.py").write_text(PROBE, "utf-8")
        out = Path(tmp) / "gc.txt"
        stack, urls = stack_mod.plan_base(Path(tmp))
        database = stack_mod.backends_database(args.backends)
        config = stack_mod.add_dragoman(stack, urls, "dragoman", 1, args.backends, database)
        target = stack.targets[-1]
        for service in target.services:
            service.env["PYTHONPATH"] = str(probe_dir)
            service.env["GC_PROBE_OUT"] = str(out)
            service.env["GC_PROBE_YOUNG_THRESHOLD"] = str(args.young_threshold or "")
        with stack_mod.running(stack.base):
            stack_mod.write_callers(stack, urls["issuer"], args.callers)
            callers_mod.seed(config, args.callers)
            with stack_mod.running(stack.services):
                assert stack.callers_file is not None
                spec = loadgen.LoadSpec(
                    url=target.url,
                    threads=1,
                    connections=args.connections,
                    duration_s=args.seconds,
                    script=loadgen.MIX_SCRIPT,
                    script_args=(str(stack.callers_file), f"{args.writes:g}", LIST_PATH),
                )
                result = loadgen.run(spec)[0]
        figures = ast.literal_eval(out.read_text("utf-8"))
    print(f"{result.requests_per_s:.0f} req/s through one worker, {args.connections} connections")
    print(report(figures, result.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
