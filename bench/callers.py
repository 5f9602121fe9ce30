"""The caller mix: many distinct callers, each with its own token and its own mapping.

- Caller ``i`` is cloud account ``acct-bench-<i>`` (role billing_admin) mapped to customer
  ``cus_bench_<i>``: the names ``mapping_lookup.py`` uses, so its prebuilt tables of up to
  1,000,000 mappings serve the scaling curves as they are.
- Tokens come from the bench issuer's batch endpoint (``issuer.py``: ``POST /bench/tokens``),
  one per caller, valid for an hour; each caller reuses its token for the whole run.
- Mappings are written in bulk into dragoman's own store, sealed by the cipher dragoman
  derives from its settings (``open_mapping_cipher``), exactly the rows ``MappingStore.add``
  writes (``RowCodec.sealed_values``), in one transaction: `dragoman mappings add` per
  mapping would take minutes for 1,000. The store is migrated first (as ``auto_migrate``
  would at start). No audit record is written for these rows (``mappings add`` writes one).
- ``write_callers_file``: one ``<token> <customer> <account>`` line per caller, read by the
  wrk script (``mix.lua``) and the steady-arrival generator (``arrivals.py``).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mapping_rows import sealed_row

ROLE = "billing_admin"


def account(i: int) -> str:
    return f"acct-bench-{i:07d}"


def customer(i: int) -> str:
    return f"cus_bench_{i:07d}"


@dataclass(frozen=True, slots=True)
class Caller:
    account: str
    customer: str
    token: str


def mint(
    issuer: str,
    indexes: list[int],
    *,
    issuers: int = 1,
    keys: int = 1,
    ttl: int = 3600,
) -> list[Caller]:
    """One token per caller index; caller ``j`` of the list is signed by issuer ``j % issuers``
    with key ``(j // issuers) % keys`` (so every issuer and every key signs some)."""
    body = {
        "ttl": ttl,
        "callers": [
            {
                "sub": f"user-{i}",
                "cloud_account": account(i),
                "roles": [ROLE],
                "issuer": j % issuers,
                "key": (j // issuers) % keys,
            }
            for j, i in enumerate(indexes)
        ],
    }
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        issuer + "/bench/tokens",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 (loopback)
        tokens: list[str] = json.load(response)["tokens"]
    return [Caller(account(i), customer(i), t) for i, t in zip(indexes, tokens, strict=True)]


def write_callers_file(path: Path, callers: list[Caller]) -> Path:
    path.write_text("".join(f"{c.token} {c.customer} {c.account}\n" for c in callers), "ascii")
    return path


def read_callers_file(path: Path) -> list[Caller]:
    found = []
    for line in path.read_text("ascii").splitlines():
        token, cust, acct = line.split()
        found.append(Caller(acct, cust, token))
    return found


def write_sidecar_mappings(path: Path, callers: list[Caller]) -> Path:
    """account -> {customer, roles}: the sidecar's in-memory mapping table."""
    table = {c.account: {"customer": c.customer, "roles": [ROLE]} for c in callers}
    path.write_text(json.dumps(table), "utf-8")
    return path


async def _seed(config: Path, count: int) -> None:
    from dragoman.mapping.factory import open_mapping_cipher
    from dragoman.mapping.rows import RowCodec
    from dragoman.mapping.schema import account_mappings
    from dragoman.settings.model import load_settings
    from dragoman.state import migrate
    from dragoman.state.sql import make_engine

    settings = load_settings(config)
    engine = make_engine(settings.store.database_url, pool_size=1)
    try:
        await migrate.upgrade(engine)
        codec = RowCodec(open_mapping_cipher(settings))
        now = datetime.now(UTC)
        rows = [
            sealed_row(codec, account=account(i), customer=customer(i), now=now)
            for i in range(count)
        ]
        async with engine.begin() as conn:
            for start in range(0, count, 5000):
                await conn.execute(account_mappings.insert(), rows[start : start + 5000])
    finally:
        await engine.dispose()


def seed(config: Path, count: int) -> None:
    """``count`` mappings acct-bench-<i> -> cus_bench_<i> in the store of ``config``."""
    asyncio.run(_seed(config, count))
