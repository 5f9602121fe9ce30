"""dragoman against the plain pass-through in alternated pairs: the throughput goals read
from medians instead of from one row each.

    .venv/bin/python bench/pairs.py [--pairs 6] [--seconds 8] [--backends memory|pg-redis]

``make bench`` measures the pass-through and dragoman once each, a minute or more apart.
On a shared two-core machine the pass-through alone moved from 126 to 196 µs of CPU per
request within minutes (2026-12-02), so the ``x pass`` of one table says as much about
when each row ran as about dragoman, and the goal lines often read UNRELIABLE. This runs
both at once, one worker each, against one upstream and issuer with the caller mix and
``make bench``'s wrk settings, and measures them in turns, each after a warm-up. The order
alternates from pair to pair (pass-through first, then dragoman first), so a machine that
slows down or speeds up steadily weighs on both sides alike. Each pair gives dragoman's
req/s over the pass-through's (the goals' ``x pass``) and its CPU per request over the
pass-through's; the medians are the answer and every pair is printed so the spread shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callers as callers_mod  # noqa: E402
import report  # noqa: E402
import scenario  # noqa: E402
import stack as stack_mod  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stack_mod.add_pairs_arguments(parser, pairs=6)
    parser.add_argument(
        "--client",
        choices=("upstream-pool", "client-session"),
        default="upstream-pool",
        help="The pass-through's upstream client (passthrough.py --client): dragoman's own"
        " (the goals' reference) or aiohttp's ClientSession.",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dragoman-pairs-") as tmp:
        return compare(args, Path(tmp))


def _print_pair(number: int, pair: scenario.Pair) -> None:
    print(
        f"pair {number}: x pass {pair.ratio:.2f}, CPU per request {pair.cpu_ratio:.2f}x the"
        " pass-through's",
        flush=True,
    )


def compare(args: argparse.Namespace, state: Path) -> int:
    database = stack_mod.backends_database(args.backends)
    stack, urls = stack_mod.plan_base(state)
    stack_mod.add_passthrough(stack, urls, 1, client=args.client)
    passthrough = stack.targets[-1]
    label = stack_mod.LABEL_OF_BACKENDS[args.backends]
    config = stack_mod.add_dragoman(stack, urls, label, 1, args.backends, database)
    dragoman = stack.targets[-1]
    with stack_mod.running(stack.base):
        stack_mod.write_callers(stack, urls["issuer"], args.callers)
        callers_mod.seed(config, args.callers)
        assert stack.callers_file is not None
        load = scenario.mix_load(args, stack.callers_file)
        with stack_mod.running(stack.services):
            paired = scenario.alternated(
                dragoman, passthrough, load, args.pairs, on_pair=_print_pair
            )
    if not paired.complete:
        return 1
    print()
    for line in report.paired_lines([paired]):
        print(line)
    goal = report.paired_goal(paired, report.PASS_GOALS[label])
    print(f"{label} x1 / {passthrough.label} x1 = {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
