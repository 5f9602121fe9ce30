"""Two builds of dragoman side by side: which is cheaper per request, within this machine's noise.

    .venv/bin/python bench/ab.py --base REV [--head REV] [--pairs 4] [--seconds 8]
        [--backends memory|sqlite-redis|pg-redis]

On a shared two-core machine one row of ``make bench`` moves by ±15% between runs, and
dragoman's row moves more than the pass-through's (its larger working set suffers more
from a neighbour's use of the caches), so a change worth 5% cannot be read from two
tables. This runs both builds at once, one worker each, against one upstream and issuer
with the caller mix, and measures them in turns, each after a warm-up, with the same wrk
settings as ``make bench``. The order alternates from pair to pair (base first, then head
first: ``scenario.alternated``), so a machine that slows down or speeds up steadily weighs
on both alike. Each pair is read as head's CPU per request over base's, measured minutes
apart at most, and the median of the pairs is the answer; every pair is printed so the
spread shows.

``--base`` and ``--head`` are any git revisions; each is checked out in a temporary
worktree and served from it with ``PYTHONPATH=<worktree>/src`` (this venv's packages:
the two must not differ in dependencies). Without ``--head``, the head is the working tree
as it is. With ``--backends pg-redis`` both builds share one PostgreSQL database, seeded
once: their migrations must be the same.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import callers as callers_mod  # noqa: E402
import scenario  # noqa: E402
import stack as stack_mod  # noqa: E402


@contextmanager
def worktree(revision: str, directory: Path) -> Iterator[Path]:
    """``revision`` checked out (detached) at ``directory``, removed afterwards."""
    add = ["worktree", "add", "--detach", "--force", str(directory), revision]
    subprocess.run(
        ["git", "-C", str(REPO), *add],
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(directory)],
            check=False,
            capture_output=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="The git revision to compare against.")
    parser.add_argument("--head", help="The git revision measured (default: the working tree).")
    stack_mod.add_pairs_arguments(parser, pairs=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dragoman-ab-") as tmp:
        state = Path(tmp)
        with worktree(args.base, state / "base-src") as base_src:
            if args.head is None:
                return compare(args, state, base_src, REPO)
            with worktree(args.head, state / "head-src") as head_src:
                return compare(args, state, base_src, head_src)


def _print_pair(number: int, pair: scenario.Pair) -> None:
    print(
        f"pair {number}: CPU µs/req base {pair.reference_cpu_us:.0f}, head "
        f"{pair.target_cpu_us:.0f} (head/base {pair.cpu_ratio:.3f}); req/s "
        f"{pair.reference_rate:.0f} / {pair.target_rate:.0f}",
        flush=True,
    )


def compare(args: argparse.Namespace, state: Path, base_src: Path, head_src: Path) -> int:
    database = stack_mod.backends_database(args.backends)
    stack, urls = stack_mod.plan_base(state)
    targets: dict[str, stack_mod.Target] = {}
    configs: dict[str, Path] = {}
    for name, source in (("base", base_src), ("head", head_src)):
        configs[name] = stack_mod.add_dragoman(
            stack, urls, name, 1, args.backends, database, instance=f"dragoman-{name}"
        )
        stack.services[-1].env["PYTHONPATH"] = str(source / "src")
        targets[name] = stack.targets[-1]
    with stack_mod.running(stack.base):
        stack_mod.write_callers(stack, urls["issuer"], args.callers)
        callers_mod.seed(configs["base"], args.callers)
        if database is None:
            callers_mod.seed(configs["head"], args.callers)
        assert stack.callers_file is not None
        load = scenario.mix_load(args, stack.callers_file)
        with stack_mod.running(stack.services):
            paired = scenario.alternated(
                targets["head"], targets["base"], load, args.pairs, on_pair=_print_pair
            )
    if not paired.complete:
        return 1
    ratios = paired.cpu_ratios
    print(
        f"\nhead/base CPU per request, {args.backends}, 1 worker: median "
        f"{paired.cpu_median:.3f} over {len(ratios)} pairs (from {min(ratios):.3f} to "
        f"{max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
