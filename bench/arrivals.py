"""Open-loop load with Poisson arrivals, for tail latency at a steady rate.

    python bench/arrivals.py URL --callers callers.txt --rate 1500 --duration 10 \\
        [--connections 64] [--writes 20] [--path '/v1/customers/{customer}/payment-methods']

Method (no coordinated omission):

- The schedule is drawn first: exponential gaps of mean 1/rate (fixed seed), so arrivals
  form a Poisson process at ``--rate`` for ``--duration`` seconds. Request k is caller
  ``k mod N`` of the callers file, a POST write with probability ``--writes`` %, as in
  ``mix.lua``.
- A dispatcher thread sleeps until each scheduled instant (``time.sleep``: sub-millisecond,
  unlike the event loop's millisecond timers) and hands the request to the event loop
  (uvloop), where ``--connections`` workers, each holding one kept-alive HTTP/1.1 socket,
  take requests in order: a request waits when every connection is busy, and that wait
  counts.
- Latency is measured **from the scheduled instant** to the last byte of the answer (the
  headline figure), and, for reference, from the moment the request was written to its
  socket ("service") and from the scheduled instant to that write ("lateness": the
  dispatcher's own delay plus any wait for a free connection). The generator shares the
  machine's cores; its lateness is printed so that its share of the tail is visible.

Prints one JSON document on stdout: sent, answered, errors by status, achieved rate,
percentiles (ms) of the three latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

BODY = b'{"card_number":"4242424242424242","exp_month":12,"exp_year":2030}'


def prepare(url: str, callers: Path, writes: float, path: str, count: int) -> list[bytes]:
    """``count`` raw requests, in order."""
    parts = urlsplit(url)
    host = parts.netloc
    lines = [line.split() for line in callers.read_text("ascii").splitlines() if line.strip()]
    rng = random.Random(20261129)
    prepared = []
    for k in range(count):
        token, customer = lines[k % len(lines)][:2]
        target = path.replace("{customer}", customer)
        head = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"
        if rng.random() * 100 < writes:
            prepared.append(
                f"POST {target} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n".encode()
                + BODY
            )
        else:
            prepared.append(f"GET {target} HTTP/1.1\r\n{head}\r\n".encode())
    return prepared


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer; (status, whether the server keeps the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection", "").lower() != "close"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(7)
    schedule: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(args.rate)
        if t >= args.duration:
            break
        schedule.append(t)
    requests = prepare(args.url, args.callers, args.writes, args.path, len(schedule))
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    from_schedule: list[float] = []
    service: list[float] = []
    lateness: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            item = await queue.get()
            if item is None:
                writer.close()
                return
            due, raw = item
            sent = time.perf_counter()
            try:
                writer.write(raw)
                status, keep = await read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                failures[type(exc).__name__] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            end = time.perf_counter()
            statuses[status] += 1
            from_schedule.append((end - due) * 1000)
            service.append((end - sent) * 1000)
            lateness.append((sent - due) * 1000)
            if not keep:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)

    workers = [asyncio.create_task(worker()) for _ in range(args.connections)]
    await asyncio.sleep(0.2)  # connections open
    start = time.perf_counter() + 0.05
    finished = asyncio.Event()

    def dispatch() -> None:
        for offset, raw in zip(schedule, requests, strict=True):
            due = start + offset
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            loop.call_soon_threadsafe(queue.put_nowait, (due, raw))
        loop.call_soon_threadsafe(finished.set)

    sys.setswitchinterval(0.0005)  # the dispatcher gets the GIL back quickly
    thread = threading.Thread(target=dispatch, daemon=True)
    thread.start()
    await finished.wait()
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    elapsed = time.perf_counter() - start
    quantiles = {"50": 0.50, "90": 0.90, "99": 0.99, "99.9": 0.999, "max": 1.0}
    return {
        "rate": args.rate,
        "duration_s": args.duration,
        "connections": args.connections,
        "sent": len(schedule),
        "answered": sum(statuses.values()),
        "achieved_rate": sum(statuses.values()) / elapsed,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": dict(failures),
        "latency_ms": {k: pct(from_schedule, q) for k, q in quantiles.items()},
        "service_ms": {k: pct(service, q) for k, q in quantiles.items()},
        "lateness_ms": {k: pct(lateness, q) for k, q in quantiles.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="Base URL of the target.")
    parser.add_argument("--callers", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=1500.0, help="Mean arrivals per second.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of arrivals.")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--writes", type=float, default=20.0, help="Percent of POST writes.")
    parser.add_argument("--path", default="/v1/customers/{customer}/payment-methods")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
