"""`dragoman mappings rekey`, run as the real executable against SQLite and PostgreSQL: every
data key re-wrapped under the active KEK, progress shown, resumable after a kill, a clear
refusal naming (never showing) a KEK that is not configured, and no downtime for a proxy
serving beside it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select, update

from dragoman.demo.runner import DemoStack, demo_settings, write_toml
from dragoman.keys.sealing import decode_master_key, new_master_key
from dragoman.mapping import maintenance
from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.factory import open_mapping_cipher, open_mapping_store
from dragoman.mapping.schema import account_mappings
from dragoman.mapping.store import MappingStore
from dragoman.settings import load_settings
from dragoman.state import migrate
from dragoman.state.sql import make_engine

DRAGOMAN = Path(sys.executable).with_name("dragoman")
OLD, NEW = new_master_key(), new_master_key()
PM = "/v1/customers/cus_alice/payment-methods"


def with_keks(keks: dict[str, str], active: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("mapping", {})["encryption"] = {"active_kek": active, "keks": keks}

    return edit


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}


def seeded(n: int) -> dict[str, str]:
    return {f"acct-rk-{i:05d}": f"cus_rk_{i:05d}" for i in range(n)}


async def bulk_add(store: MappingStore, mappings: dict[str, str]) -> None:
    """Sealed rows through the store's codec, inserted in one transaction (fast)."""
    now = datetime.now(UTC)
    rows = []
    for account, customer in mappings.items():
        mapping_id = str(uuid.uuid4())
        sealed = store.codec.sealed_values(
            mapping_id,
            cloud_account=account,
            payment_customer=customer,
            verification_evidence=f"ticket://{account}",
        )
        rows.append(
            {
                "id": mapping_id,
                **sealed,
                "status": "active",
                "created_at": now,
                "created_by": "test",
                "verification_method": "test",
                "last_validated_at": now,
                "updated_at": now,
                "updated_by": "test",
                "version": 1,
                "grants": [{"role": "billing_admin", "operations": ["*"]}],
            }
        )
    async with store.engine.begin() as conn:
        await conn.execute(account_mappings.insert(), rows)


def on_store(config: Path, action: Callable[[MappingStore], Awaitable[Any]]) -> Any:
    """Run ``action(store)`` with the store (and cipher) that ``config`` describes."""

    async def go() -> Any:
        settings = load_settings(config)
        store = open_mapping_store(settings, make_engine(settings.store.database_url))
        try:
            await migrate.upgrade(store.engine)
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def seed(config: Path, mappings: dict[str, str]) -> None:
    on_store(config, lambda store: bulk_add(store, mappings))


def keks_in_use(config: Path) -> dict[str | None, int]:
    found: dict[str | None, int] = on_store(config, maintenance.keks_in_use)
    return found


def read_with_only(config: Path, kek_id: str, kek: str) -> dict[str, str]:
    """Every mapping, opened by a cipher that knows ``kek_id`` and nothing else (the index
    key is the configured one): proof that each data key is wrapped exactly once by it."""

    async def read(store: MappingStore) -> dict[str, str]:
        index_key = open_mapping_cipher(load_settings(config))._index_key
        only = MappingStore(
            store.engine, cipher=MappingCipher({kek_id: decode_master_key(kek)}, kek_id, index_key)
        )
        return {m.cloud_account: m.payment_customer for m in await only.list(limit=100_000)}

    found: dict[str, str] = on_store(config, read)
    return found


# -- the happy path ------------------------------------------------------------------------------


def test_rekey_rewraps_every_data_key_under_the_active_kek_and_shows_progress(
    dragoman: Any, write_settings: Any, database_url: str
) -> None:
    before = write_settings(database_url, with_keks({"old": OLD}, "old"), "before.toml")
    during = write_settings(database_url, with_keks({"old": OLD, "new": NEW}, "new"), "during.toml")
    mappings = seeded(120)
    seed(before, mappings)
    assert keks_in_use(before) == {"old": 120}

    result = dragoman("mappings", "rekey", "-c", during, "--batch-size", "25")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "rekey done: 120 data keys re-wrapped under KEK 'new' (0 sealed from plaintext);"
        " mappings now: 120 under 'new'\n"
    )
    assert "120 data keys to re-wrap under KEK 'new' (120 under 'old')" in result.stderr
    assert "rekey: 25/120 data keys re-wrapped" in result.stderr  # the first batch
    assert "rekey: 120/120 data keys re-wrapped" in result.stderr  # the last one
    assert keks_in_use(during) == {"new": 120}
    # Nothing lost, nothing wrapped twice: the new KEK alone opens every mapping.
    assert read_with_only(during, "new", NEW) == mappings


def test_rekey_again_is_a_noop(dragoman: Any, write_settings: Any, database_url: str) -> None:
    before = write_settings(database_url, with_keks({"old": OLD}, "old"), "before.toml")
    during = write_settings(database_url, with_keks({"old": OLD, "new": NEW}, "new"), "during.toml")
    seed(before, seeded(10))
    assert dragoman("mappings", "rekey", "-c", during).returncode == 0

    again = dragoman("mappings", "rekey", "-c", during)

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("rekey done: 0 data keys re-wrapped under KEK 'new'")
    assert keks_in_use(during) == {"new": 10}


def test_rekey_moves_mappings_off_the_derived_master_kek(
    dragoman: Any, write_settings: Any, database_url: str
) -> None:
    derived = write_settings(database_url, name="derived.toml")  # no KEKs: `master`, derived
    configured = write_settings(database_url, with_keks({"k1": NEW}, "k1"), "k1.toml")
    mappings = seeded(30)
    seed(derived, mappings)
    assert keks_in_use(derived) == {"master": 30}

    result = dragoman("mappings", "rekey", "-c", configured)

    assert result.returncode == 0, result.stderr
    assert keks_in_use(configured) == {"k1": 30}
    assert read_with_only(configured, "k1", NEW) == mappings


# -- refusals ------------------------------------------------------------------------------------


def test_rekey_refuses_when_a_kek_in_use_is_not_configured_naming_it_not_its_key(
    dragoman: Any, write_settings: Any, database_url: str, master_key: str
) -> None:
    before = write_settings(database_url, with_keks({"old": OLD}, "old"), "before.toml")
    without_old = write_settings(database_url, with_keks({"new": NEW}, "new"), "new-only.toml")
    seed(before, seeded(12))

    result = dragoman("mappings", "rekey", "-c", without_old)

    assert result.returncode == 1
    assert "refusing to rekey" in result.stderr
    assert "12 under 'old'" in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    for secret in (OLD, NEW, master_key.strip()):
        assert secret not in result.stderr + result.stdout
    assert keks_in_use(before) == {"old": 12}


def test_rekey_stops_at_a_row_that_does_not_open_and_keeps_what_it_did(
    dragoman: Any, write_settings: Any, database_url: str
) -> None:
    before = write_settings(database_url, with_keks({"old": OLD}, "old"), "before.toml")
    during = write_settings(database_url, with_keks({"old": OLD, "new": NEW}, "new"), "during.toml")
    seed(before, seeded(40))

    async def tamper_the_last_row(store: MappingStore) -> str:
        # The last in the database's own order (PostgreSQL's collation is not Python's).
        t = account_mappings
        async with store.engine.begin() as conn:
            last = (await conn.execute(select(t.c.id).order_by(t.c.id.desc()).limit(1))).scalar()
            await conn.execute(
                update(t).where(t.c.id == last).values(data_key_wrapped=b"\x01" + bytes(60))
            )
        return str(last)

    tampered = on_store(before, tamper_the_last_row)
    result = dragoman("mappings", "rekey", "-c", during, "--batch-size", "10")

    assert result.returncode == 1
    assert f"mapping:{tampered}:dek:old does not open" in result.stderr
    assert "Traceback" not in result.stderr
    # The three batches before the bad row are done; its own batch is not.
    assert keks_in_use(during) == {"new": 30, "old": 10}


def test_rekey_on_an_unmigrated_database_with_auto_migrate_off_refuses(
    dragoman: Any, write_settings: Any, database_url: str
) -> None:
    def edit(data: dict[str, Any]) -> None:
        with_keks({"new": NEW}, "new")(data)
        data["store"]["auto_migrate"] = False

    result = dragoman("mappings", "rekey", "-c", write_settings(database_url, edit))

    assert result.returncode == 1
    assert "run `dragoman db upgrade` first" in result.stderr


def test_rekey_on_an_unreachable_store_exits_3(
    dragoman: Any, write_settings: Any, unreachable_url: str
) -> None:
    result = dragoman("mappings", "rekey", "-c", write_settings(unreachable_url))
    assert result.returncode == 3
    assert "the state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


# -- interrupted ---------------------------------------------------------------------------------


def test_rekey_killed_mid_way_then_run_again_finishes_without_losing_a_row(
    write_settings: Any, database_url: str, tmp_path: Path
) -> None:
    before = write_settings(database_url, with_keks({"old": OLD}, "old"), "before.toml")
    during = write_settings(database_url, with_keks({"old": OLD, "new": NEW}, "new"), "during.toml")
    mappings = seeded(1500)
    seed(before, mappings)

    # One row per transaction: slow enough to be killed in the middle.
    process = subprocess.Popen(
        [str(DRAGOMAN), "mappings", "rekey", "-c", str(during), "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("rekey: "):  # the first batch is committed
            break
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    halfway = keks_in_use(during)
    assert set(halfway) == {"old", "new"}, halfway
    assert sum(halfway.values()) == 1500

    result = subprocess.run(
        [str(DRAGOMAN), "mappings", "rekey", "-c", str(during), "--batch-size", "100"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"rekey done: {halfway['old']} data keys re-wrapped")
    assert keks_in_use(during) == {"new": 1500}
    assert read_with_only(during, "new", NEW) == mappings


# -- no downtime ---------------------------------------------------------------------------------


async def test_the_proxy_keeps_serving_while_rekey_runs(
    make_stack: Callable[..., Awaitable[DemoStack]], database_url: str, tmp_path: Path
) -> None:
    """Both KEKs configured on the proxy (its active one still the old), the mapping cache
    off so that every request reads its row: requests during the rekey all succeed."""
    both = {"old": OLD, "new": NEW}
    stack = await make_stack(
        {
            "store": {"database_url": database_url},
            "mapping": {"cache_ttl": 0, "encryption": {"keks": both, "active_kek": "old"}},
            # one caller reads as fast as it can: this test is about rekeying, not limits
            "limits": {"enabled": False},
        }
    )
    assert stack.proxy is not None
    await bulk_add(stack.proxy.store, seeded(1500))
    data = demo_settings(state_dir=stack.state_dir, **stack.urls)
    data["store"]["database_url"] = database_url
    with_keks(both, "new")(data)
    config = tmp_path / "rekey.toml"
    write_toml(data, config)

    process = await asyncio.create_subprocess_exec(
        str(DRAGOMAN), "mappings", "rekey", "-c", str(config), "--batch-size", "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )  # fmt: skip
    statuses: list[int] = []
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        while process.returncode is None:
            async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
                statuses.append(response.status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.01)
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
            after = response.status

    assert stdout.decode().startswith("rekey done: 1502 data keys re-wrapped under KEK 'new'")
    assert len(statuses) >= 20, "the rekey ended too soon to prove anything"
    assert set(statuses) == {200}
    print(f"{len(statuses)} requests served during the rekey")
    assert after == 200
