"""Step 4 over real HTTP: the caller's account must map to an active, fresh link that grants
the operation, and a customer named in the path must be the linked one. Every refusal is a
problem+json answer and nothing reaches the payment platform."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from yarl import URL

from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus
from dragoman.mapping.store import MappingStore

PM = "/v1/customers/cus_alice/payment-methods"
ADDRESS = "/v1/customers/cus_alice/billing-address"
CARD = {"card_number": "4111111111111111", "exp_month": 1, "exp_year": 2031}
STALE_AFTER = timedelta(hours=36)  # the default of mapping.stale_after


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def alice(stack: DemoStack, roles: list[str] | None = None) -> dict[str, str]:
    roles = ["billing_admin"] if roles is None else roles
    return bearer(stack.issuer.token("alice", "acct-1001", roles=roles))


def live_store(stack: DemoStack) -> MappingStore:
    assert stack.proxy is not None
    return stack.proxy.store


async def change_alice_mapping(stack: DemoStack, **changes: Any) -> AccountMapping:
    store = live_store(stack)
    mapping = await store.find_by_account("acct-1001")
    assert mapping is not None
    return await store.update(mapping.id, expected_version=mapping.version, actor="test", **changes)


async def call(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    headers: dict[str, str],
    method: str = "GET",
    path: str = PM,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    # encoded=True: the path goes out exactly as written, percent-escapes included.
    url = URL(stack.urls["proxy"] + path, encoded=True)
    async with http.request(method, url, headers=headers, json=body) as response:
        if response.status >= 400:
            assert response.content_type == "application/problem+json"
        return response.status, await response.json()


async def assert_refused(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    headers: dict[str, str],
    status: int,
    code: str,
    method: str = "GET",
    path: str = PM,
    body: dict[str, Any] | None = None,
) -> None:
    got, problem = await call(http, stack, headers, method, path, body)
    assert (got, problem["code"]) == (status, code)
    assert stack.platform.seen == []


async def assert_allowed(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    headers: dict[str, str],
    method: str = "GET",
    path: str = PM,
    body: dict[str, Any] | None = None,
) -> None:
    got, answer = await call(http, stack, headers, method, path, body)
    assert got in (200, 201), answer
    assert stack.platform.seen[-1].accepted


# -- status and freshness ----------------------------------------------------------------------


async def test_active_fresh_mapping_is_allowed(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await assert_allowed(http, stack, alice(stack))


@pytest.mark.parametrize("status", [MappingStatus.SUSPENDED, MappingStatus.REVOKED])
async def test_inactive_mapping_is_403_mapping_inactive(
    stack: DemoStack, http: aiohttp.ClientSession, status: MappingStatus
) -> None:
    await change_alice_mapping(stack, status=status)
    await assert_refused(http, stack, alice(stack), 403, "mapping_inactive")


async def test_suspended_mapping_refuses_writes_too(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(stack, status=MappingStatus.SUSPENDED)
    await assert_refused(
        http, stack, alice(stack), 403, "mapping_inactive", method="POST", body=CARD
    )


async def test_mapping_marked_stale_is_403_mapping_stale(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(stack, status=MappingStatus.STALE)
    await assert_refused(http, stack, alice(stack), 403, "mapping_stale")


async def test_mapping_validated_longer_ago_than_stale_after_is_403_mapping_stale(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    validated = datetime.now(UTC) - STALE_AFTER - timedelta(minutes=1)
    await change_alice_mapping(stack, last_validated_at=validated)
    await assert_refused(http, stack, alice(stack), 403, "mapping_stale")


async def test_mapping_validated_just_under_stale_after_is_allowed(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    validated = datetime.now(UTC) - STALE_AFTER + timedelta(minutes=1)
    await change_alice_mapping(stack, last_validated_at=validated)
    await assert_allowed(http, stack, alice(stack))


async def test_stale_after_setting_sets_the_threshold(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"mapping": {"stale_after": "1h"}})
    await change_alice_mapping(stack, last_validated_at=datetime.now(UTC) - timedelta(hours=2))
    await assert_refused(http, stack, alice(stack), 403, "mapping_stale")


async def test_stale_validation_time_written_with_a_positive_utc_offset_is_still_stale(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # 40 h ago, written with a +10:00 offset. Kept as wall time and read back as UTC (as
    # SQLite would without conversion) it would look 30 h old and pass as fresh.
    plus_ten = (datetime.now(UTC) - timedelta(hours=40)).astimezone(timezone(timedelta(hours=10)))
    await change_alice_mapping(stack, last_validated_at=plus_ten)
    await assert_refused(http, stack, alice(stack), 403, "mapping_stale")


# -- which account --------------------------------------------------------------------------


async def test_unmapped_account_is_403_mapping_missing(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("mallory", "acct-6666", roles=["billing_admin"])
    await assert_refused(http, stack, bearer(token), 403, "mapping_missing")


async def test_token_without_the_account_claim_is_401(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", None, roles=["billing_admin"])
    await assert_refused(http, stack, bearer(token), 401, "unauthenticated")


# -- grants: deny by default -----------------------------------------------------------------


async def test_mapping_without_grants_refuses_everything(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(stack, grants=())
    for method, path, body in (("GET", PM, None), ("POST", PM, CARD), ("GET", ADDRESS, None)):
        await assert_refused(
            http, stack, alice(stack), 403, "scope_denied", method=method, path=path, body=body
        )


async def test_principal_granted_one_operation_may_use_it(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(
        stack, grants=(Grant(principal="alice", operations=("payment_methods:list",)),)
    )
    await assert_allowed(http, stack, alice(stack, roles=[]))


async def test_principal_granted_one_operation_is_refused_another(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(
        stack, grants=(Grant(principal="alice", operations=("payment_methods:list",)),)
    )
    await assert_refused(
        http, stack, alice(stack, roles=[]), 403, "scope_denied", method="POST", body=CARD
    )


async def test_principal_grant_does_not_extend_to_another_principal(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(stack, grants=(Grant(principal="alice", operations=("*",)),))
    carol = bearer(stack.issuer.token("carol", "acct-1001", roles=[]))
    await assert_refused(http, stack, carol, 403, "scope_denied")


async def test_grant_by_operation_id_covers_that_operation(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(
        stack, grants=(Grant(principal="alice", operations=("payment_methods.list",)),)
    )
    await assert_allowed(http, stack, alice(stack, roles=[]))


async def test_role_grant_applies_to_any_principal_holding_the_role(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    carol = bearer(stack.issuer.token("carol", "acct-1001", roles=["viewer"]))
    await assert_allowed(http, stack, carol)


async def test_role_grant_does_not_cover_operations_outside_it(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    carol = bearer(stack.issuer.token("carol", "acct-1001", roles=["viewer"]))
    await assert_refused(http, stack, carol, 403, "scope_denied", method="POST", body=CARD)


async def test_principal_without_a_granted_role_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    dave = bearer(stack.issuer.token("dave", "acct-1001", roles=["auditor"]))
    await assert_refused(http, stack, dave, 403, "scope_denied")


async def test_principal_grant_and_role_grant_add_up(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(
        stack,
        grants=(
            Grant(role="viewer", operations=("payment_methods:list",)),
            Grant(principal="alice", operations=("payment_methods:create",)),
        ),
    )
    headers = alice(stack, roles=["viewer"])
    await assert_allowed(http, stack, headers)
    await assert_allowed(http, stack, headers, method="POST", body=CARD)


async def test_resource_wildcard_covers_every_action_on_the_resource(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(
        stack, grants=(Grant(role="billing_admin", operations=("payment_methods:*",)),)
    )
    await assert_allowed(http, stack, alice(stack))
    await assert_allowed(http, stack, alice(stack), method="POST", body=CARD)


async def test_resource_wildcard_does_not_cover_another_resource(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await change_alice_mapping(
        stack, grants=(Grant(role="billing_admin", operations=("payment_methods:*",)),)
    )
    await assert_refused(http, stack, alice(stack), 403, "scope_denied", path=ADDRESS)


# -- the customer in the path -------------------------------------------------------------------


@pytest.mark.parametrize(
    "customer",
    ["cus_bob", "cus%5Fbob", "%63us_bob", "%63%75%73%5F%62%6F%62", "cus_alice2", "CUS_ALICE"],
)
async def test_path_naming_another_customer_is_403_customer_mismatch(
    stack: DemoStack, http: aiohttp.ClientSession, customer: str
) -> None:
    await assert_refused(
        http,
        stack,
        alice(stack),
        403,
        "customer_mismatch",
        path=f"/v1/customers/{customer}/payment-methods",
    )


async def test_write_naming_another_customer_is_403_customer_mismatch(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await assert_refused(
        http,
        stack,
        alice(stack),
        403,
        "customer_mismatch",
        method="POST",
        path="/v1/customers/cus%5Fbob/payment-methods",
        body=CARD,
    )
    assert stack.platform.customers["cus_bob"].payment_methods == []
