"""The mapping's audit trail (SEMANTICS §4, §8) over real HTTP: every registration writes one
request record (event "registration") and one mapping record per access of the mapping
(event "mapping": who, which mapping, why, outcome), refusals included; reads by the request
pipeline are recorded by the request's own record. No record holds a plaintext customer id,
and mapping records hold no plaintext cloud account either. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from registration_helpers import (
    PM,
    audit_text,
    caller,
    linked,
    live_store,
    records,
    register,
    unlink,
)

from dragoman.demo.runner import DemoStack
from failing_sink import FailingEvent

MakeStack = Callable[..., Awaitable[DemoStack]]


def alice(stack: DemoStack, roles: list[str] | None = None) -> dict[str, str]:
    return caller(stack, "alice", "acct-1001", ["billing_admin"] if roles is None else roles)


def index_of_customer(stack: DemoStack, customer: str) -> str:
    return live_store(stack).codec.customer_index(customer)


def index_of_account(stack: DemoStack, account: str) -> str:
    return live_store(stack).codec.account_index(account)


# -- registration: the request record ----------------------------------------------------------


async def test_a_registration_writes_one_request_record_naming_the_new_mapping(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await linked(stack, "acct-3003")
    [record] = records(stack, "registration")
    assert (record["decision"], record["status"], record["code"]) == ("allow", 201, None)
    assert (record["method"], record["path"]) == ("POST", "/_dragoman/registration")
    assert record["principal"] == "carol"
    assert (record["mapping_id"], record["customer"]) == (mapping.id, mapping.customer_index)
    assert record["jti"] is None  # nothing was forwarded for the caller


async def test_a_refused_registration_is_recorded_with_its_code_and_the_asked_customer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003").deleted = True
    await register(http, stack, caller(stack), "cus_carol")
    [record] = records(stack, "registration")
    assert (record["decision"], record["status"]) == ("deny", 422)
    assert (record["code"], record["reason"]) == ("link_refused", "customer_deleted")
    assert record["mapping_id"] is None
    assert record["customer"] == index_of_customer(stack, "cus_carol")


async def test_an_unlink_writes_one_request_record_naming_the_revoked_mapping(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # Self-service unlinks only what self-service linked (the demo's links are the operator's).
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await linked(stack, "acct-3003")
    await unlink(http, stack, caller(stack))
    _, record = records(stack, "registration")
    assert (record["method"], record["decision"], record["status"]) == ("DELETE", "allow", 200)
    assert (record["mapping_id"], record["customer"]) == (mapping.id, mapping.customer_index)


async def test_a_registration_refused_before_the_registrar_is_recorded_too(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = caller(stack, Origin="https://evil.example")
    await register(http, stack, headers, "cus_carol")
    [record] = records(stack, "registration")
    assert (record["decision"], record["code"], record["origin"]) == (
        "deny",
        "origin_denied",
        "https://evil.example",
    )
    assert records(stack, "mapping") == []  # the mapping was not touched


# -- registration: the mapping records -------------------------------------------------------


async def test_a_registration_writes_a_link_attempt_record_joined_to_its_request(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await linked(stack, "acct-3003")
    [request] = records(stack, "registration")
    started, record = records(stack, "mapping")
    assert (started["action"], started["outcome"]) == ("link_attempt", "started")
    assert (started["request"], started["customer"]) == (request["audit_id"], record["customer"])
    assert started["account_index"] == record["account_index"]
    assert (record["action"], record["outcome"], record["code"]) == ("link_attempt", "ok", None)
    assert (record["actor"], record["purpose"]) == ("carol", "registration")
    assert record["request"] == request["audit_id"]
    assert (record["mapping_id"], record["version"]) == (mapping.id, 1)
    assert record["mapping_status"] == "active"
    assert record["customer"] == mapping.customer_index
    assert record["account_index"] == index_of_account(stack, "acct-3003")
    assert record["evidence"] == mapping.verification_evidence
    assert record["audit_id"] != request["audit_id"]
    assert datetime.fromisoformat(record["time"]).tzinfo is not None


@pytest.mark.parametrize(
    ("customer", "code", "reason"),
    [
        ("cus_nobody", "link_refused", "customer_missing"),
        ("cus_bob", "link_refused", "account_mismatch"),
    ],
)
async def test_a_refused_link_attempt_is_recorded_with_its_code_and_reason(
    stack: DemoStack, http: aiohttp.ClientSession, customer: str, code: str, reason: str
) -> None:
    await register(http, stack, caller(stack), customer)
    [record] = records(stack, "mapping")
    assert (record["action"], record["outcome"]) == ("link_attempt", "refused")
    assert (record["code"], record["reason"]) == (code, reason)
    assert record["mapping_id"] is None
    assert record["customer"] == index_of_customer(stack, customer)
    assert record["account_index"] == index_of_account(stack, "acct-3003")


async def test_a_second_link_is_recorded_naming_the_mapping_in_the_way(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    existing = await linked(stack, "acct-1001")
    await register(http, stack, alice(stack), "cus_alice")
    started, record = records(stack, "mapping")
    assert started["outcome"] == "started"
    assert (record["outcome"], record["code"]) == ("refused", "mapping_exists")
    assert record["mapping_id"] == existing.id


async def test_a_link_attempt_without_a_registration_role_is_recorded_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await register(http, stack, caller(stack, "vic", roles=["viewer"]), "cus_carol")
    [record] = records(stack, "mapping")
    assert (record["actor"], record["action"]) == ("vic", "link_attempt")
    assert (record["outcome"], record["code"], record["reason"]) == (
        "refused",
        "registration_forbidden",
        "role_missing",
    )
    assert record["customer"] == index_of_customer(stack, "cus_carol")


async def test_a_link_attempt_with_the_platform_down_is_recorded_failed(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(
        {"store": {"database_url": database_url}, "upstream": {"url": "http://127.0.0.1:1"}}
    )
    await register(http, stack, caller(stack), "cus_carol")
    [record] = records(stack, "mapping")
    assert (record["outcome"], record["code"]) == ("failed", "platform_unavailable")


async def test_an_unlink_writes_a_revoke_record(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # Self-service unlinks only what self-service linked (the demo's links are the operator's).
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await linked(stack, "acct-3003")
    await unlink(http, stack, caller(stack))
    started, record = records(stack, "mapping")[-2:]
    assert (started["action"], started["outcome"]) == ("revoke", "started")
    assert (record["action"], record["outcome"], record["actor"]) == ("revoke", "ok", "carol")
    assert (record["mapping_id"], record["mapping_status"], record["version"]) == (
        mapping.id,
        "revoked",
        mapping.version + 1,
    )


async def test_a_refused_unlink_is_recorded(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    await unlink(http, stack, caller(stack))  # acct-3003 has no link
    _, record = records(stack, "mapping")
    assert (record["action"], record["outcome"], record["code"]) == (
        "revoke",
        "refused",
        "mapping_missing",
    )


async def test_no_audit_record_holds_a_plaintext_customer_or_account(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    stack.platform.add_customer("cus_gone", "acct-3003").deleted = True
    await register(http, stack, caller(stack), "cus_gone")  # refused
    await register(http, stack, caller(stack), "cus_carol")  # linked
    await register(http, stack, caller(stack), "cus_carol")  # mapping_exists
    await register(http, stack, caller(stack, roles=["viewer"]), "cus_bob")  # forbidden
    await unlink(http, stack, caller(stack))  # revoked
    assert len(records(stack, "mapping")) == 8  # with the 3 started before a change
    assert "cus_" not in audit_text(stack)
    mapping_records = json.dumps(records(stack, "mapping"))
    assert "acct-" not in mapping_records


# -- reads by the request pipeline: the request record is the record of the read ------------


async def _set(stack: DemoStack, **changes: Any) -> None:
    mapping = await linked(stack, "acct-1001")
    await live_store(stack).update(
        mapping.id, expected_version=mapping.version, actor="test", **changes
    )


async def _allowed(stack: DemoStack) -> tuple[str, dict[str, str]]:
    return "GET", alice(stack)


async def _scope_denied(stack: DemoStack) -> tuple[str, dict[str, str]]:
    return "POST", alice(stack, roles=["viewer"])


async def _suspended(stack: DemoStack) -> tuple[str, dict[str, str]]:
    await _set(stack, status="suspended")
    return "GET", alice(stack)


async def _stale(stack: DemoStack) -> tuple[str, dict[str, str]]:
    await _set(stack, last_validated_at=datetime.now(UTC) - timedelta(days=3))
    return "GET", alice(stack)


@pytest.mark.parametrize(
    ("make", "decision", "code"),
    [
        (_allowed, "allow", None),
        (_scope_denied, "deny", "scope_denied"),
        (_suspended, "deny", "mapping_inactive"),
        (_stale, "deny", "mapping_stale"),
    ],
    ids=["allowed", "scope_denied", "suspended", "stale"],
)
async def test_a_pipeline_request_record_names_the_mapping_it_read(
    stack: DemoStack,
    http: aiohttp.ClientSession,
    make: Callable[[DemoStack], Awaitable[tuple[str, dict[str, str]]]],
    decision: str,
    code: str | None,
) -> None:
    method, headers = await make(stack)
    mapping = await linked(stack, "acct-1001")
    url = stack.urls["proxy"] + PM.format(customer="cus_alice")
    async with http.request(method, url, headers=headers):
        pass
    [record] = records(stack, "request")
    assert (record["decision"], record["code"]) == (decision, code)
    assert (record["mapping_id"], record["customer"]) == (mapping.id, mapping.customer_index)
    assert (record["principal"], record["cloud_account"]) == ("alice", "acct-1001")
    assert records(stack, "mapping") == []  # no second record per read on the hot path


async def test_a_whoami_record_names_the_mapping_it_read(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await _set(stack, status="suspended")
    mapping = await linked(stack, "acct-1001")
    async with http.get(stack.urls["proxy"] + "/_dragoman/whoami", headers=alice(stack)) as r:
        assert r.status == 403
    [record] = records(stack, "whoami")
    assert (record["code"], record["mapping_id"], record["customer"]) == (
        "mapping_inactive",
        mapping.id,
        mapping.customer_index,
    )


async def test_a_whoami_that_fails_unexpectedly_is_500_internal_error_and_recorded_as_such(
    stack: DemoStack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    assert stack.proxy is not None

    async def broken_lookup(*args: object) -> None:
        raise RuntimeError("a bug")

    stack.proxy.gate.find = broken_lookup  # type: ignore[method-assign]
    async with http.get(stack.urls["proxy"] + "/_dragoman/whoami", headers=alice(stack)) as r:
        assert r.status == 500
        assert r.content_type == "application/problem+json"
        assert (await r.json())["code"] == "internal_error"
    [record] = records(stack, "whoami")
    assert (record["decision"], record["code"]) == ("deny", "internal_error")
    assert "unexpected error in whoami" in caplog.text


async def test_a_whoami_whose_record_cannot_be_written_is_refused_without_the_customer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    stack.proxy.audit._sink = FailingEvent(stack.proxy.audit._sink, "whoami")
    async with http.get(stack.urls["proxy"] + "/_dragoman/whoami", headers=alice(stack)) as r:
        assert (r.status, (await r.json())["code"]) == (503, "audit_unavailable")
        assert "cus_alice" not in await r.text()


async def test_a_whoami_while_the_audit_trail_is_broken_is_refused_before_any_lookup(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    stack.proxy.audit.broken = True

    async def no_lookup(*args: object) -> None:
        raise AssertionError("the mapping was read")

    stack.proxy.gate.find = no_lookup  # type: ignore[method-assign]
    async with http.get(stack.urls["proxy"] + "/_dragoman/whoami", headers=alice(stack)) as r:
        assert (r.status, (await r.json())["code"]) == (503, "audit_unavailable")


async def test_a_link_whose_started_record_cannot_be_written_is_not_made(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    stack.platform.add_customer("cus_carol", "acct-3003")
    stack.proxy.audit._sink = FailingEvent(stack.proxy.audit._sink, "mapping")
    status, body = await register(http, stack, caller(stack), "cus_carol")
    assert (status, body["code"]) == (503, "audit_unavailable")
    assert await live_store(stack).find_by_account("acct-3003") is None


async def test_a_link_read_back_failing_after_its_insert_leaves_no_link(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    store = live_store(stack)
    stack.platform.add_customer("cus_carol", "acct-3003")
    codec_entity = store.codec.entity

    def failing_entity(row: Any) -> Any:
        raise OSError("connection lost")  # the read back inside the insert's transaction

    store.codec.entity = failing_entity  # type: ignore[method-assign]
    try:
        status, _ = await register(http, stack, caller(stack), "cus_carol")
    finally:
        store.codec.entity = codec_entity  # type: ignore[method-assign]
    assert status >= 500
    assert await store.find_by_account("acct-3003") is None
