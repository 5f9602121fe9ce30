"""How route matching scales with the catalog: ``RouteMatcher.match`` time per request on
catalogs of 10, 100 and 500 operations (``--sizes``).

Method
------
- A catalog of N operations is generated the way payment APIs are shaped: resources under
  ``/v1`` (collections ``/v1/<resource>``, items ``/v1/<resource>/{id}``, customer-scoped
  collections and items ``/v1/customers/{customer_id}/<resource>[/{id}]``, and a few actions
  ``.../{id}/<verb>``), with GET, POST, PATCH and DELETE; every template is unique, and some
  literal segments collide with parameters (``/v1/customers/search`` next to
  ``/v1/customers/{customer_id}``) so exact-beats-parameter is exercised. The catalog is
  validated by the real settings model and compiled once, as the proxy does at start.
- The requests: one concrete path per operation (parameters filled with realistic ids, some
  percent-encoded), plus as many paths that match nothing (unknown resources, wrong method,
  one segment too many). They are shuffled with a fixed seed.
- Timed: batches of 1,000 ``match(method, raw_path)`` calls under ``perf_counter_ns``; the
  per-request time of each batch is one sample. ``--rounds`` rounds visit every size in
  turn, so whatever else the machine does weighs on every size alike. Reported: p50 and p99
  of the per-request time in microseconds, hits and misses apart, and the p50 over the
  smallest catalog's (flat matching stays near 1.0x).

Every request is also checked: a hit must find the operation it was made from, a miss none.

Usage: ``.venv/bin/python bench/catalog_match.py [--sizes 10,100,500] [--rounds 20]``
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass

from dragoman.catalog.matcher import RouteMatcher
from dragoman.catalog.model import Operation, operations_from_settings
from dragoman.settings import CatalogSettings

BATCH = 1000
VERBS = ("capture", "cancel", "confirm", "refund", "verify", "attach", "detach", "void")


@dataclass(frozen=True, slots=True)
class Probe:
    method: str
    path: str
    expected: str | None


def resources(count: int) -> list[str]:
    base = [
        "payment_methods",
        "charges",
        "refunds",
        "invoices",
        "subscriptions",
        "payouts",
        "disputes",
        "transfers",
        "prices",
        "products",
        "quotes",
        "mandates",
        "balances",
        "sources",
        "tax_ids",
        "coupons",
    ]
    names = list(base)
    i = 0
    while len(names) < count:
        names.append(f"{base[i % len(base)]}_{i // len(base)}")
        i += 1
    return names[:count]


def generate_catalog(size: int) -> list[dict[str, object]]:
    """``size`` operations, dict form as in the settings file."""
    ops: list[dict[str, object]] = [
        {
            "id": "customers.search",
            "method": "GET",
            "path": "/v1/customers/search",
            "scope": "customers:search",
        },
        {
            "id": "customers.get",
            "method": "GET",
            "path": "/v1/customers/{customer_id}",
            "scope": "customers:read",
            "customer_param": "customer_id",
        },
    ]
    for resource in resources(size):
        shapes: list[tuple[str, str, str, str | None]] = [
            ("GET", f"/v1/customers/{{customer_id}}/{resource}", "list", "customer_id"),
            ("POST", f"/v1/customers/{{customer_id}}/{resource}", "create", "customer_id"),
            ("GET", f"/v1/customers/{{customer_id}}/{resource}/{{id}}", "read", "customer_id"),
            ("PATCH", f"/v1/customers/{{customer_id}}/{resource}/{{id}}", "update", "customer_id"),
            ("DELETE", f"/v1/customers/{{customer_id}}/{resource}/{{id}}", "delete", "customer_id"),
            ("GET", f"/v1/{resource}", "list_all", None),
            ("GET", f"/v1/{resource}/{{id}}", "read_any", None),
        ]
        shapes += [
            ("POST", f"/v1/customers/{{customer_id}}/{resource}/{{id}}/{verb}", verb, "customer_id")
            for verb in VERBS
        ]
        for method, path, action, param in shapes:
            op: dict[str, object] = {
                "id": f"{resource}.{action}",
                "method": method,
                "path": path,
                "scope": f"{resource}:{action}",
            }
            if param:
                op["customer_param"] = param
            ops.append(op)
            if len(ops) == size:
                return ops
    return ops


def concrete(template: str, rng: random.Random) -> str:
    parts = []
    for segment in template.split("/")[1:]:
        if segment == "{customer_id}":
            parts.append(rng.choice(["cus_4f9a2b", "cus%5F77ab", "acct-1001-c"]))
        elif segment.startswith("{"):
            parts.append(f"pm_{rng.randrange(16**8):08x}")
        else:
            parts.append(segment)
    return "/" + "/".join(parts)


def probes(catalog: list[Operation], rng: random.Random) -> tuple[list[Probe], list[Probe]]:
    hits = [Probe(op.method, concrete(op.template, rng), op.id) for op in catalog]
    misses = []
    for op in catalog:
        kind = rng.randrange(3)
        path = concrete(op.template, rng)
        if kind == 0:
            misses.append(Probe(op.method, "/v1/nothing_here" + path, None))
        elif kind == 1:
            misses.append(Probe("PUT", path, None))
        else:
            misses.append(Probe(op.method, path + "/extra/segments", None))
    rng.shuffle(hits)
    rng.shuffle(misses)
    return hits, misses


def check(matcher: RouteMatcher, probes_: list[Probe]) -> None:
    for probe in probes_:
        found = matcher.match(probe.method, probe.path)
        got = found.operation.id if found is not None else None
        if got != probe.expected:
            raise SystemExit(
                f"{probe.method} {probe.path}: matched {got}, expected {probe.expected}"
            )


def time_batch(matcher: RouteMatcher, probes_: list[Probe]) -> float:
    """Microseconds per match over one batch of BATCH requests."""
    pairs = [(p.method, p.path) for p in probes_]
    n = len(pairs)
    match = matcher.match
    start = time.perf_counter_ns()
    for i in range(BATCH):
        method, path = pairs[i % n]
        match(method, path)
    return (time.perf_counter_ns() - start) / BATCH / 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batches", type=int, default=20, help="batches per size and round")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(20261129)
    setups = {}
    for size in sizes:
        settings = CatalogSettings.model_validate({"operations": generate_catalog(size)})
        catalog = operations_from_settings(settings)
        started = time.perf_counter()
        matcher = RouteMatcher(catalog)
        compile_ms = (time.perf_counter() - started) * 1000
        hits, misses = probes(catalog, rng)
        check(matcher, hits)
        check(matcher, misses)
        setups[size] = (matcher, hits, misses, compile_ms, len(catalog))
    samples: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for size, (matcher, hits, misses, _, _) in setups.items():
            for kind, batch in (("hit", hits), ("miss", misses)):
                for _ in range(args.batches):
                    samples.setdefault((size, kind), []).append(time_batch(matcher, batch))
    print(f"catalog match, load average {os.getloadavg()[0]:.2f}, µs per request")
    header = ("operations", "compile ms", "kind", "p50", "p99")
    print(
        f"{header[0]:>10} | {header[1]:>10} | {header[2]:>4} | {header[3]:>6} | {header[4]:>6}",
        end="",
    )
    print(" | vs smallest")
    base = {kind: statistics.median(samples[(sizes[0], kind)]) for kind in ("hit", "miss")}
    for size, (_, _, _, compile_ms, count) in setups.items():
        for kind in ("hit", "miss"):
            values = samples[(size, kind)]
            p50 = statistics.median(values)
            print(
                f"{count:>10} | {compile_ms:>10.2f} | {kind:>4} | {p50:>6.2f} | "
                f"{pct(values, 0.99):>6.2f} | {p50 / base[kind]:.2f}x"
            )


if __name__ == "__main__":
    main()
