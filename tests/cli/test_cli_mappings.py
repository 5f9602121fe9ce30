"""`dragoman mappings add | list | show | suspend | revoke`, run as the real executable
against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus
from dragoman.mapping.factory import open_mapping_store
from dragoman.mapping.schema import account_mappings
from dragoman.settings import load_settings
from dragoman.state.sql import make_engine

ADMIN_GRANT = "role:billing_admin=*"
ALICE_GRANT = "principal:alice=payment_methods:list"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def stored(config: Path) -> list[AccountMapping]:
    """What the database holds, read with the store (not through the CLI)."""

    async def read() -> list[AccountMapping]:
        settings = load_settings(config)
        store = open_mapping_store(settings, make_engine(settings.store.database_url))
        try:
            return await store.list()
        finally:
            await store.close()

    return asyncio.run(read())


def updated_by(database_url: str, mapping_id: str) -> str:
    async def read() -> str:
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = select(account_mappings.c.updated_by).where(
                    account_mappings.c.id == mapping_id
                )
                return str((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def add(dragoman: Any, config: Path, account: str = "acct-1001", *extra: str) -> dict[str, Any]:
    result = dragoman(
        "mappings", "add", "-c", config,
        "--account", account,
        "--customer", f"cus_{account}",
        "--by", "ops:carol",
        "--grant", ADMIN_GRANT,
        "--grant", ALICE_GRANT,
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return created


# -- add -----------------------------------------------------------------------------------------


def test_add_prints_the_new_mapping_as_json(dragoman: Any, config: Path) -> None:
    created = add(dragoman, config)
    assert re.fullmatch(UUID, created["id"])
    assert created["cloud_account"] == "acct-1001"
    assert created["payment_customer"] == "cus_acct-1001"
    assert created["status"] == "active"
    assert created["created_by"] == "ops:carol"
    assert created["verification_method"] == "manual"
    assert created["verification_evidence"] is None
    assert created["version"] == 1
    assert created["grants"] == [
        {"role": "billing_admin", "operations": ["*"]},
        {"principal": "alice", "operations": ["payment_methods:list"]},
    ]


def test_add_stores_the_mapping_with_its_grants(
    dragoman: Any, config: Path, database_url: str
) -> None:
    created = add(dragoman, config)
    [mapping] = stored(config)
    assert mapping.id == created["id"]
    assert mapping.payment_customer == "cus_acct-1001"
    assert mapping.status is MappingStatus.ACTIVE
    assert mapping.grants == (
        Grant(role="billing_admin", operations=("*",)),
        Grant(principal="alice", operations=("payment_methods:list",)),
    )


def test_add_records_verification_method_and_evidence(
    dragoman: Any, config: Path, database_url: str
) -> None:
    add(dragoman, config, "acct-1001", "--verification-method", "contract", "--evidence", "VER-7")
    [mapping] = stored(config)
    assert (mapping.verification_method, mapping.verification_evidence) == ("contract", "VER-7")


def test_add_splits_comma_separated_operations_of_one_grant(
    dragoman: Any, config: Path, database_url: str
) -> None:
    result = dragoman(
        "mappings", "add", "-c", config,
        "--account", "acct-1001", "--customer", "cus_alice", "--by", "ops",
        "--grant", "role:viewer=payment_methods:list, payment_methods:read,billing_address:read",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [mapping] = stored(config)
    assert mapping.grants == (
        Grant(
            role="viewer",
            operations=("payment_methods:list", "payment_methods:read", "billing_address:read"),
        ),
    )


def test_add_of_an_already_linked_account_exits_1_and_keeps_the_first_link(
    dragoman: Any, config: Path, database_url: str
) -> None:
    first = add(dragoman, config)
    result = dragoman(
        "mappings", "add", "-c", config,
        "--account", "acct-1001", "--customer", "cus_mallory", "--by", "ops:mallory",
        "--grant", ADMIN_GRANT,
    )  # fmt: skip
    assert result.returncode == 1
    assert "acct-1001" in result.stderr
    assert "already linked" in result.stderr
    assert "Traceback" not in result.stderr
    assert [m.id for m in stored(config)] == [first["id"]]
    assert stored(config)[0].payment_customer == "cus_acct-1001"


@pytest.mark.parametrize(
    "grant",
    [
        "billing_admin=*",  # no kind
        "group:billing_admin=*",  # unknown kind
        "role:billing_admin",  # no operations
        "role:=*",  # no name
        "principal:alice=",  # empty operations
        "principal:alice= , ",  # only separators
    ],
)
def test_add_with_bad_grant_syntax_exits_nonzero_with_a_clear_message(
    dragoman: Any, config: Path, database_url: str, grant: str
) -> None:
    result = dragoman(
        "mappings", "add", "-c", config,
        "--account", "acct-1001", "--customer", "cus_alice", "--by", "ops",
        "--grant", grant,
    )  # fmt: skip
    assert result.returncode != 0
    assert repr(grant) in result.stderr
    assert "expected principal:NAME=OPS or role:NAME=OPS" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before the store was touched: the database is not even created/migrated.
    assert dragoman("db", "current", "-c", config).stdout.strip() == "(empty)"


def test_add_without_a_grant_exits_nonzero(dragoman: Any, config: Path) -> None:
    result = dragoman(
        "mappings", "add", "-c", config,
        "--account", "acct-1001", "--customer", "cus_alice", "--by", "ops",
    )  # fmt: skip
    assert result.returncode != 0
    assert "--grant" in result.stderr


# -- list and show ---------------------------------------------------------------------------


def test_list_prints_one_line_per_mapping(dragoman: Any, config: Path) -> None:
    first = add(dragoman, config, "acct-1001")
    second = add(dragoman, config, "acct-2002")
    result = dragoman("mappings", "list", "-c", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, created in zip(lines, (first, second), strict=True):
        assert re.fullmatch(
            rf"{created['id']}  {created['cloud_account']}  active     v1"
            r"  validated \d{4}-\d\d-\d\d \d\d:\d\dZ",
            line,
        ), line


def test_list_does_not_print_the_payment_customer(dragoman: Any, config: Path) -> None:
    add(dragoman, config)
    assert "cus_acct-1001" not in dragoman("mappings", "list", "-c", config).stdout


def test_list_json_prints_one_object_per_line(dragoman: Any, config: Path) -> None:
    first = add(dragoman, config, "acct-1001")
    second = add(dragoman, config, "acct-2002")
    result = dragoman("mappings", "list", "--json", "-c", config)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [first, second]


def test_list_of_an_empty_store_prints_nothing(dragoman: Any, config: Path) -> None:
    result = dragoman("mappings", "list", "-c", config)
    assert (result.returncode, result.stdout) == (0, "")


def test_show_by_id_prints_the_mapping(dragoman: Any, config: Path) -> None:
    created = add(dragoman, config)
    add(dragoman, config, "acct-2002")
    result = dragoman("mappings", "show", "-c", config, created["id"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == created


def test_show_by_cloud_account_prints_the_mapping(dragoman: Any, config: Path) -> None:
    add(dragoman, config)
    created = add(dragoman, config, "acct-2002")
    result = dragoman("mappings", "show", "-c", config, "acct-2002")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == created


def test_show_of_an_unknown_reference_exits_1(dragoman: Any, config: Path) -> None:
    add(dragoman, config)
    result = dragoman("mappings", "show", "-c", config, "acct-9999")
    assert result.returncode == 1
    assert "no mapping with id or cloud account 'acct-9999'" in result.stderr
    assert "Traceback" not in result.stderr


# -- suspend and revoke ------------------------------------------------------------------------


def test_suspend_sets_the_status_and_bumps_the_version(
    dragoman: Any, config: Path, database_url: str
) -> None:
    created = add(dragoman, config)
    result = dragoman("mappings", "suspend", "-c", config, "acct-1001", "--by", "ops:dave")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["status"], shown["version"]) == ("suspended", 2)
    [mapping] = stored(config)
    assert (mapping.id, mapping.status, mapping.version) == (
        created["id"],
        MappingStatus.SUSPENDED,
        2,
    )


def test_suspend_records_who_did_it(dragoman: Any, config: Path, database_url: str) -> None:
    created = add(dragoman, config)
    dragoman("mappings", "suspend", "-c", config, created["id"], "--by", "ops:dave")
    assert updated_by(database_url, created["id"]) == "ops:dave"


def test_revoke_sets_the_status_and_bumps_the_version(
    dragoman: Any, config: Path, database_url: str
) -> None:
    created = add(dragoman, config)
    result = dragoman("mappings", "revoke", "-c", config, created["id"], "--by", "ops:erin")
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["status"], json.loads(result.stdout)["version"]) == (
        "revoked",
        2,
    )
    [mapping] = stored(config)
    assert mapping.status is MappingStatus.REVOKED


def test_revoke_records_who_did_it(dragoman: Any, config: Path, database_url: str) -> None:
    created = add(dragoman, config)
    dragoman("mappings", "revoke", "-c", config, "acct-1001", "--by", "ops:erin")
    assert updated_by(database_url, created["id"]) == "ops:erin"


@pytest.mark.parametrize("command", ["suspend", "revoke"])
def test_status_change_without_by_exits_nonzero_and_changes_nothing(
    dragoman: Any, config: Path, database_url: str, command: str
) -> None:
    add(dragoman, config)
    result = dragoman("mappings", command, "-c", config, "acct-1001")
    assert result.returncode != 0
    assert "--by" in result.stderr
    assert stored(config)[0].status is MappingStatus.ACTIVE


@pytest.mark.parametrize("command", ["suspend", "revoke"])
def test_status_change_of_an_unknown_reference_exits_1(
    dragoman: Any, config: Path, command: str
) -> None:
    add(dragoman, config)
    result = dragoman("mappings", command, "-c", config, "acct-9999", "--by", "ops")
    assert result.returncode == 1
    assert "acct-9999" in result.stderr
    assert "Traceback" not in result.stderr


# -- a REF that is one mapping's id and another's cloud account --------------------------------


def id_and_account(dragoman: Any, config: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two mappings: the second's cloud account is the first's id."""
    first = add(dragoman, config)
    return first, add(dragoman, config, first["id"])


def statuses(config: Path) -> dict[str, MappingStatus]:
    return {mapping.id: mapping.status for mapping in stored(config)}


@pytest.mark.parametrize("command", ["suspend", "revoke"])
def test_a_status_change_of_a_ref_that_is_an_id_and_an_account_exits_2_and_changes_nothing(
    dragoman: Any, config: Path, command: str
) -> None:
    first, _ = id_and_account(dragoman, config)
    result = dragoman("mappings", command, "-c", config, first["id"], "--by", "ops")
    assert result.returncode == 2
    assert set(statuses(config).values()) == {MappingStatus.ACTIVE}
    assert "Traceback" not in result.stderr


def test_an_ambiguous_ref_is_refused_naming_both_mappings_and_how_to_choose(
    dragoman: Any, config: Path
) -> None:
    first, second = id_and_account(dragoman, config)
    result = dragoman("mappings", "show", "-c", config, first["id"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"{first['id']!r} is the id of mapping {first['id']} and the cloud account of mapping"
        f" {second['id']}; say which: --id {first['id']} or --account {first['id']}"
    )


def test_revoke_with_id_revokes_the_mapping_with_that_id(dragoman: Any, config: Path) -> None:
    first, second = id_and_account(dragoman, config)
    result = dragoman("mappings", "revoke", "-c", config, "--id", first["id"], "--by", "ops")
    assert result.returncode == 0, result.stderr
    assert statuses(config) == {
        first["id"]: MappingStatus.REVOKED,
        second["id"]: MappingStatus.ACTIVE,
    }


def test_revoke_with_account_revokes_the_mapping_of_that_account(
    dragoman: Any, config: Path
) -> None:
    first, second = id_and_account(dragoman, config)
    result = dragoman("mappings", "revoke", "-c", config, "--account", first["id"], "--by", "ops")
    assert result.returncode == 0, result.stderr
    assert statuses(config) == {
        first["id"]: MappingStatus.ACTIVE,
        second["id"]: MappingStatus.REVOKED,
    }


def test_show_with_account_does_not_take_an_id(dragoman: Any, config: Path) -> None:
    created = add(dragoman, config)
    result = dragoman("mappings", "show", "-c", config, "--account", created["id"])
    assert result.returncode == 1
    assert f"no mapping with cloud account {created['id']!r}" in result.stderr


def test_show_with_id_does_not_take_an_account(dragoman: Any, config: Path) -> None:
    add(dragoman, config)
    result = dragoman("mappings", "show", "-c", config, "--id", "acct-1001")
    assert result.returncode == 1
    assert "no mapping with id 'acct-1001'" in result.stderr


@pytest.mark.parametrize(
    "naming", [(), ("acct-1001", "--id", "x"), ("--id", "x", "--account", "acct-1001")]
)
def test_a_mapping_named_other_than_once_is_a_usage_error(
    dragoman: Any, config: Path, naming: tuple[str, ...]
) -> None:
    add(dragoman, config)
    result = dragoman("mappings", "revoke", "-c", config, *naming, "--by", "ops")
    assert result.returncode == 2
    assert "name the mapping once: REF, --id ID or --account ACCOUNT" in result.stderr
    assert stored(config)[0].status is MappingStatus.ACTIVE


# -- the store down ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("list",), ("show", "acct-1001"), ("suspend", "acct-1001", "--by", "ops")]
)
def test_mappings_command_on_an_unreachable_store_exits_3_with_a_message(
    dragoman: Any, write_settings: Any, unreachable_url: str, args: tuple[str, ...]
) -> None:
    result = dragoman("mappings", args[0], "-c", write_settings(unreachable_url), *args[1:])
    assert result.returncode == 3
    assert "the state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_add_on_an_unreachable_store_exits_3_with_a_message(
    dragoman: Any, write_settings: Any, unreachable_url: str
) -> None:
    result = dragoman(
        "mappings", "add", "-c", write_settings(unreachable_url),
        "--account", "acct-1001", "--customer", "cus_alice", "--by", "ops",
        "--grant", ADMIN_GRANT,
    )  # fmt: skip
    assert result.returncode == 3
    assert "the state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_revoked_mapping_cannot_be_suspended_or_reactivated(
    dragoman: Any, config: Path, database_url: str
) -> None:
    add(dragoman, config)
    dragoman("mappings", "revoke", "-c", config, "acct-1001", "--by", "ops:erin")
    result = dragoman("mappings", "suspend", "-c", config, "acct-1001", "--by", "ops:dave")
    assert result.returncode == 1
    assert "revoked" in result.stderr
    [mapping] = stored(config)
    assert (mapping.status, mapping.version) == (MappingStatus.REVOKED, 2)


def test_add_refuses_grants_that_name_nothing_in_the_catalog(
    dragoman: Any, config: Path, database_url: str
) -> None:
    result = dragoman(
        "mappings", "add", "-c", config, "--account", "acct-1001", "--customer", "cus_a",
        "--by", "ops", "--grant", "role:viewer=payment_method:list,payment_methods:*",
    )  # fmt: skip
    assert result.returncode == 2
    assert "payment_method:list" in result.stderr
    assert "payment_methods:*" not in result.stderr
    assert dragoman("mappings", "list", "-c", config).stdout == ""


def test_add_refuses_a_grant_to_a_role_the_policy_does_not_define(
    dragoman: Any, config: Path, database_url: str
) -> None:
    result = dragoman(
        "mappings", "add", "-c", config, "--account", "acct-1001", "--customer", "cus_a",
        "--by", "ops", "--grant", "role:auditor=*", "--grant", ADMIN_GRANT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "roles that policy.roles does not define: auditor" in result.stderr
    assert "billing_admin" not in result.stderr
    assert "Traceback" not in result.stderr
    assert dragoman("mappings", "list", "-c", config).stdout == ""
