"""Revision 0003 on a database that already holds plaintext mappings (written at revision
0002): after the upgrade, the first start (or mappings command) seals every row, each is
readable through the store, and no plaintext is left: not in a row, not in the SQLite file
or its write-ahead log (secure_delete, checkpoint), not in a pg_dump."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alembic import command
from sqlalchemy import MetaData, Table, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.demo.runner import DemoStack, demo_settings, write_toml
from dragoman.keys.sealing import new_master_key
from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.entity import Grant, MappingStatus
from dragoman.mapping.maintenance import keks_in_use, seal_plaintext
from dragoman.mapping.schema import account_mappings as t
from dragoman.mapping.store import MappingStore, make_engine
from dragoman.state import migrate

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DRAGOMAN = Path(sys.executable).with_name("dragoman")
VALIDATED = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
CREATED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
GRANTS = [{"role": "billing_admin", "operations": ["*"]}]

# acct-1001 -> cus_alice exists on the demo platform: a request proves the sealed row works.
LEGACY = {"acct-1001": "cus_alice"} | {
    f"acct-legacy-{i:04d}-zq": f"cus_LegacyPlain_{i:04d}x" for i in range(300)
}
REVOKED = "acct-legacy-0007-zq"
LEGACY_ID = "00000000-0000-4000-8000-"


def evidence_of(account: str) -> str | None:
    return None if account.endswith("3-zq") else f"ticket://legacy-evidence/{account}"


def plaintexts() -> list[str]:
    values = [*LEGACY, *LEGACY.values()]
    return values + [e for e in map(evidence_of, LEGACY) if e is not None]


def _to_0002_with_plaintext_rows(connection: Connection) -> None:
    command.upgrade(migrate._config(connection), "0002")
    legacy = Table("account_mappings", MetaData(), autoload_with=connection)
    assert "cloud_account_ciphertext" not in legacy.c  # really the old shape
    connection.execute(
        legacy.insert(),
        [
            {
                "id": f"{LEGACY_ID}{i:012d}",
                "cloud_account": account,
                "payment_customer": customer,
                "status": "revoked" if account == REVOKED else "active",
                "created_at": CREATED,
                "created_by": "ops:legacy",
                "verification_method": "manual",
                "verification_evidence": evidence_of(account),
                "last_validated_at": VALIDATED,
                "updated_at": CREATED,
                "updated_by": "ops:legacy",
                "version": 3,
                "grants": GRANTS,
            }
            for i, (account, customer) in enumerate(LEGACY.items())
        ],
    )


async def build_0002(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0002_with_plaintext_rows)
    finally:
        await engine.dispose()


@pytest.fixture
async def legacy_url(database_url: str) -> str:
    """The test's database (SQLite or PostgreSQL) at revision 0002, with plaintext rows."""
    await build_0002(database_url)
    return database_url


# -- looking for plaintext -----------------------------------------------------------------------


def sqlite_files(database_url: str) -> dict[str, bytes]:
    path = make_url(database_url).database
    assert path
    return {
        name: Path(name).read_bytes()
        for name in (path, path + "-wal", path + "-shm")
        if Path(name).exists()
    }


def pg_dump_binary() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump")) or [
        p for p in [shutil.which("pg_dump")] if p
    ]
    if not found:
        if IN_CI:
            pytest.fail("pg_dump is not installed; CI=true requires it", pytrace=False)
        pytest.skip("pg_dump is not installed")
    return found[-1]


def pg_dump(database_url: str) -> bytes:
    url = make_url(database_url)
    result = subprocess.run(
        [
            pg_dump_binary(),
            *("-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)),
            *("-U", url.username or "postgres", "--no-password", str(url.database)),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"CREATE TABLE public.account_mappings" in result.stdout
    return result.stdout


def dumped(database_url: str) -> dict[str, bytes]:
    """What an attacker with the storage would read: the SQLite files, or a pg_dump."""
    if database_url.startswith("sqlite"):
        return sqlite_files(database_url)
    return {"pg_dump": pg_dump(database_url)}


def assert_no_plaintext(database_url: str) -> None:
    for name, data in dumped(database_url).items():
        leaked = [value for value in plaintexts() if value.encode() in data]
        assert not leaked, f"{name} holds plaintext: {leaked[:5]}"


# -- the rows themselves -------------------------------------------------------------------------


async def raw_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(t))).all())


def assert_sealed(rows: list[Any]) -> None:
    rows = [row for row in rows if row.id.startswith(LEGACY_ID)]  # not the demo's own
    assert len(rows) == len(LEGACY)
    for row in rows:
        assert (row.cloud_account, row.payment_customer, row.verification_evidence) == (
            None,
            None,
            None,
        )
        assert row.cloud_account_ciphertext and row.payment_customer_ciphertext
        assert row.cloud_account_index and row.payment_customer_index
        assert row.data_key_wrapped and row.data_key_kek == "master"


async def assert_readable(store: MappingStore, *, skip: tuple[str, ...] = ()) -> None:
    for account, customer in LEGACY.items():
        if account in skip:
            continue
        mapping = await store.find_by_account(account)
        assert mapping is not None, account
        assert mapping.payment_customer == customer
        assert mapping.verification_evidence == evidence_of(account)
        assert mapping.status is (
            MappingStatus.REVOKED if account == REVOKED else MappingStatus.ACTIVE
        )
        assert (mapping.created_at, mapping.last_validated_at) == (CREATED, VALIDATED)
        assert (mapping.created_by, mapping.version) == ("ops:legacy", 3)
        assert mapping.grants == (Grant(role="billing_admin", operations=("*",)),)


# -- upgrade, then seal --------------------------------------------------------------------------


async def test_upgrade_then_seal_leaves_every_row_sealed_readable_and_no_plaintext(
    legacy_url: str, cipher: MappingCipher
) -> None:
    store = MappingStore(make_engine(legacy_url), cipher=cipher)
    try:
        await migrate.upgrade(store.engine)
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        # The migration cannot seal (it has no keys): the rows are still plaintext ...
        assert {row.cloud_account for row in await raw_rows(store.engine)} == set(LEGACY)
        assert await keks_in_use(store) == {None: len(LEGACY)}

        assert await seal_plaintext(store, batch_size=64) == len(LEGACY)

        # ... and now they are not.
        assert_sealed(await raw_rows(store.engine))
        assert await keks_in_use(store) == {"master": len(LEGACY)}
        await assert_readable(store)
        assert await seal_plaintext(store) == 0  # idempotent
        # While the database is open (the write-ahead log included) ...
        assert_no_plaintext(legacy_url)
    finally:
        await store.close()
    # ... and once it is closed.
    assert_no_plaintext(legacy_url)


async def test_a_row_left_unsealed_is_refused_clearly_not_crashed_on(
    legacy_url: str, cipher: MappingCipher
) -> None:
    from dragoman.mapping.crypto import MappingCryptoError

    store = MappingStore(make_engine(legacy_url), cipher=cipher)
    try:
        await migrate.upgrade(store.engine)
        with pytest.raises(MappingCryptoError, match="is not sealed"):
            await store.list()
    finally:
        await store.close()


async def test_a_sqlite_file_from_before_0003_has_plaintext_and_it_is_gone_after(
    tmp_path: Path, cipher: MappingCipher
) -> None:
    """The control of the byte search: the plaintext is there to find before sealing."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'legacy.db'}"
    await build_0002(url)
    before = sqlite_files(url)
    assert all(value.encode() in b"".join(before.values()) for value in plaintexts())
    store = MappingStore(make_engine(url), cipher=cipher)
    try:
        await migrate.upgrade(store.engine)
        await seal_plaintext(store)
    finally:
        await store.close()
    assert_no_plaintext(url)


# -- the first start seals -----------------------------------------------------------------------


async def test_the_first_start_of_the_proxy_seals_and_serves_the_legacy_rows(
    legacy_url: str, make_stack: Callable[..., Awaitable[DemoStack]]
) -> None:
    stack = await make_stack({"store": {"database_url": legacy_url}})
    assert stack.proxy is not None
    store = stack.proxy.store

    assert_sealed(await raw_rows(store.engine))
    await assert_readable(store, skip=("acct-1001",))  # the demo refreshed it at start
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            stack.urls["proxy"] + "/v1/customers/cus_alice/payment-methods",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
    assert_no_plaintext(legacy_url)


def settings_file(tmp_path: Path, database_url: str, *, auto_migrate: bool = True) -> Path:
    (tmp_path / "master.key").write_text(new_master_key() + "\n", "utf-8")
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )
    data["store"].update(database_url=database_url, auto_migrate=auto_migrate)
    path = tmp_path / "dragoman.toml"
    write_toml(data, path)
    return path


def dragoman(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}
    return subprocess.run(
        [str(DRAGOMAN), *map(str, args)], capture_output=True, text=True, env=env, check=False
    )


def test_the_first_mappings_command_upgrades_and_seals(legacy_url: str, tmp_path: Path) -> None:
    config = settings_file(tmp_path, legacy_url)

    listed = dragoman("mappings", "list", "-c", config, "--json")

    assert listed.returncode == 0, listed.stderr
    shown = {
        m["cloud_account"]: m["payment_customer"]
        for m in map(json.loads, listed.stdout.split("\n")[:-1])
    }
    assert shown == LEGACY
    asyncio.run(_assert_sealed_at(legacy_url))
    assert_no_plaintext(legacy_url)


def test_after_db_upgrade_rekey_finds_nothing_left_to_seal(legacy_url: str, tmp_path: Path) -> None:
    config = settings_file(tmp_path, legacy_url, auto_migrate=False)
    upgraded = dragoman("db", "upgrade", "-c", config)
    assert upgraded.returncode == 0, upgraded.stderr

    result = dragoman("mappings", "rekey", "-c", config)

    assert result.returncode == 0, result.stderr
    assert "(0 sealed from plaintext)" in result.stdout
    asyncio.run(_assert_sealed_at(legacy_url))
    assert_no_plaintext(legacy_url)


async def _assert_sealed_at(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert_sealed(await raw_rows(engine))
    finally:
        await engine.dispose()


def test_db_upgrade_alone_seals(legacy_url: str, tmp_path: Path) -> None:
    config = settings_file(tmp_path, legacy_url, auto_migrate=False)
    upgraded = dragoman("db", "upgrade", "-c", config)
    assert upgraded.returncode == 0, upgraded.stderr
    asyncio.run(_assert_sealed_at(legacy_url))


def test_dragoman_serve_startup_seals(legacy_url: str, tmp_path: Path) -> None:
    from dragoman.server import prepare
    from dragoman.settings import load_settings

    prepare(load_settings(settings_file(tmp_path, legacy_url)))  # what serve runs first
    asyncio.run(_assert_sealed_at(legacy_url))
