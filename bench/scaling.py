"""Scaling curves: dragoman's cost per request as its inputs grow, through the full proxy.

    .venv/bin/python bench/scaling.py [--quick] [--only mappings,catalog,issuers,keys,concurrency]

Every point is a short wrk run (``mix.lua``, reads only, 1,000 distinct callers unless
said otherwise, ``-t1 -c64``) against ``dragoman serve`` with memory backends, one
worker, after one checked request and a warm-up; the figures are dragoman's CPU time per
request (all its processes, from /proc: the figure that does not depend on what else the
machine runs as much as req/s does), req/s and p50/p99 latency.

- **mappings** 1k / 100k / 1M: the SQLite tables of ``mapping_lookup.py`` (built on first
  use, cached in bench/results/, reused; a copy is served), the 1,000 callers drawn at random
  from the whole table; once with the mapping cache off (``mapping.cache_ttl = 0``: every
  request is one indexed query, one unwrap, two openings) and once with the default 5 s
  cache.
- **catalog** 10 / 100 / 500 operations: ``catalog_match.generate_catalog`` (payment-API
  shaped templates) as dragoman's catalog; the callers list their own
  ``/v1/customers/<customer>/payment_methods`` (the upstream answers any path).
- **issuers** 1 / 10 / 50 (one key each) and **keys** 1 / 10 / 50 in one issuer's JWKS
  (``issuer.py --issuers N --keys K``, ES256): the callers' tokens are spread over every
  issuer and key; token verification cache **off** (``identity.verify_cache_ttl = 0``),
  so every request routes and verifies its token (with the default cache, verification
  happens once per token a minute and issuers and keys cost nothing per request).
- **concurrency** 1 / 4 / 16 / 64 / 256 connections, dragoman and the pass-through.

Prints a markdown table (the one docs/performance.md shows), renders
docs/img/performance-scaling.png (matplotlib, Agg) and writes bench/results/scaling.json.
Rows of one curve run back to back, so what else the machine does weighs on them alike;
"vs first" is the CPU per request over the curve's first point's (flat: near 1.00).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import callers as callers_mod
import catalog_match
import mapping_lookup
import stack as stack_mod
from procs import Service, ServiceError, free_port
from scenario import LIST_PATH, LoadSettings, Row, measure
from stack import DRAGOMAN_MEMORY, HOST, PASSTHROUGH, Target, running

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PNG = ROOT / "docs" / "img" / "performance-scaling.png"
CURVES = ("mappings", "catalog", "issuers", "keys", "concurrency")


@dataclass
class Point:
    curve: str
    series: str
    x: int
    ok: bool
    requests_per_s: float | None = None
    cpu_us: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    problems: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, mappings 1k and 10k.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per point.")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--only", default=",".join(CURVES), help="Curves to measure.")
    parser.add_argument("--mapping-sizes", default="1000,100000,1000000")
    parser.add_argument("--catalog-sizes", default="10,100,500")
    parser.add_argument("--issuer-counts", default="1,10,50")
    parser.add_argument("--key-counts", default="1,10,50")
    parser.add_argument("--connection-counts", default="1,4,16,64,256")
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--json", type=Path, default=RESULTS / "scaling.json")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary state dir.")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
        if args.mapping_sizes == parser.get_default("mapping_sizes"):
            args.mapping_sizes = "1000,10000"
    args.only = [c for c in args.only.split(",") if c]
    if not set(args.only) <= set(CURVES):
        parser.error(f"--only takes some of {','.join(CURVES)}")
    for name in ("mapping_sizes", "catalog_sizes", "issuer_counts", "key_counts"):
        setattr(args, name, [int(v) for v in getattr(args, name).split(",")])
    args.connection_counts = [int(v) for v in args.connection_counts.split(",")]
    return args


class Bench:
    """The shared upstream, an issuer (restarted per issuer/key point) and the runs."""

    def __init__(self, state: Path, args: argparse.Namespace) -> None:
        self.state = state
        self.args = args
        self.points: list[Point] = []
        base, self.urls = stack_mod.plan_base(state)
        self.upstream, self.issuer = base.base
        self.upstream.start()
        self.upstream.wait_ready()

    def close(self) -> None:
        self.issuer.stop()
        self.upstream.stop()

    def restart_issuer(self, issuers: int = 1, keys: int = 2) -> None:
        self.issuer.stop()
        port = int(self.urls["issuer"].rsplit(":", 1)[1])
        argv = [sys.executable, str(stack_mod.HERE / "issuer.py"), "--host", HOST]
        argv += ["--port", str(port), "--issuers", str(issuers), "--keys", str(keys)]
        self.issuer = Service("issuer", argv, self.issuer.ready_url, self.state / "issuer.log")
        self.issuer.start()
        self.issuer.wait_ready()

    def settings(
        self, callers_file: Path, path: str = LIST_PATH, connections: int = 64
    ) -> LoadSettings:
        return LoadSettings(
            threads=1,
            connections=connections,
            warmup_s=self.args.warmup,
            duration_s=self.args.duration,
            callers_file=callers_file,
            writes=0.0,
            path=path,
        )

    def callers(self, name: str, indexes: list[int], issuers: int = 1, keys: int = 1) -> Path:
        found = callers_mod.mint(self.urls["issuer"], indexes, issuers=issuers, keys=keys)
        return callers_mod.write_callers_file(self.state / f"callers-{name}.txt", found)

    def dragoman(
        self,
        name: str,
        overrides: dict[str, Any],
        *,
        seed: int | None = None,
        database: Path | None = None,
    ) -> tuple[Service, Target]:
        port = free_port(HOST)
        directory = self.state / name
        url = f"sqlite+aiosqlite:///{database}" if database is not None else None
        config = stack_mod.dragoman_settings(
            directory,
            port=port,
            upstream=self.urls["upstream"],
            issuer=self.urls["issuer"],
            workers=1,
            database_url=url,
            overrides=overrides,
        )
        if seed is not None:
            callers_mod.seed(config, seed)
        service = stack_mod.dragoman_service(name, config, port)
        return service, Target(DRAGOMAN_MEMORY, 1, f"http://{HOST}:{port}", [service])

    def point(
        self, curve: str, series: str, x: int, target: Target, settings: LoadSettings
    ) -> None:
        row = measure(Row(target, f"{curve} {series} {x:>7}"), settings)
        r = row.result
        self.points.append(
            Point(
                curve,
                series,
                x,
                row.ok,
                r.requests_per_s if r else None,
                row.cpu_us,
                r.latency_ms["50"] if r else None,
                r.latency_ms["99"] if r else None,
                "\n".join(row.problems)[:2000],
            )
        )

    # -- the curves ---------------------------------------------------------------------------

    def mappings(self) -> None:
        rng = random.Random(11)
        for size in self.args.mapping_sizes:
            source = RESULTS / f"mappings-{size}.db"
            asyncio.run(self._build(source, size))
            served = self.state / f"mappings-{size}.db"
            shutil.copyfile(source, served)
            picks = rng.sample(range(size), min(size, self.args.callers))
            callers_file = self.callers(f"mappings-{size}", picks)
            for series, ttl in (("cache off", 0), ("cache 5s", 5)):
                service, target = self.dragoman(
                    f"mappings-{size}-{ttl}", {"mapping": {"cache_ttl": ttl}}, database=served
                )
                with running([service]):
                    self.point("mappings", series, size, target, self.settings(callers_file))
            served.unlink()

    async def _build(self, path: Path, size: int) -> None:
        table = await mapping_lookup.prepare("sqlite", f"sqlite+aiosqlite:///{path}", size, False)
        await table.store.close()

    def catalog(self) -> None:
        callers_file = self.callers("catalog", list(range(self.args.callers)))
        path = "/v1/customers/{customer}/payment_methods"
        for size in self.args.catalog_sizes:
            operations = catalog_match.generate_catalog(size)
            # The default anomaly rules name two operations a generated catalog lacks.
            counted = ["payment_methods:create", "payment_methods:delete"]
            never = 1_000_000_000
            rules = {
                "changes_burst": {"threshold": never, "operations": counted},
                "changes_above_baseline": {
                    "kind": "baseline",
                    "min_count": never,
                    "operations": counted,
                },
                "card_testing": {"kind": "card_testing", "action": "block", "pairs": never},
            }
            service, target = self.dragoman(
                f"catalog-{size}",
                {"catalog": {"operations": operations}, "anomaly": {"rules": rules}},
                seed=self.args.callers,
            )
            with running([service]):
                self.point("catalog", "operations", size, target, self.settings(callers_file, path))

    def identity(self, curve: str) -> None:
        counts = self.args.issuer_counts if curve == "issuers" else self.args.key_counts
        for count in counts:
            issuers, keys = (count, 1) if curve == "issuers" else (1, count)
            self.restart_issuer(issuers, keys)
            callers_file = self.callers(
                f"{curve}-{count}", list(range(self.args.callers)), issuers, keys
            )
            oidc = [
                {
                    "name": f"issuer{n}",
                    "issuer": f"{self.urls['issuer']}/i/{n}",
                    "audiences": ["dragoman"],
                    "algorithms": ["ES256"],
                }
                for n in range(issuers)
            ]
            service, target = self.dragoman(
                f"{curve}-{count}",
                {"identity": {"oidc": oidc, "verify_cache_ttl": 0}},
                seed=self.args.callers,
            )
            with running([service]):
                self.point(curve, "verify cache off", count, target, self.settings(callers_file))
        self.restart_issuer()

    def concurrency(self) -> None:
        callers_file = self.callers("concurrency", list(range(self.args.callers)))
        service, target = self.dragoman("concurrency", {}, seed=self.args.callers)
        port = free_port(HOST)
        passthrough = Service(
            "passthrough",
            [
                *(sys.executable, str(stack_mod.HERE / "passthrough.py"), "--host", HOST),
                *("--port", str(port), "--upstream", self.urls["upstream"]),
            ],
            f"http://{HOST}:{port}/livez",
            self.state / "passthrough.log",
        )
        reference = Target(PASSTHROUGH, 1, f"http://{HOST}:{port}", [passthrough])
        with running([service, passthrough]):
            for connections in self.args.connection_counts:
                settings = self.settings(callers_file, connections=connections)
                self.point("concurrency", "dragoman", connections, target, settings)
                self.point("concurrency", "pass-through", connections, reference, settings)


# -- output -------------------------------------------------------------------------------------


def markdown(points: list[Point]) -> str:
    lines = [
        "| curve | series | size | req/s | CPU µs/req | p50 ms | p99 ms | CPU vs first |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    first: dict[tuple[str, str], float] = {}
    for p in sorted(points, key=lambda p: (CURVES.index(p.curve), p.series, p.x)):
        if not p.ok or p.cpu_us is None:
            lines.append(f"| {p.curve} | {p.series} | {p.x:,} | FAILED | | | | |")
            continue
        base = first.setdefault((p.curve, p.series), p.cpu_us)
        lines.append(
            f"| {p.curve} | {p.series} | {p.x:,} | {p.requests_per_s:,.0f} | {p.cpu_us:,.0f}"
            f" | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.cpu_us / base:.2f}x |"
        )
    return "\n".join(lines)


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("mappings", "mappings in the store", True),
        ("catalog", "operations in the catalog", True),
        ("identity", "issuers / keys in the JWKS", True),
        ("concurrency", "connections", True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (panel, xlabel, logx) in zip(axes.flat, panels, strict=True):
        curves = ("issuers", "keys") if panel == "identity" else (panel,)
        series = sorted({(p.curve, p.series) for p in points if p.curve in curves})
        twin = ax.twinx() if panel == "concurrency" and series else None
        for curve, name in series:
            chosen = [p for p in points if (p.curve, p.series) == (curve, name) and p.ok]
            if not chosen:
                continue
            label = f"{curve}, {name}" if panel == "identity" else name
            xs = [p.x for p in chosen]
            ax.plot(xs, [p.cpu_us for p in chosen], marker="o", label=f"{label}: CPU")
            if twin is not None:
                twin.plot(
                    xs, [p.p99_ms for p in chosen], linestyle="--", marker="x", label=f"{name}: p99"
                )
        if twin is not None:
            twin.set_ylabel("p99 latency, ms (dashed, log)")
            twin.set_yscale("log")
            twin.legend(fontsize=8, loc="upper right")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CPU µs per request (proxy processes)")
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", transform=ax.transAxes)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower left")
        ax.set_title(panel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    state = Path(tempfile.mkdtemp(prefix="dragoman-scaling-"))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    bench: Bench | None = None
    try:
        bench = Bench(state, args)
        bench.restart_issuer()
        for curve in args.only:
            print(f"\n{curve}:", flush=True)
            if curve in ("issuers", "keys"):
                bench.identity(curve)
            else:
                getattr(bench, curve)()
    except (ServiceError, OSError) as exc:
        print(f"\n!!! SCALING RUN FAILED: {exc}", file=sys.stderr)
        print(f"state kept in {state}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every server was stopped", file=sys.stderr)
        return 130
    finally:
        if bench is not None:
            bench.close()
    points = bench.points
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    title = (
        f"dragoman CPU per request (reads, 1,000 callers, wrk -t1, 1 worker), run of {date};"
        f" {os.cpu_count()} CPUs, load average {load_before:.1f} before"
    )
    print(f"\n{title}\n")
    print(markdown(points))
    plot(points, args.png, title)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0],
                "duration_s": args.duration,
                "points": [asdict(p) for p in points],
            },
            indent=2,
        )
        + "\n",
        "utf-8",
    )
    print(f"\nplot: {args.png}\nresults: {args.json}; took {time.monotonic() - started:.0f}s")
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
    return 0 if all(p.ok for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
