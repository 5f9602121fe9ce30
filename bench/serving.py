"""Runs an aiohttp application on uvloop until SIGTERM/SIGINT: the helper servers' main loop.

Same settings as dragoman's workers (``dragoman.server.serve_worker``): no access log,
``reuse_port`` and a 2048 backlog, so the pass-through proxy differs from dragoman only in
what it does per request.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvloop
from aiohttp import web


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True, backlog=2048)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_forever(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT."""
    uvloop.run(_serve(app, host, port))


def run_workers(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> None:
    """``target(*args)`` in this process (one worker) or in ``workers`` spawned processes
    sharing the port with ``reuse_port``; SIGTERM/SIGINT are passed on to them."""
    if workers == 1:
        target(*args)
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args) for _ in range(workers)]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()
