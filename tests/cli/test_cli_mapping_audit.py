"""Every `dragoman mappings` read and write is in the audit trail (SEMANTICS §4): who, which
mapping, why, outcome; refusals included; no plaintext customer id or cloud account. The
real executable, on SQLite and PostgreSQL, writing to the configured audit file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dragoman.mapping.factory import open_mapping_cipher
from dragoman.settings import load_settings

ADMIN_GRANT = "role:billing_admin=*"


def audit_path(config: Path) -> Path:
    return load_settings(config).audit.path


def mapping_records(config: Path) -> list[dict[str, Any]]:
    path = audit_path(config)
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [r for r in found if r["event"] == "mapping"]


def customer_index(config: Path, customer: str) -> str:
    return open_mapping_cipher(load_settings(config)).index("payment_customer", customer)


def add(dragoman: Any, config: Path, account: str = "acct-1001") -> dict[str, Any]:
    result = dragoman(
        "mappings", "add", "-c", config,
        "--account", account, "--customer", f"cus_{account}", "--by", "ops:carol",
        "--grant", ADMIN_GRANT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def test_add_writes_a_create_record(dragoman: Any, config: Path) -> None:
    created = add(dragoman, config)
    started, record = mapping_records(config)
    assert (started["action"], started["outcome"], started["actor"]) == (
        "create",
        "started",
        "ops:carol",
    )
    assert (record["action"], record["outcome"], record["code"]) == ("create", "ok", None)
    assert (record["actor"], record["purpose"]) == ("ops:carol", "cli mappings add")
    assert (record["mapping_id"], record["mapping_status"], record["version"]) == (
        created["id"],
        "active",
        1,
    )
    assert record["customer"] == customer_index(config, "cus_acct-1001")


def test_a_refused_add_is_recorded(dragoman: Any, config: Path) -> None:
    add(dragoman, config)
    dragoman(
        "mappings", "add", "-c", config, "--account", "acct-1001", "--customer", "cus_x",
        "--by", "ops:mallory", "--grant", ADMIN_GRANT,
    )  # fmt: skip
    record = mapping_records(config)[-1]
    assert (record["actor"], record["outcome"], record["code"]) == (
        "ops:mallory",
        "refused",
        "mapping_exists",
    )
    assert record["customer"] == customer_index(config, "cus_x")


def test_show_writes_a_read_record_by_the_os_user_unless_told(dragoman: Any, config: Path) -> None:
    created = add(dragoman, config)
    dragoman("mappings", "show", "-c", config, "acct-1001")
    dragoman("mappings", "show", "-c", config, created["id"], "--by", "ops:dave")
    first, second = mapping_records(config)[-2:]
    assert (first["action"], first["mapping_id"], first["outcome"]) == (
        "read",
        created["id"],
        "ok",
    )
    assert first["actor"].startswith("os:")
    assert (second["actor"], second["purpose"]) == ("ops:dave", "cli mappings show")


def test_show_of_an_unknown_reference_is_recorded_refused(dragoman: Any, config: Path) -> None:
    add(dragoman, config)
    result = dragoman("mappings", "show", "-c", config, "acct-9999")
    assert result.returncode == 1
    record = mapping_records(config)[-1]
    assert (record["action"], record["outcome"], record["code"]) == (
        "read",
        "refused",
        "mapping_not_found",
    )
    assert record["mapping_id"] is None


def test_a_revoke_of_a_ref_that_is_an_id_and_an_account_is_recorded_refused(
    dragoman: Any, config: Path
) -> None:
    first = add(dragoman, config)
    add(dragoman, config, first["id"])
    result = dragoman("mappings", "revoke", "-c", config, first["id"], "--by", "ops:erin")
    assert result.returncode == 2
    record = mapping_records(config)[-1]
    assert (record["action"], record["outcome"], record["code"]) == (
        "revoke",
        "refused",
        "mapping_ambiguous",
    )
    assert record["mapping_id"] is None


def test_list_writes_a_list_record_and_a_read_record_per_mapping(
    dragoman: Any, config: Path
) -> None:
    first = add(dragoman, config, "acct-1001")
    second = add(dragoman, config, "acct-2002")
    dragoman("mappings", "list", "-c", config, "--by", "ops:erin")
    listed = mapping_records(config)[4:]  # after two adds: started and ok each
    assert [(r["action"], r["mapping_id"]) for r in listed] == [
        ("list", None),
        ("read", first["id"]),
        ("read", second["id"]),
    ]
    assert {r["actor"] for r in listed} == {"ops:erin"}


def test_an_empty_list_is_recorded_too(dragoman: Any, config: Path) -> None:
    dragoman("mappings", "list", "-c", config)
    [record] = mapping_records(config)
    assert (record["action"], record["outcome"]) == ("list", "ok")


@pytest.mark.parametrize(("command", "status"), [("suspend", "suspended"), ("revoke", "revoked")])
def test_a_status_change_is_recorded_with_the_new_status(
    dragoman: Any, config: Path, command: str, status: str
) -> None:
    created = add(dragoman, config)
    dragoman("mappings", command, "-c", config, "acct-1001", "--by", "ops:dave")
    record = mapping_records(config)[-1]
    assert (record["action"], record["actor"], record["outcome"]) == (command, "ops:dave", "ok")
    assert (record["mapping_id"], record["mapping_status"], record["version"]) == (
        created["id"],
        status,
        2,
    )


def test_suspending_a_revoked_mapping_is_recorded_refused(dragoman: Any, config: Path) -> None:
    created = add(dragoman, config)
    dragoman("mappings", "revoke", "-c", config, "acct-1001", "--by", "ops:erin")
    dragoman("mappings", "suspend", "-c", config, "acct-1001", "--by", "ops:dave")
    record = mapping_records(config)[-1]
    assert (record["action"], record["outcome"], record["code"]) == (
        "suspend",
        "refused",
        "revoked_is_final",
    )
    assert (record["mapping_id"], record["mapping_status"]) == (created["id"], "revoked")


def test_a_status_change_of_an_unknown_reference_is_recorded_refused(
    dragoman: Any, config: Path
) -> None:
    dragoman("mappings", "revoke", "-c", config, "acct-9999", "--by", "ops:erin")
    [record] = mapping_records(config)
    assert (record["action"], record["code"]) == ("revoke", "mapping_not_found")


def test_an_unreachable_store_is_recorded_failed(
    dragoman: Any, write_settings: Any, unreachable_url: str
) -> None:
    config = write_settings(unreachable_url)
    result = dragoman("mappings", "show", "-c", config, "acct-1001")
    assert result.returncode == 3
    [record] = mapping_records(config)
    assert (record["action"], record["outcome"], record["code"]) == (
        "read",
        "failed",
        "mapping_unavailable",
    )


def test_no_cli_record_holds_a_plaintext_customer_or_account(dragoman: Any, config: Path) -> None:
    add(dragoman, config, "acct-1001")
    dragoman("mappings", "list", "-c", config)
    dragoman("mappings", "show", "-c", config, "acct-1001")
    dragoman("mappings", "suspend", "-c", config, "acct-1001", "--by", "ops")
    dragoman("mappings", "show", "-c", config, "acct-4242")
    text = audit_path(config).read_text("utf-8")
    assert len(text.splitlines()) == 8  # add and suspend: started, then ok
    assert "cus_" not in text
    assert "acct-" not in text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_read_whose_record_cannot_be_written_prints_nothing_and_exits_3(
    dragoman: Any, write_settings: Any, database_url: str, config: Path
) -> None:
    add(dragoman, config)
    full = write_settings(
        database_url, edit=lambda data: data["audit"].update(path="/dev/full"), name="full.toml"
    )
    result = dragoman("mappings", "show", "-c", full, "acct-1001")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "the audit trail cannot be written" in result.stderr
    assert "Traceback" not in result.stderr
