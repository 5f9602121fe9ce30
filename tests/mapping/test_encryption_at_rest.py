"""Encryption at rest of the mappings, proven on the storage itself: after mappings are added
through the store, the CLI and used through the running proxy, neither the SQLite files
(database, write-ahead log, shared memory) nor a real pg_dump of PostgreSQL hold a payment
customer id or a cloud account id, in any of the usual encodings. Blind indexes are keyed;
sealed values are bound to their row and field; a row that was altered is refused, never
served and never forwarded."""

from __future__ import annotations

import asyncio
import base64
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mapping_helpers import assert_searches_the_account_index
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from dragoman.demo.runner import DemoStack, demo_settings, write_toml
from dragoman.mapping.crypto import MappingCipher, MappingCryptoError, derive
from dragoman.mapping.entity import Grant, MappingStatus
from dragoman.mapping.rows import ACCOUNT, CUSTOMER
from dragoman.mapping.schema import account_mappings as t
from dragoman.mapping.store import MappingStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DRAGOMAN = Path(sys.executable).with_name("dragoman")
PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4111111111111111", "exp_month": 1, "exp_year": 2031}
ADMIN = (Grant(role="billing_admin", operations=("*",)),)


def account(i: int) -> str:
    return f"acct-atrest-{i:04d}-q7"


def customer(i: int) -> str:
    return f"cus_AtRestSecret{i:04d}Zx"


def evidence(i: int) -> str:
    return f"ticket://evidence/at-rest/{i:04d}"


# -- encodings to look for -----------------------------------------------------------------------


def forms(value: str) -> Iterator[tuple[str, bytes]]:
    """``value`` as it could sit in a file: UTF-8, UTF-16 (both orders), hex (both cases),
    and base64 (both alphabets) at each of the three alignments (only the characters that
    do not depend on the neighbouring bytes)."""
    raw = value.encode()
    yield "utf-8", raw
    yield "utf-16-le", value.encode("utf-16-le")
    yield "utf-16-be", value.encode("utf-16-be")
    yield "hex", raw.hex().encode()
    yield "HEX", raw.hex().upper().encode()
    for shift in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            whole_groups = raw[shift : shift + 3 * ((len(raw) - shift) // 3)]
            core = encode(whole_groups)
            assert len(core) >= 8, value  # long enough not to match by chance
            yield f"{name}+{shift}", core


def leaks(data: bytes, values: list[str], *, every_form: list[str]) -> list[str]:
    found = [value for value in values if value.encode() in data]
    for value in every_form:
        found += [f"{value} ({name})" for name, form in forms(value) if form in data]
    return found


def test_the_search_finds_each_form_it_looks_for() -> None:
    """The control: every encoding is found when it is there, whatever the alignment."""
    value = customer(42)
    for prefix in (b"", b"x", b"xy"):
        blob = prefix + value.encode()
        texts = [
            blob,
            value.encode("utf-16-le"),
            value.encode("utf-16-be"),
            blob.hex().encode(),
            blob.hex().upper().encode(),
            base64.b64encode(blob),
            base64.urlsafe_b64encode(blob),
        ]
        for text in texts:
            assert leaks(b"..." + text + b"...", [], every_form=[value]), text


# -- the storage as an attacker would read it ----------------------------------------------------


def sqlite_files(database_url: str) -> dict[str, bytes]:
    path = make_url(database_url).database
    assert path
    return {
        name: Path(name).read_bytes()
        for name in (path, path + "-wal", path + "-shm")
        if Path(name).exists()
    }


def pg_dump(database_url: str) -> bytes:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump")) or [
        p for p in [shutil.which("pg_dump")] if p
    ]
    if not found:
        if IN_CI:
            pytest.fail("pg_dump is not installed; CI=true requires it", pytrace=False)
        pytest.skip("pg_dump is not installed")
    url = make_url(database_url)
    result = subprocess.run(
        [
            found[-1],
            *("-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)),
            *("-U", url.username or "postgres", "--no-password", str(url.database)),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def storage(database_url: str) -> dict[str, bytes]:
    if database_url.startswith("sqlite"):
        return sqlite_files(database_url)
    return {"pg_dump": pg_dump(database_url)}


def assert_nothing_leaks(database_url: str, *, added: int) -> None:
    secrets = [
        "acct-1001",
        "acct-2002",
        "cus_alice",
        "cus_bob",
        "acct-cli-0001-q7",
        "cus_CliSecret0001Zx",
        *(account(i) for i in range(added)),
        *(customer(i) for i in range(added)),
        *(evidence(i) for i in range(added)),
    ]
    every_form = [
        "cus_CliSecret0001Zx",
        "acct-cli-0001-q7",
        *(customer(i) for i in (0, 1, 17, added - 1)),
        *(account(i) for i in (0, 1, 17, added - 1)),
    ]
    dumped = storage(database_url)
    assert dumped
    for name, data in dumped.items():
        assert not leaks(data, secrets, every_form=every_form), name


async def fill(stack: DemoStack, tmp_path: Path, database_url: str, *, added: int) -> None:
    """Mappings added every way there is: the store (add, update, revoke and re-link), the
    CLI, and requests through the proxy."""
    assert stack.proxy is not None
    store = stack.proxy.store
    for i in range(added):
        await store.add(
            cloud_account=account(i),
            payment_customer=customer(i),
            created_by="test",
            verification_method="test",
            verification_evidence=evidence(i),
            grants=ADMIN,
            status=MappingStatus.SUSPENDED if i % 7 == 0 else MappingStatus.ACTIVE,
        )
    for i in range(0, added, 10):
        mapping = await store.find_by_account(account(i))
        assert mapping is not None
        mapping = await store.update(
            mapping.id,
            expected_version=mapping.version,
            actor="test",
            verification_evidence=evidence(i) + "/renewed",
        )
        await store.update(
            mapping.id, expected_version=mapping.version, actor="test", status="revoked"
        )
        await store.add(  # linked anew: the revoked row stays as history
            cloud_account=account(i),
            payment_customer=customer(i),
            created_by="test",
            verification_method="test",
            grants=ADMIN,
        )

    data = demo_settings(state_dir=stack.state_dir, **stack.urls)
    data["store"]["database_url"] = database_url
    config = tmp_path / "cli.toml"
    write_toml(data, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}
    cli = [str(DRAGOMAN), "mappings", "add", "-c", str(config), "--by", "ops", "--grant"]
    result = await asyncio.to_thread(
        subprocess.run,
        [
            *cli,
            *("role:billing_admin=*", "--account", "acct-cli-0001-q7"),
            *("--customer", "cus_CliSecret0001Zx", "--evidence", "cli evidence"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
                assert response.status == 200
        async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as response:
            assert response.status == 201


async def test_the_database_holds_no_plaintext_customer_or_account_id(
    make_stack: Callable[..., Awaitable[DemoStack]], database_url: str, tmp_path: Path
) -> None:
    added = 200
    stack = await make_stack({"store": {"database_url": database_url}})
    await fill(stack, tmp_path, database_url, added=added)

    assert_nothing_leaks(database_url, added=added)  # while it runs
    await stack.stop()
    assert_nothing_leaks(database_url, added=added)  # and at rest


async def test_the_search_would_find_a_plaintext_row(
    store: MappingStore, database_url: str
) -> None:
    """The control, on the real storage: a plaintext value written to the legacy column is
    found by the same search (so an empty result means something)."""
    mapping = await store.add(
        cloud_account=account(0),
        payment_customer=customer(0),
        created_by="test",
        verification_method="test",
    )
    async with store.engine.begin() as conn:
        await conn.execute(
            update(t).where(t.c.id == mapping.id).values(payment_customer=customer(0))
        )
    with pytest.raises(AssertionError):
        assert_nothing_leaks(database_url, added=1)


# -- blind indexes -------------------------------------------------------------------------------

KEY_A, KEY_B = b"A" * 32, b"B" * 32
TEST_MASTER_KEY = b"dragoman-test-master-key-32bytes"  # the `cipher` fixture's (tests/conftest.py)


def cipher_with(index_key: bytes, kek: bytes = b"K" * 32) -> MappingCipher:
    return MappingCipher({"k": kek}, "k", index_key)


def test_the_blind_index_is_deterministic_per_key() -> None:
    first, second = cipher_with(KEY_A), cipher_with(KEY_A, kek=b"L" * 32)
    assert first.index(CUSTOMER, "cus_alice") == first.index(CUSTOMER, "cus_alice")
    assert first.index(CUSTOMER, "cus_alice") == second.index(CUSTOMER, "cus_alice")


def test_the_blind_index_differs_under_another_index_key() -> None:
    assert cipher_with(KEY_A).index(CUSTOMER, "cus_alice") != cipher_with(KEY_B).index(
        CUSTOMER, "cus_alice"
    )


def test_the_blind_index_differs_by_value_and_kind_and_reveals_neither() -> None:
    cipher = cipher_with(KEY_A)
    index = cipher.index(CUSTOMER, "cus_alice")
    assert index != cipher.index(CUSTOMER, "cus_bob")
    assert index != cipher.index(ACCOUNT, "cus_alice")
    assert len(index) == 43  # HMAC-SHA256, base64url without padding
    assert "alice" not in index
    assert not any(form in index.encode() for _, form in forms("cus_alice"))


async def test_the_stored_index_is_the_keyed_index_of_the_value(
    store: MappingStore, cipher: MappingCipher
) -> None:
    mapping = await store.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="test",
        verification_method="test",
    )
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(t).where(t.c.id == mapping.id))).one()
    assert row.cloud_account_index == cipher.index(ACCOUNT, "acct-1001")
    assert row.payment_customer_index == cipher.index(CUSTOMER, "cus_alice")
    assert mapping.customer_index == row.payment_customer_index
    # Under another index key (the same KEK), the row opens by id but no lookup finds it.
    kek = derive(TEST_MASTER_KEY, "dragoman/mapping-kek/v1")
    other = MappingStore(store.engine, cipher=MappingCipher({"master": kek}, "master", KEY_B))
    try:
        assert await other.find_by_account("acct-1001") is None
        with pytest.raises(MappingCryptoError, match="blind index"):
            await other.get(mapping.id)  # its stored index is not this key's index of its value
    finally:
        await other.close_readers()


# -- sealed values are bound to their row and field ----------------------------------------------


async def add_two(store: MappingStore) -> tuple[str, str]:
    first = await store.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="test",
        verification_method="test",
        verification_evidence="ticket://1",
    )
    second = await store.add(
        cloud_account="acct-2002",
        payment_customer="cus_bob",
        created_by="test",
        verification_method="test",
        verification_evidence="ticket://2",
    )
    return first.id, second.id


async def change(store: MappingStore, mapping_id: str, **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(update(t).where(t.c.id == mapping_id).values(**values))


async def row_of(store: MappingStore, mapping_id: str) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(select(t).where(t.c.id == mapping_id))).one()


async def test_a_row_copied_onto_another_id_does_not_open(store: MappingStore) -> None:
    first, _ = await add_two(store)
    original = (await row_of(store, first))._asdict()
    copy_id = "11111111-2222-4333-8444-555555555555"
    async with store.engine.begin() as conn:
        # Revoked, so that the copy's index does not collide with the live original.
        await conn.execute(t.insert().values({**original, "id": copy_id, "status": "revoked"}))

    with pytest.raises(MappingCryptoError, match=copy_id):
        await store.get(copy_id)
    assert (await store.get(first)).payment_customer == "cus_alice"  # the original still opens


async def test_a_data_key_moved_to_another_row_does_not_open(store: MappingStore) -> None:
    first, second = await add_two(store)
    moved = await row_of(store, first)
    await change(store, second, data_key_wrapped=moved.data_key_wrapped)
    with pytest.raises(MappingCryptoError):
        await store.get(second)


async def test_a_sealed_field_moved_to_another_row_or_field_does_not_open(
    store: MappingStore,
) -> None:
    first, second = await add_two(store)
    one, two = await row_of(store, first), await row_of(store, second)
    await change(store, second, payment_customer_ciphertext=one.payment_customer_ciphertext)
    with pytest.raises(MappingCryptoError):
        await store.get(second)
    # Within its own row, the account's sealed value in the customer's column.
    await change(store, first, payment_customer_ciphertext=one.cloud_account_ciphertext)
    with pytest.raises(MappingCryptoError):
        await store.get(first)
    assert two.payment_customer_ciphertext != one.payment_customer_ciphertext


async def test_an_index_copied_from_another_row_is_refused_not_followed(
    store: MappingStore,
) -> None:
    """Whoever can write the table could point acct-2002's lookups at acct-1001's row (and
    so at cus_alice) by copying an index: the row's sealed account must say the same."""
    first, second = await add_two(store)
    bob = await row_of(store, second)
    await change(store, second, status="revoked")
    await change(store, first, cloud_account_index=bob.cloud_account_index)

    with pytest.raises(MappingCryptoError, match="blind index"):
        await store.find_by_account("acct-2002")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payment_customer_ciphertext", "flip"),
        ("cloud_account_ciphertext", "flip"),
        ("data_key_wrapped", "flip"),
        ("data_key_kek", "ghost"),
        ("payment_customer_ciphertext", "short"),
    ],
)
async def test_a_tampered_row_is_refused(store: MappingStore, column: str, value: str) -> None:
    first, _ = await add_two(store)
    row = await row_of(store, first)
    if value == "flip":
        original = bytearray(getattr(row, column))
        original[-5] ^= 0x01
        tampered: Any = bytes(original)
    elif value == "short":
        tampered = b"\x01abc"
    else:
        tampered = value
    await change(store, first, **{column: tampered})

    with pytest.raises(MappingCryptoError) as refused:
        await store.find_by_account("acct-1001")
    assert "cus_alice" not in str(refused.value)
    if value == "ghost":
        assert str(refused.value) == (
            f"mapping {first}: its data key is wrapped by KEK 'ghost', which is not configured"
        )
    assert store.reachable  # an altered row is not an outage


# -- what the proxy answers for a tampered row ---------------------------------------------------


async def test_the_proxy_refuses_a_request_whose_mapping_row_was_tampered(
    make_stack: Callable[..., Awaitable[DemoStack]],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = await make_stack({"store": {"database_url": database_url}, "mapping": {"cache_ttl": 0}})
    assert stack.proxy is not None
    store = stack.proxy.store
    alice = await store.find_by_account("acct-1001")
    assert alice is not None
    row = await row_of(store, alice.id)
    flipped = bytearray(row.payment_customer_ciphertext)
    flipped[-1] ^= 0x80
    await change(store, alice.id, payment_customer_ciphertext=bytes(flipped))
    seen = len(stack.platform.seen)
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}"}

    async with aiohttp.ClientSession() as http:
        async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
            status, body = response.status, await response.json()
        async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as response:
            post_status = response.status
        async with http.get(stack.urls["proxy"] + "/_dragoman/whoami", headers=headers) as response:
            whoami_status, whoami = response.status, await response.text()

    # Refused, not forwarded, and nothing of the row in the answer.
    assert (status, body["code"]) == (500, "internal_error")
    audited = (stack.state_dir / "audit.jsonl").read_text().splitlines()
    assert '"reason":"mapping_unreadable"' in audited[-1]
    assert post_status == 500
    assert whoami_status == 500
    assert "cus_alice" not in whoami and "cus_alice" not in str(body)
    assert len(stack.platform.seen) == seen
    # One line per refusal naming the row, no traceback.
    unreadable = [r for r in caplog.records if "cannot be opened" in r.getMessage()]
    assert len(unreadable) == 3 and all(r.exc_info is None for r in unreadable)
    assert alice.id in unreadable[0].getMessage()
    # Bob's row is untouched and still served.
    bob = stack.issuer.token("bob", "acct-2002", roles=["billing_admin"])
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            stack.urls["proxy"] + "/v1/customers/cus_bob/payment-methods",
            headers={"Authorization": f"Bearer {bob}"},
        ) as response,
    ):
        assert response.status == 200


# -- lookups go through an index of the blind index ----------------------------------------------


async def test_a_lookup_by_account_searches_an_index_never_scans_the_table(
    store: MappingStore,
) -> None:
    """The statement find_by_account sends, explained by the database itself: it must use
    the index of the account's blind index (a scan would make every lookup, a miss
    included, cost the whole table: bench/mapping_lookup.py)."""
    await store.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="test",
        verification_method="test",
    )
    sent: list[str] = []
    if store.engine.dialect.name == "sqlite":  # what SQLite itself is asked to run
        store.trace_lookups(lambda statement: sent.append(statement))
    try:
        await store.find_by_account("acct-missing")
    finally:
        if store.engine.dialect.name == "sqlite":
            store.trace_lookups(None)
    statement, parameters = store.lookup_statement("acct-missing")
    if store.engine.dialect.name == "sqlite":
        assert len(sent) == 1 and "FROM account_mappings" in sent[0], sent

    await assert_searches_the_account_index(store, statement, parameters)
