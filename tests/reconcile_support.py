"""Helpers of the reconciliation tests (mapping, CLI) and of bench/reconcile.py: mappings
inserted in bulk, drift planted in the demo platform, a sink that keeps the alerts, and a
gate in front of the platform that holds its answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy import select

from dragoman.alerts.base import Alert
from dragoman.demo.platform import PaymentPlatform
from dragoman.demo.runner import DemoPorts, DemoStack
from dragoman.mapping.entity import Grant
from dragoman.mapping.schema import account_mappings
from dragoman.mapping.store import MappingStore

GRANTS = [Grant(role="billing_admin", operations=("*",)).to_json()]
KINDS = ("customer_deleted", "customer_merged", "account_mismatch", "customer_missing")


def account_of(i: int) -> str:
    return f"acct-{i:06d}"


def customer_of(i: int) -> str:
    return f"cus_{i:06d}"


async def bulk_add(
    store: MappingStore,
    pairs: Sequence[tuple[str, str]],
    *,
    status: str = "active",
    validated_at: datetime | None = None,
    chunk: int = 2000,
) -> list[str]:
    """Insert mappings straight through the store's engine and codec (sealed exactly as
    MappingStore.add seals them); returns their ids in order."""
    now = datetime.now(UTC)
    ids: list[str] = []
    for start in range(0, len(pairs), chunk):
        rows = []
        for account, customer in pairs[start : start + chunk]:
            mapping_id = str(uuid.uuid4())
            ids.append(mapping_id)
            rows.append(
                {
                    "id": mapping_id,
                    **store.codec.sealed_values(
                        mapping_id,
                        cloud_account=account,
                        payment_customer=customer,
                        verification_evidence=None,
                    ),
                    "status": status,
                    "created_at": now,
                    "created_by": "test-seed",
                    "verification_method": "test-seed",
                    "last_validated_at": validated_at or now,
                    "updated_at": now,
                    "updated_by": "test-seed",
                    "version": 1,
                    "grants": GRANTS,
                }
            )
        async with store.engine.begin() as conn:
            await conn.execute(account_mappings.insert(), rows)
    return ids


@dataclass
class Planted:
    """Which mapping ids got which drift (the rest are untouched)."""

    ids: list[str]
    drift: dict[str, str] = field(default_factory=dict)

    def of_kind(self, kind: str) -> set[str]:
        return {mapping_id for mapping_id, k in self.drift.items() if k == kind}

    @property
    def untouched(self) -> set[str]:
        return set(self.ids) - set(self.drift)


def seed_platform(platform: PaymentPlatform, count: int, *, start: int = 0) -> list[int]:
    numbers = list(range(start, start + count))
    for i in numbers:
        platform.add_customer(customer_of(i), account_of(i))
    return numbers


def plant(
    platform: PaymentPlatform, numbers: Sequence[int], ids: Sequence[str], every: int
) -> Planted:
    """Every ``every``-th customer drifts, cycling through the four kinds."""
    planted = Planted(list(ids))
    for position, (i, mapping_id) in enumerate(zip(numbers, ids, strict=True)):
        if position % every != every // 2:
            continue
        kind = KINDS[(position // every) % len(KINDS)]
        customer = platform.customers[customer_of(i)]
        if kind == "customer_deleted":
            customer.deleted = True
        elif kind == "customer_merged":
            customer.merged_into = "cus_survivor"
        elif kind == "account_mismatch":
            customer.cloud_account = "acct-somebody-else"
        else:
            del platform.customers[customer_of(i)]
        planted.drift[mapping_id] = kind
    return planted


async def seed(
    store: MappingStore, platform: PaymentPlatform, count: int, *, every: int = 0, start: int = 0
) -> Planted:
    numbers = seed_platform(platform, count, start=start)
    ids = await bulk_add(store, [(account_of(i), customer_of(i)) for i in numbers])
    return plant(platform, numbers, ids, every) if every else Planted(ids)


async def rows_by_id(store: MappingStore) -> dict[str, Any]:
    async with store.engine.connect() as conn:
        return {row.id: row for row in await conn.execute(select(account_mappings))}


class RecordingSink:
    """An alert sink that keeps what it gets (the alerts a test inspects)."""

    name = "recording"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def emit(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def by_mapping(self) -> dict[str, list[Alert]]:
        found: dict[str, list[Alert]] = {}
        for alert in self.alerts:
            found.setdefault(str(alert.fields["mapping_id"]), []).append(alert)
        return found


class UnconfirmedSink(RecordingSink):
    """Gets every alert but never learns it arrived (a receiver whose answers are lost):
    the run keeps its alerts unsent."""

    name = "unconfirmed"

    def deliver(self, alert: Alert) -> asyncio.Future[bool]:
        self.emit(alert)
        return asyncio.get_running_loop().create_future()  # never settled


class Gate:
    """Middleware for a platform app: while closed, requests wait (the platform is slow)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        return await handler(request)


async def _no_seed() -> None:
    return None


async def start_stack(
    state_dir: Path,
    overrides: dict[str, Any] | None = None,
    *,
    gate: Gate | None = None,
    seed: bool = False,
) -> DemoStack:
    """The demo stack (no demo mappings unless ``seed``); with ``gate``, the platform's
    answers wait while the gate is closed. Stop it with ``stack.stop()``."""
    stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), state_dir)
    stack.prepare_state(overrides)
    if not seed:
        stack.seed_mappings = _no_seed  # type: ignore[method-assign]
    if gate is not None:
        plain = stack.platform.app

        def gated() -> web.Application:
            app = plain()
            app.middlewares.append(gate.middleware)
            return app

        stack.platform.app = gated  # type: ignore[method-assign]
    await stack.start()
    return stack


def platform_port(stack: DemoStack) -> int:
    port = urlsplit(stack.urls["platform"]).port
    assert port is not None
    return port


async def stop_platform(stack: DemoStack) -> None:
    """The platform goes down: its listening socket and connections close."""
    port = platform_port(stack)
    for runner in list(stack.runners):
        if any(address[1] == port for address in runner.addresses):
            await runner.cleanup()
            stack.runners.remove(runner)
            return
    raise AssertionError("the platform is not running")


async def start_platform(stack: DemoStack) -> None:
    """The platform comes back on its port, with the customers it had."""
    runner = web.AppRunner(stack.platform.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", platform_port(stack)).start()
    stack.runners.append(runner)


def asked(stack: DemoStack, since: int = 0) -> list[str]:
    """Customers whose record the platform was asked for (in order), from ``since``."""
    prefix = "/v1/customers/"
    return [
        seen.path.removeprefix(prefix)
        for seen in stack.platform.seen[since:]
        if seen.method == "GET" and seen.path.startswith(prefix) and seen.path.count("/") == 3
    ]


async def start_bent_platform(
    state_dir: Path, middleware: Any, settings: dict[str, Any] | None = None
) -> DemoStack:
    """The demo stack (reconciliation unscheduled, no seeded mappings) whose payment
    platform answers through ``middleware`` (an aiohttp middleware that may bend answers)."""
    stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), state_dir)
    stack.prepare_state({**(settings or {}), "reconcile": {"schedule": False}})

    async def no_seed() -> None:
        return None

    stack.seed_mappings = no_seed  # type: ignore[method-assign]
    plain = stack.platform.app

    def app() -> web.Application:
        application = plain()
        application.middlewares.append(middleware)
        return application

    stack.platform.app = app  # type: ignore[method-assign]
    await stack.start()
    return stack
