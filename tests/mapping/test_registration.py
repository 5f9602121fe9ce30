"""Registration over real HTTP (issue 4, item 4): POST /_dragoman/registration links the
caller's own cloud account to a payment customer once the payment platform's record says so;
DELETE unlinks it. SQLite and PostgreSQL (the ``stack`` of this folder runs on both).

The stack's platform holds cus_alice (acct-1001) and cus_bob (acct-2002), both already
linked by the demo (as an operator would: self-service may not unlink them); carol of
acct-3003 is the fresh caller, with customers added to the platform."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from registration_helpers import (
    PM,
    call,
    caller,
    linked,
    live_store,
    mapping_of,
    mappings,
    records,
    register,
    self_link,
    unlink,
)

from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import Grant, MappingStatus
from failing_sink import FailingEvent

MakeStack = Callable[..., Awaitable[DemoStack]]
EVIDENCE = re.compile(
    r"platform:customers\.get:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00:[A-Za-z0-9_-]{16}"
)


def alice(stack: DemoStack) -> dict[str, str]:
    return caller(stack, "alice", "acct-1001", ["billing_admin"])


async def revoke(stack: DemoStack, account: str) -> None:
    """Revoke ``account``'s live link as an operator does (``mappings revoke``)."""
    mapping = await linked(stack, account)
    await live_store(stack).update(
        mapping.id, expected_version=mapping.version, actor="ops", status="revoked"
    )


# -- a verified link -----------------------------------------------------------------------


async def test_registration_links_the_callers_account_and_answers_201(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    status, body = await register(http, stack, caller(stack), "cus_carol")
    assert status == 201
    assert body["status"] == "active"
    assert (body["cloud_account"], body["customer"]) == ("acct-3003", "cus_carol")
    assert body["verification_method"] == "platform-metadata"
    assert body["id"] == (await linked(stack, "acct-3003")).id


async def test_the_new_link_is_stored_active_with_its_evidence_and_creator(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await mapping_of(stack, "acct-3003")
    assert mapping is not None
    assert (mapping.payment_customer, mapping.status) == ("cus_carol", MappingStatus.ACTIVE)
    assert (mapping.created_by, mapping.version) == ("registration:carol", 1)
    assert mapping.verification_method == "platform-metadata"
    assert EVIDENCE.fullmatch(mapping.verification_evidence or ""), mapping.verification_evidence


async def test_by_default_the_new_link_grants_the_configured_roles_only(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await mapping_of(stack, "acct-3003")
    assert mapping is not None
    assert mapping.grants == (
        Grant(role="owner", operations=("*",)),
        Grant(role="billing_admin", operations=("*",)),
    )


# billing_admin reads only here, so what the role may never do is easy to ask for.
READING_BILLING_ADMIN = {
    "policy": {"roles": {"viewer": ["tier:read"], "billing_admin": ["tier:read"], "owner": ["*"]}},
}


async def registrant_stack(make_stack: MakeStack, database_url: str) -> DemoStack:
    registration = {"registrant_operations": ["*"]}
    return await make_stack(
        {
            "store": {"database_url": database_url},
            "mapping": {"registration": registration},
            **READING_BILLING_ADMIN,
        }
    )


async def test_the_registrants_own_grant_names_only_what_its_roles_may_ever_ask_for(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = await registrant_stack(make_stack, database_url)
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack, roles=["billing_admin"]), "cus_carol")
    mapping = await linked(stack, "acct-3003")
    [own] = [g for g in mapping.grants if g.principal == "carol"]
    assert stack.proxy is not None
    reads = tuple(op.id for op in stack.proxy.catalog if op.tier == "read")
    assert own.operations == reads


async def test_a_billing_admin_gains_no_operation_its_role_never_allowed_by_registering(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    # With registrant_operations = ["*"] the registrant got "*" by name, which no role caps:
    # unlinking and linking again turned a reading billing_admin into one who writes.
    stack = await registrant_stack(make_stack, database_url)
    stack.platform.add_customer("cus_carol", "acct-3003")
    carol = caller(stack, roles=["billing_admin"])
    assert (await register(http, stack, carol, "cus_carol"))[0] == 201
    url = stack.urls["proxy"] + PM.format(customer="cus_carol")
    async with http.post(url, headers=carol, json={"card_number": "4242424242424242"}) as answer:
        assert answer.status == 403, await answer.text()
        assert (await answer.json(content_type=None))["code"] == "scope_denied"


async def test_a_registrant_whose_roles_allow_nothing_named_gets_no_grant_of_its_own(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    registration = {"registrant_operations": ["payment_methods:create"]}
    stack = await make_stack(
        {
            "store": {"database_url": database_url},
            "mapping": {"registration": registration},
            **READING_BILLING_ADMIN,
        }
    )
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack, roles=["billing_admin"]), "cus_carol")
    mapping = await linked(stack, "acct-3003")
    assert all(g.principal is None for g in mapping.grants)


async def test_the_grants_of_a_new_link_come_from_settings(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    registration = {
        "default_grants": [{"role": "viewer", "operations": ["payment_methods:list"]}],
        "registrant_operations": [],
    }
    stack = await make_stack(
        {"store": {"database_url": database_url}, "mapping": {"registration": registration}}
    )
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    mapping = await mapping_of(stack, "acct-3003")
    assert mapping is not None
    assert mapping.grants == (Grant(role="viewer", operations=("payment_methods:list",)),)


async def test_the_new_link_serves_the_callers_requests_at_once(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    url = stack.urls["proxy"] + PM.format(customer="cus_carol")
    async with http.get(url, headers=caller(stack)) as response:
        assert response.status == 200, await response.text()


async def test_the_platform_is_asked_with_a_token_for_that_customer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    await register(http, stack, caller(stack), "cus_carol")
    [seen] = stack.platform.seen
    assert (seen.method, seen.path, seen.accepted) == ("GET", "/v1/customers/cus_carol", True)


# -- refused links leave no mapping ------------------------------------------------------------


def _missing(stack: DemoStack) -> str:
    return "cus_nobody"


def _deleted(stack: DemoStack) -> str:
    stack.platform.add_customer("cus_carol", "acct-3003").deleted = True
    return "cus_carol"


def _merged(stack: DemoStack) -> str:
    stack.platform.add_customer("cus_carol", "acct-3003").merged_into = "cus_carol_2"
    return "cus_carol"


def _another_account(stack: DemoStack) -> str:
    return "cus_bob"  # acct-2002's


def _no_account_in_metadata(stack: DemoStack) -> str:
    stack.platform.add_customer("cus_carol", "")
    return "cus_carol"


def _another_accounts_deleted(stack: DemoStack) -> str:
    # Ownership is checked first: the state of somebody else's customer is not told.
    stack.platform.add_customer("cus_dave", "acct-4004").deleted = True
    return "cus_dave"


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (_missing, "account_mismatch"),  # not there or not yours: one answer
        (_deleted, "customer_deleted"),
        (_merged, "customer_merged"),
        (_another_account, "account_mismatch"),
        (_no_account_in_metadata, "account_mismatch"),
        (_another_accounts_deleted, "account_mismatch"),
    ],
)
async def test_a_link_the_platform_does_not_support_is_refused_422_with_its_reason(
    stack: DemoStack,
    http: aiohttp.ClientSession,
    plant: Callable[[DemoStack], str],
    reason: str,
) -> None:
    customer = plant(stack)
    status, problem = await register(http, stack, caller(stack), customer)
    assert (status, problem["code"], problem["reason"]) == (422, "link_refused", reason)


@pytest.mark.parametrize("plant", [_missing, _deleted, _merged, _another_account])
async def test_a_refused_link_writes_no_mapping_at_all(
    stack: DemoStack, http: aiohttp.ClientSession, plant: Callable[[DemoStack], str]
) -> None:
    before = await mappings(stack)
    await register(http, stack, caller(stack), plant(stack))
    assert await mappings(stack) == before
    assert await mapping_of(stack, "acct-3003") is None


async def test_with_the_platform_down_registration_is_refused_503_and_writes_nothing(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(
        {"store": {"database_url": database_url}, "upstream": {"url": "http://127.0.0.1:1"}}
    )
    stack.platform.add_customer("cus_carol", "acct-3003")
    before = await mappings(stack)
    status, problem = await register(http, stack, caller(stack), "cus_carol")
    assert (status, problem["code"]) == (503, "platform_unavailable")
    assert await mappings(stack) == before


async def test_with_the_platform_answering_errors_registration_is_refused_503(
    make_stack: MakeStack,
    database_url: str,
    http: aiohttp.ClientSession,
    serve: Callable[[web.Application], Any],
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    platform = web.Application()
    platform.router.add_route("*", "/{tail:.*}", broken)
    async with serve(platform) as url:
        stack = await make_stack(
            {"store": {"database_url": database_url}, "upstream": {"url": url}}
        )
        status, problem = await register(http, stack, caller(stack), "cus_carol")
    assert (status, problem["code"]) == (503, "platform_unavailable")
    assert await mapping_of(stack, "acct-3003") is None


# -- who may register --------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [[], ["viewer"], ["Owner"]])
async def test_a_principal_without_a_registration_role_is_refused_403(
    stack: DemoStack, http: aiohttp.ClientSession, roles: list[str]
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    status, problem = await register(http, stack, caller(stack, roles=roles), "cus_carol")
    assert (status, problem["code"]) == (403, "registration_forbidden")
    assert await mapping_of(stack, "acct-3003") is None
    assert stack.platform.seen == []  # refused before the platform was asked


async def test_the_registration_roles_come_from_settings(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(
        {
            "store": {"database_url": database_url},
            "mapping": {"registration": {"roles": ["account_admin"]}},
        }
    )
    stack.platform.add_customer("cus_carol", "acct-3003")
    refused, _ = await register(http, stack, caller(stack, roles=["owner"]), "cus_carol")
    allowed, _ = await register(http, stack, caller(stack, roles=["account_admin"]), "cus_carol")
    assert (refused, allowed) == (403, 201)


async def test_a_credential_without_a_cloud_account_cannot_register(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    status, problem = await register(http, stack, caller(stack, account=None), "cus_alice")
    assert (status, problem["code"]) == (401, "unauthenticated")


async def test_registration_without_credentials_is_refused_401(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    status, problem = await register(http, stack, {}, "cus_alice")
    assert (status, problem["code"]) == (401, "unauthenticated")


async def test_the_body_cannot_choose_the_account(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # mallory (acct-3003) names acct-2002 in the body; the account is the credential's.
    await revoke(stack, "acct-2002")  # cus_bob is free to link
    body = {"customer": "cus_bob", "cloud_account": "acct-2002"}
    status, problem, _ = await call(http, stack, caller(stack, "mallory"), body=body)
    assert (status, problem["code"]) == (400, "bad_request")
    live = [m for m in await mappings(stack) if m.status is not MappingStatus.REVOKED]
    assert {m.cloud_account for m in live} == {"acct-1001"}
    assert stack.platform.seen == []


async def test_linking_another_accounts_customer_is_refused_whoever_asks(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await revoke(stack, "acct-2002")  # cus_bob is free to link
    status, problem = await register(http, stack, caller(stack, "mallory"), "cus_bob")
    assert (status, problem["reason"]) == (422, "account_mismatch")
    assert await mapping_of(stack, "acct-3003") is None


# -- one live link per account ---------------------------------------------------------------


async def test_a_second_live_link_for_an_account_is_refused_409(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = await mapping_of(stack, "acct-1001")
    status, problem = await register(http, stack, alice(stack), "cus_alice")
    assert (status, problem["code"]) == (409, "mapping_exists")
    assert await mapping_of(stack, "acct-1001") == before


async def test_two_concurrent_registrations_of_one_account_make_one_link(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    stack.platform.add_customer("cus_carol_2", "acct-3003")
    answers = await asyncio.gather(
        register(http, stack, caller(stack, "carol"), "cus_carol"),
        register(http, stack, caller(stack, "carlos"), "cus_carol_2"),
    )
    assert sorted(status for status, _ in answers) == [201, 409]
    [created] = [body for status, body in answers if status == 201]
    live = [m for m in await mappings(stack) if m.cloud_account == "acct-3003"]
    assert [(m.id, m.payment_customer) for m in live] == [(created["id"], created["customer"])]


async def test_after_unlinking_the_account_links_anew_and_the_old_link_stays_revoked(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    old = await self_link(http, stack, caller(stack))
    await unlink(http, stack, caller(stack))
    status, body = await register(http, stack, caller(stack), "cus_carol")
    assert status == 201
    assert body["id"] != old["id"]
    assert (await live_store(stack).get(old["id"])).status is MappingStatus.REVOKED
    assert (await linked(stack, "acct-3003")).id == body["id"]


# -- unlinking -------------------------------------------------------------------------------------


async def test_unlinking_revokes_the_callers_link_and_answers_200(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    before = await linked(stack, "acct-3003")
    status, body = await unlink(http, stack, caller(stack))
    assert (status, body["id"], body["status"]) == (200, before.id, "revoked")
    after = await live_store(stack).get(before.id)
    assert (after.status, after.version, after.updated_by) == (
        MappingStatus.REVOKED,
        before.version + 1,
        "registration:carol",
    )


async def test_a_registration_whose_record_cannot_be_written_is_answered_503_unnamed(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    stack.platform.add_customer("cus_carol", "acct-3003")
    stack.proxy.audit._sink = FailingEvent(stack.proxy.audit._sink, "registration")
    status, problem = await register(http, stack, caller(stack), "cus_carol")
    assert (status, problem["code"]) == (503, "audit_unavailable")
    assert "cus_carol" not in json.dumps(problem)
    # The link was made, and its own mapping records (one before its commit) say so.
    mapping = await linked(stack, "acct-3003")
    link = [r for r in records(stack, "mapping") if r["action"] == "link_attempt"]
    assert [r["outcome"] for r in link] == ["started", "ok"]
    assert link[-1]["mapping_id"] == mapping.id


async def test_an_unlink_whose_record_cannot_be_written_is_answered_503(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    await self_link(http, stack, caller(stack))
    stack.proxy.audit._sink = FailingEvent(stack.proxy.audit._sink, "registration")
    status, problem = await unlink(http, stack, caller(stack))
    assert (status, problem["code"]) == (503, "audit_unavailable")


async def test_an_unlinked_account_is_refused_by_the_pipeline(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    await unlink(http, stack, caller(stack))
    url = stack.urls["proxy"] + PM.format(customer="cus_carol")
    async with http.get(url, headers=caller(stack)) as response:
        assert (response.status, (await response.json())["code"]) == (403, "mapping_inactive")


async def test_unlinking_an_account_without_a_live_link_is_refused_403(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    status, problem = await unlink(http, stack, caller(stack))
    assert (status, problem["code"]) == (403, "mapping_missing")


async def test_unlinking_a_suspended_link_is_refused_and_it_stays_suspended(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    mapping = await linked(stack, "acct-3003")
    await live_store(stack).update(
        mapping.id, expected_version=mapping.version, actor="ops", status="suspended"
    )
    status, problem = await unlink(http, stack, caller(stack))
    assert (status, problem["code"]) == (403, "mapping_inactive")
    assert (await live_store(stack).get(mapping.id)).status is MappingStatus.SUSPENDED


async def test_unlinking_needs_a_registration_role(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    viewer = caller(stack, "vic", "acct-1001", ["viewer"])
    status, problem = await unlink(http, stack, viewer)
    assert (status, problem["code"]) == (403, "registration_forbidden")
    assert (await linked(stack, "acct-1001")).status is MappingStatus.ACTIVE


async def test_unlinking_a_link_revoked_meanwhile_by_another_writer_finds_no_live_link(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    store = live_store(stack)
    mapping = await store.find_by_account("acct-3003")  # cached by the proxy's store
    assert mapping is not None
    # Another writer (another instance, the CLI) revokes it behind the proxy's cache.
    other = type(store)(store.engine, cipher=store.codec.cipher)
    await other.update(mapping.id, expected_version=mapping.version, actor="ops", status="revoked")
    status, problem = await unlink(http, stack, caller(stack))
    assert (status, problem["code"]) == (403, "mapping_missing")


# -- browser protections and the body -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["foreign-origin", "cross-site"],
)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_a_cross_origin_registration_is_refused_403(
    stack: DemoStack, http: aiohttp.ClientSession, headers: dict[str, str], method: str
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    body = {"customer": "cus_carol"} if method == "POST" else None
    status, problem, response = await call(
        http, stack, caller(stack, **headers), method=method, body=body
    )
    assert (status, problem["code"]) == (403, "origin_denied")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert await mapping_of(stack, "acct-3003") is None
    assert stack.platform.seen == []


async def test_a_registration_from_an_allowed_origin_gets_cors_headers(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    console = stack.urls["console"]
    headers = caller(stack, Origin=console, **{"Sec-Fetch-Site": "same-site"})
    async with http.post(stack.urls["proxy"] + "/_dragoman/session", headers=headers) as r:
        token = (await r.json())["csrf_token"]
    headers |= {"Cookie": f"__Host-dragoman-csrf={token}", "X-CSRF-Token": token}
    status, _, response = await call(http, stack, headers, body={"customer": "cus_carol"})
    assert status == 201
    assert response.headers["Access-Control-Allow-Origin"] == console
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


async def test_a_preflight_for_registration_from_an_allowed_origin_is_approved(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    preflight = {
        "Origin": stack.urls["console"],
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    url = stack.urls["proxy"] + "/_dragoman/registration"
    async with http.options(url, headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == stack.urls["console"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_that_is_not_json_is_refused_415(
    stack: DemoStack, http: aiohttp.ClientSession, content_type: str
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    headers = {**caller(stack), "Content-Type": content_type}
    status, problem, _ = await call(http, stack, headers, data=b'{"customer": "cus_carol"}')
    assert (status, problem["code"]) == (415, "media_type_unsupported")
    assert await mapping_of(stack, "acct-3003") is None
    assert stack.platform.seen == []


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'"cus_carol"', b"{}", b'{"customer": 7}', b'{"customer": ""}',
     b'{"customer": "cus carol"}', b'{"customer": ".."}',
     b'{"customer": "cus_carol", "grants": ["*"]}'],
)  # fmt: skip
async def test_a_malformed_body_is_refused_400(
    stack: DemoStack, http: aiohttp.ClientSession, body: bytes
) -> None:
    headers = {**caller(stack), "Content-Type": "application/json"}
    status, problem, _ = await call(http, stack, headers, data=body)
    assert (status, problem["code"]) == (400, "bad_request")
    assert stack.platform.seen == []


async def test_a_body_over_4_kib_is_refused_413(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    status, problem = await register(http, stack, caller(stack), "c" * 5000)
    assert (status, problem["code"]) == (413, "body_too_large")


@pytest.mark.parametrize("outcome", ["created", "refused"])
async def test_registration_answers_carry_the_security_headers(
    stack: DemoStack, http: aiohttp.ClientSession, outcome: str
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    customer = "cus_carol" if outcome == "created" else "cus_nobody"
    _, _, response = await call(
        http, stack, caller(stack, **{"X-Request-Id": "req-12345678"}), body={"customer": customer}
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-Id"] == "req-12345678"


async def test_registration_can_be_switched_off(
    make_stack: MakeStack, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(
        {"store": {"database_url": database_url}, "mapping": {"registration": {"enabled": False}}}
    )
    stack.platform.add_customer("cus_carol", "acct-3003")
    status, problem = await register(http, stack, caller(stack), "cus_carol")
    assert (status, problem["code"]) == (404, "operation_unknown")
    assert await mapping_of(stack, "acct-3003") is None


# -- Expect: 100-continue --------------------------------------------------------------------


async def _post_expecting_100(stack: DemoStack, headers: dict[str, str], body: bytes) -> bytes:
    """A registration POST that waits for 100 before writing its body, as curl does; what
    dragoman sends, up to the end of its final answer. A caller refused without a 100
    never writes its body."""
    host, port = stack.urls["proxy"].removeprefix("http://").rsplit(":", 1)
    lines = [f"{name}: {value}" for name, value in headers.items()]
    head = "\r\n".join(
        [
            "POST /_dragoman/registration HTTP/1.1",
            "Host: dragoman",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Expect: 100-continue",
            *lines,
        ]
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + b"\r\n\r\n")
        async with asyncio.timeout(10):
            received = await reader.readuntil(b"\r\n\r\n")
            if received.startswith(b"HTTP/1.1 100 "):
                writer.write(body)
                received += await reader.readuntil(b"\r\n\r\n")
            size = re.search(rb"\r\nContent-Length: (\d+)\r\n", received, re.IGNORECASE)
            assert size is not None
            return received + await reader.readexactly(int(size.group(1)))
    finally:
        writer.close()


async def test_registration_invites_the_body_of_an_authenticated_caller_only(
    stack: DemoStack,
) -> None:
    stack.platform.add_customer("cus_carol", "acct-3003")
    body = b'{"customer": "cus_carol"}'
    refused = await _post_expecting_100(stack, {}, body)
    assert refused.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nConnection: close\r\n" in refused
    linked_now = await _post_expecting_100(stack, caller(stack), body)
    assert linked_now.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 ")
