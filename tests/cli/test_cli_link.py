"""`dragoman mappings link`, run as the real executable beside a running stack (issuer,
payment platform, dragoman) that shares its mapping store (SQLite and PostgreSQL) and key
set: the link is verified with the platform before it is written, or nothing is written and
the command says why. Every attempt is in the audit trail, without plaintext ids."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dragoman.demo.runner import DemoStack, write_toml
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus

MakeStack = Callable[..., Awaitable[DemoStack]]
Dragoman = Callable[..., subprocess.CompletedProcess[str]]
EVIDENCE = re.compile(r"platform:customers\.get:\S+:[A-Za-z0-9_-]{16}")


async def start(
    make_stack: MakeStack, database_url: str, tmp_path: Path, **overrides: Any
) -> tuple[DemoStack, Path]:
    """A running stack on ``database_url`` and a settings file for the CLI beside it (its
    own settings, with ``overrides`` merged in)."""
    stack = await make_stack({"store": {"database_url": database_url}})
    data = tomllib.loads((stack.state_dir / "dragoman.toml").read_text("utf-8"))
    data["store"]["database_url"] = database_url
    for table, values in overrides.items():
        data[table] = {**data.get(table, {}), **values}
    config = tmp_path / "cli.toml"
    write_toml(data, config)
    return stack, config


async def link(
    dragoman: Dragoman,
    config: Path,
    account: str,
    customer: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    # In a thread: the stack (platform, JWKS) is served by this test's event loop.
    return await asyncio.to_thread(
        dragoman,
        "mappings", "link", "-c", config,
        "--account", account, "--customer", customer, "--by", "ops:carol",
        *extra,
        env=env,
    )  # fmt: skip


async def mapping_of(stack: DemoStack, account: str) -> AccountMapping | None:
    assert stack.proxy is not None
    return await stack.proxy.store.find_by_account(account)


def audit_records(stack: DemoStack) -> list[dict[str, Any]]:
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]


SKEWED_AHEAD = {
    "PYTHONPATH": str(Path(__file__).with_name("skewed_clock")),
    "SKEWED_CLOCK_OFFSET": "120",
}
"""The environment of a CLI process whose host clock runs two minutes ahead (its
sitecustomize shifts time.time; the database server's clock stays true)."""


@pytest.fixture
async def ready(make_stack: MakeStack, database_url: str, tmp_path: Path) -> tuple[DemoStack, Path]:
    stack, config = await start(make_stack, database_url, tmp_path)
    stack.platform.add_customer("cus_carol", "acct-3003")
    return stack, config


# -- success -------------------------------------------------------------------------------------


async def test_link_verifies_with_the_platform_and_prints_the_active_link(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    result = await link(dragoman, config, "acct-3003", "cus_carol")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["cloud_account"], shown["payment_customer"]) == ("acct-3003", "cus_carol")
    assert (shown["status"], shown["created_by"]) == ("active", "ops:carol")
    assert shown["verification_method"] == "platform-metadata"
    assert EVIDENCE.fullmatch(shown["verification_evidence"]), shown["verification_evidence"]
    [seen] = stack.platform.seen
    assert (seen.path, seen.accepted) == ("/v1/customers/cus_carol", True)


async def test_link_stores_the_verified_link_with_the_default_grants(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    await link(dragoman, config, "acct-3003", "cus_carol")
    mapping = await mapping_of(stack, "acct-3003")
    assert mapping is not None
    assert (mapping.payment_customer, mapping.status) == ("cus_carol", MappingStatus.ACTIVE)
    assert mapping.grants == (
        Grant(role="owner", operations=("*",)),
        Grant(role="billing_admin", operations=("*",)),
    )


async def test_link_with_grants_stores_those(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    result = await link(
        dragoman, config, "acct-3003", "cus_carol", "--grant", "principal:carol=payment_methods:*"
    )
    assert result.returncode == 0, result.stderr
    mapping = await mapping_of(stack, "acct-3003")
    assert mapping is not None
    assert mapping.grants == (Grant(principal="carol", operations=("payment_methods:*",)),)


async def test_a_link_made_by_the_cli_serves_the_proxys_requests(
    dragoman: Dragoman, ready: tuple[DemoStack, Path], http: aiohttp.ClientSession
) -> None:
    stack, config = ready
    await link(dragoman, config, "acct-3003", "cus_carol")
    token = stack.issuer.token("carol", "acct-3003", roles=["owner"])
    url = stack.urls["proxy"] + "/v1/customers/cus_carol/payment-methods"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200


# -- refusals ------------------------------------------------------------------------------------


def _deleted(stack: DemoStack) -> str:
    stack.platform.customers["cus_carol"].deleted = True
    return "cus_carol"


def _merged(stack: DemoStack) -> str:
    stack.platform.customers["cus_carol"].merged_into = "cus_carol_2"
    return "cus_carol"


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (lambda stack: "cus_nobody", "customer_missing"),
        (_deleted, "customer_deleted"),
        (_merged, "customer_merged"),
        (lambda stack: "cus_bob", "account_mismatch"),
    ],
    ids=["missing", "deleted", "merged", "another_account"],
)
async def test_a_refused_link_exits_1_with_the_reason_and_writes_nothing(
    dragoman: Dragoman,
    ready: tuple[DemoStack, Path],
    plant: Callable[[DemoStack], str],
    reason: str,
) -> None:
    stack, config = ready
    result = await link(dragoman, config, "acct-3003", plant(stack))
    assert result.returncode == 1
    assert f"link_refused ({reason})" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert await mapping_of(stack, "acct-3003") is None


@pytest.mark.parametrize("customer", ["..", "cus carol", ""])
async def test_a_malformed_customer_id_is_refused_before_the_platform_is_asked(
    dragoman: Dragoman, ready: tuple[DemoStack, Path], customer: str
) -> None:
    stack, config = ready
    result = await link(dragoman, config, "acct-3003", customer)
    assert result.returncode == 1
    assert "customer_invalid" in result.stderr
    assert stack.platform.seen == []
    assert await mapping_of(stack, "acct-3003") is None


async def test_link_of_a_linked_account_exits_1_and_keeps_the_first_link(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    before = await mapping_of(stack, "acct-1001")
    result = await link(dragoman, config, "acct-1001", "cus_alice")
    assert result.returncode == 1
    assert "mapping_exists" in result.stderr
    assert await mapping_of(stack, "acct-1001") == before


async def test_link_with_the_platform_down_exits_3_and_writes_nothing(
    dragoman: Dragoman, make_stack: MakeStack, database_url: str, tmp_path: Path
) -> None:
    stack, config = await start(
        make_stack, database_url, tmp_path, upstream={"url": "http://127.0.0.1:1"}
    )
    stack.platform.add_customer("cus_carol", "acct-3003")
    result = await link(dragoman, config, "acct-3003", "cus_carol")
    assert result.returncode == 3
    assert "platform_unavailable" in result.stderr
    assert "Traceback" not in result.stderr
    assert await mapping_of(stack, "acct-3003") is None


# SQLite is a file on this host: its clock is the host's, nothing to measure.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_link_from_a_host_whose_clock_is_off_the_stores_mints_no_token(
    dragoman: Dragoman, ready: tuple[DemoStack, Path], database_url: str
) -> None:
    """Its tokens' iat and exp, and the key it picks, go by this host's clock: the CLI
    measures it against the key store as a serving instance does, and signs nothing past
    keys.max_clock_skew (before, it signed, and the platform refused the token)."""
    stack, config = ready
    result = await link(dragoman, config, "acct-3003", "cus_carol", env=SKEWED_AHEAD)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "platform_unavailable" in result.stderr
    assert stack.platform.seen == []
    assert await mapping_of(stack, "acct-3003") is None


async def test_link_refuses_grants_that_name_nothing_in_the_catalog(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    result = await link(dragoman, config, "acct-3003", "cus_carol", "--grant", "role:x=nope:list")
    assert result.returncode == 2
    assert "nope:list" in result.stderr
    assert stack.platform.seen == []


# -- the audit trail -----------------------------------------------------------------------------


async def test_link_writes_a_link_attempt_record(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    await link(dragoman, config, "acct-3003", "cus_carol")
    mapping = await mapping_of(stack, "acct-3003")
    assert mapping is not None
    started, record = [r for r in audit_records(stack) if r["event"] == "mapping"]
    assert (started["action"], started["outcome"]) == ("link_attempt", "started")
    assert (record["action"], record["outcome"]) == ("link_attempt", "ok")
    assert (record["actor"], record["purpose"]) == ("ops:carol", "cli mappings link")
    assert (record["mapping_id"], record["customer"]) == (mapping.id, mapping.customer_index)
    assert record["evidence"] == mapping.verification_evidence
    assert record["request"] is None


async def test_a_refused_link_is_audited_without_plaintext_ids(
    dragoman: Dragoman, ready: tuple[DemoStack, Path]
) -> None:
    stack, config = ready
    await link(dragoman, config, "acct-3003", "cus_bob")
    [record] = [r for r in audit_records(stack) if r["event"] == "mapping"]
    assert (record["outcome"], record["code"], record["reason"]) == (
        "refused",
        "link_refused",
        "account_mismatch",
    )
    assert record["customer"] and record["account_index"]
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    assert "cus_" not in text
    assert "acct-" not in text
