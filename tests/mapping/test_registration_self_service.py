"""What self-service registration may not do (over real HTTP, SQLite and PostgreSQL): undo
an operator's work (unlink a link an operator made, re-link an account an operator revoked),
live-link one customer to a second account, or tell a caller which customer ids exist.

carol (and carlos) of acct-3003 and dave of acct-4004 are the fresh callers; an operator's
writes are made through the store as ``dragoman mappings add|link|revoke|suspend`` make them
(``created_by`` / ``updated_by`` the operator's ``--by``)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from registration_helpers import (
    caller,
    linked,
    live_store,
    mapping_of,
    records,
    register,
    self_link,
    unlink,
)

from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import Grant, MappingStatus
from dragoman.mapping.store import CustomerLinkedElsewhere, MappingStore

OPERATOR_GRANTS = (Grant(principal="carol", operations=("payment_methods.list",)),)


def dave(stack: DemoStack) -> dict[str, str]:
    return caller(stack, "dave", "acct-4004")


async def operator_revokes(stack: DemoStack, account: str) -> None:
    """``dragoman mappings revoke <account> --by ops@example``."""
    mapping = await linked(stack, account)
    await live_store(stack).update(
        mapping.id, expected_version=mapping.version, actor="ops@example", status="revoked"
    )


# -- self-service does not undo an operator's work --------------------------------------------


@pytest.mark.parametrize("method", ["manual", "platform-metadata"], ids=["add", "link"])
async def test_self_service_cannot_unlink_a_link_an_operator_made(
    stack: DemoStack, http: aiohttp.ClientSession, method: str
) -> None:
    # `mappings add --grant ...` (manual) or `mappings link --grant ...` (verified): with
    # the operator's grants, which an unlink and a re-registration would replace.
    stack.platform.add_customer("cus_carol", "acct-3003")
    made = await live_store(stack).add(
        cloud_account="acct-3003",
        payment_customer="cus_carol",
        created_by="ops@example",
        verification_method=method,
        grants=OPERATOR_GRANTS,
    )
    status, problem = await unlink(http, stack, caller(stack))
    assert (status, problem["code"], problem["reason"]) == (
        403,
        "registration_forbidden",
        "link_made_by_operator",
    )
    assert await linked(stack, "acct-3003") == made


async def test_an_operators_revocation_blocks_self_registration_of_the_account(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    await operator_revokes(stack, "acct-3003")
    status, problem = await register(http, stack, caller(stack), "cus_carol")
    assert (status, problem["code"], problem["reason"]) == (
        403,
        "registration_forbidden",
        "revoked_by_operator",
    )
    found = await mapping_of(stack, "acct-3003")
    assert found is not None and found.status is MappingStatus.REVOKED


async def test_an_operators_revocation_of_an_already_unlinked_link_blocks_self_registration(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # Revoking "for good" what the caller had unlinked: the operator's word is the last.
    await self_link(http, stack, caller(stack))
    await unlink(http, stack, caller(stack))
    revoked = await linked(stack, "acct-3003")
    await live_store(stack).update(
        revoked.id, expected_version=revoked.version, actor="ops@example", status="revoked"
    )
    status, problem = await register(http, stack, caller(stack), "cus_carol")
    assert (status, problem["reason"]) == (403, "revoked_by_operator")


async def test_once_an_operator_links_the_account_again_it_serves_and_stays_the_operators(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    await operator_revokes(stack, "acct-3003")
    await live_store(stack).add(
        cloud_account="acct-3003",
        payment_customer="cus_carol",
        created_by="ops@example",
        verification_method="manual",
        grants=OPERATOR_GRANTS,
    )
    url = stack.urls["proxy"] + "/v1/customers/cus_carol/payment-methods"
    async with http.get(url, headers=caller(stack)) as response:
        assert response.status == 200, await response.text()
    assert (await unlink(http, stack, caller(stack)))[1]["reason"] == "link_made_by_operator"


async def test_a_link_another_principal_of_the_account_unlinked_can_be_registered_again(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    carlos = caller(stack, "carlos", "acct-3003")
    assert (await unlink(http, stack, carlos))[0] == 200
    assert (await linked(stack, "acct-3003")).updated_by == "registration:carlos"
    status, body = await register(http, stack, caller(stack), "cus_carol")
    assert (status, body["created_by"]) == (201, "registration:carol")


# -- one customer, one account ------------------------------------------------------------------


async def test_a_customer_another_account_still_links_is_refused_409(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    first = await self_link(http, stack, caller(stack))
    stack.platform.add_customer("cus_carol", "acct-4004")  # the platform moved it to dave's
    status, problem = await register(http, stack, dave(stack), "cus_carol")
    assert (status, problem["code"], problem["reason"]) == (
        409,
        "mapping_exists",
        "customer_linked_elsewhere",
    )
    assert await mapping_of(stack, "acct-4004") is None
    assert (await linked(stack, "acct-3003")).id == first["id"]


async def test_the_refusal_names_the_link_in_the_way_in_the_audit_record(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    first = await self_link(http, stack, caller(stack))
    stack.platform.add_customer("cus_carol", "acct-4004")
    await register(http, stack, dave(stack), "cus_carol")
    record = records(stack, "mapping")[-1]
    assert (record["outcome"], record["code"], record["reason"]) == (
        "refused",
        "mapping_exists",
        "customer_linked_elsewhere",
    )
    assert (record["actor"], record["mapping_id"]) == ("dave", first["id"])


async def test_once_the_other_accounts_link_is_suspended_the_customer_can_be_linked(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await self_link(http, stack, caller(stack))
    stack.platform.add_customer("cus_carol", "acct-4004")
    old = await linked(stack, "acct-3003")
    # What reconciliation does to the drifted link (or an operator: `mappings suspend`).
    await live_store(stack).update(
        old.id, expected_version=old.version, actor="reconcile", status="suspended"
    )
    status, _ = await register(http, stack, dave(stack), "cus_carol")
    assert status == 201


async def test_two_concurrent_self_service_links_of_one_customer_make_one(
    store: MappingStore,
) -> None:
    for round_ in range(5):
        customer = f"cus_race_{round_}"
        outcomes = await asyncio.gather(
            *(
                store.add(
                    cloud_account=f"acct-race-{round_}-{n}",
                    payment_customer=customer,
                    created_by=f"registration:user{n}",
                    verification_method="platform-metadata",
                    self_service=True,
                )
                for n in range(4)
            ),
            return_exceptions=True,
        )
        made = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, CustomerLinkedElsewhere)]
        assert (len(made), len(refused)) == (1, 3), outcomes
        live = [m for m in await store.list() if m.payment_customer == customer]
        assert [m.id for m in live] == [made[0].id]


# -- no existence oracle ------------------------------------------------------------------------


async def test_a_missing_customer_and_another_accounts_customer_get_one_answer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    _, missing = await register(http, stack, caller(stack, "mallory"), "cus_nobody")
    _, others = await register(http, stack, caller(stack, "mallory"), "cus_bob")

    def answer(problem: dict[str, str]) -> tuple[str, ...]:
        return (problem["status"], problem["code"], problem["reason"], problem["detail"])

    assert answer(missing) == answer(others)
    assert answer(missing)[1:3] == ("link_refused", "account_mismatch")


async def test_the_mapping_audit_record_still_says_the_customer_is_missing(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await register(http, stack, caller(stack, "mallory"), "cus_nobody")
    [record] = records(stack, "mapping")
    assert (record["code"], record["reason"]) == ("link_refused", "customer_missing")
