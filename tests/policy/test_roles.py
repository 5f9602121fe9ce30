"""The role policy (policy.roles) over real HTTP: a mapping's role grant never reaches beyond
the role's definition, a role not defined there grants nothing, and a principal grant is not
capped. The default roles: viewer reads; billing_admin reads, changes and destroys; owner
does everything, money included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from policy_helpers import (
    ADDRESS,
    CARD,
    NEW_ADDRESS,
    PM,
    MakeStack,
    bearer,
    call,
    grant_alice_mapping,
    money_catalog,
)

from dragoman.demo.platform import OPERATIONS
from dragoman.demo.runner import DemoStack, demo_settings, write_toml
from dragoman.mapping.entity import Grant
from dragoman.settings import PolicySettings, SettingsError, load_settings

DEFAULT_ROLES = PolicySettings().roles
EVERY_ROLE_EVERYTHING = tuple(
    Grant(role=role, operations=("*",)) for role in ("viewer", "billing_admin", "owner")
)


async def money_stack(make_stack: MakeStack, **policy: object) -> DemoStack:
    """The demo with billing_address.update in tier money, each default role granted `*`."""
    overrides = money_catalog()
    if policy:
        overrides["policy"] = policy
    stack = await make_stack(overrides)
    await grant_alice_mapping(stack, *EVERY_ROLE_EVERYTHING)
    return stack


def alice(stack: DemoStack, *roles: str) -> dict[str, str]:
    return bearer(stack.issuer.token("alice", "acct-1001", roles=list(roles)))


async def first_payment_method(http: aiohttp.ClientSession, stack: DemoStack) -> str:
    _, listed, _ = await call(http, stack, alice(stack, "owner"))
    return str(listed["data"][0]["id"])


async def test_viewer_may_read(make_stack: MakeStack, http: aiohttp.ClientSession) -> None:
    stack = await money_stack(make_stack)
    status, _, _ = await call(http, stack, alice(stack, "viewer"))
    assert status == 200


async def test_viewer_may_not_change(make_stack: MakeStack, http: aiohttp.ClientSession) -> None:
    stack = await money_stack(make_stack)
    status, problem, _ = await call(http, stack, alice(stack, "viewer"), "POST", PM, CARD)
    assert (status, problem["code"]) == (403, "scope_denied")
    assert stack.platform.seen == []


async def test_billing_admin_may_change_and_destroy(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    headers = alice(stack, "billing_admin")
    created, _, _ = await call(http, stack, headers, "POST", PM, CARD)
    method = await first_payment_method(http, stack)
    deleted, _, _ = await call(http, stack, headers, "DELETE", f"{PM}/{method}")
    assert (created, deleted) == (201, 204)


async def test_billing_admin_may_not_move_money(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    headers = alice(stack, "billing_admin")
    status, problem, _ = await call(http, stack, headers, "PUT", ADDRESS, NEW_ADDRESS)
    assert (status, problem["code"]) == (403, "scope_denied")
    assert stack.platform.seen == []


async def test_owner_may_do_everything(make_stack: MakeStack, http: aiohttp.ClientSession) -> None:
    stack = await money_stack(make_stack)
    status, address, _ = await call(http, stack, alice(stack, "owner"), "PUT", ADDRESS, NEW_ADDRESS)
    assert (status, address["line1"]) == (200, NEW_ADDRESS["line1"])
    assert [s.accepted for s in stack.platform.seen] == [True]


async def test_a_grant_to_a_role_the_policy_does_not_define_grants_nothing(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack()
    await grant_alice_mapping(stack, Grant(role="auditor", operations=("*",)))
    status, problem, _ = await call(http, stack, alice(stack, "auditor"))
    assert (status, problem["code"]) == (403, "scope_denied")
    assert stack.platform.seen == []


async def test_a_role_grant_does_not_reach_beyond_the_grant_itself(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack()
    await grant_alice_mapping(stack, Grant(role="owner", operations=("payment_methods:list",)))
    status, problem, _ = await call(http, stack, alice(stack, "owner"), "GET", ADDRESS)
    assert (status, problem["code"]) == (403, "scope_denied")


async def test_a_principal_grant_is_not_capped_by_any_role(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(money_catalog())
    await grant_alice_mapping(stack, Grant(principal="alice", operations=("*",)))
    headers = alice(stack, "viewer")
    status, _, _ = await call(http, stack, headers, "PUT", ADDRESS, NEW_ADDRESS)
    assert status == 200


async def test_a_role_defined_in_settings_grants_what_its_entries_name(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    # Setting policy.roles replaces the default table: the roles the registration's
    # default grants name (owner, billing_admin) stay defined.
    roles = {**DEFAULT_ROLES, "support": ["payment_methods:list", "billing_address:*"]}
    stack = await make_stack({"policy": {"roles": roles}})
    await grant_alice_mapping(stack, Grant(role="support", operations=("*",)))
    headers = alice(stack, "support")
    listed, _, _ = await call(http, stack, headers)
    address, _, _ = await call(http, stack, headers, "GET", ADDRESS)
    created, problem, _ = await call(http, stack, headers, "POST", PM, CARD)
    assert (listed, address, created, problem["code"]) == (200, 200, 403, "scope_denied")


async def test_whoami_lists_exactly_the_operations_the_policy_allows(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    async with http.get(
        stack.urls["proxy"] + "/_dragoman/whoami", headers=alice(stack, "billing_admin")
    ) as response:
        assert response.status == 200
        operations = (await response.json())["operations"]
    assert operations == [op.id for op in OPERATIONS if op.id != "billing_address.update"]


async def test_whoami_of_a_viewer_lists_the_read_operations(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await grant_alice_mapping(stack, *EVERY_ROLE_EVERYTHING)
    async with http.get(
        stack.urls["proxy"] + "/_dragoman/whoami", headers=alice(stack, "viewer")
    ) as response:
        operations = (await response.json())["operations"]
    assert operations == [op.id for op in OPERATIONS if op.method == "GET"]


def refusal_at_start(tmp_path: Path, overrides: dict[str, Any]) -> str:
    """The one problem loading the demo's settings with ``overrides`` reports (what
    `dragoman serve` and `check-config` print before anything starts)."""
    (tmp_path / "master.key").write_text("A" * 43)
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )
    write_toml(data, tmp_path / "dragoman.toml")
    with pytest.raises(SettingsError) as refused:
        load_settings(tmp_path / "dragoman.toml", overrides=overrides)
    [problem] = refused.value.problems
    return str(problem)


def test_start_refuses_registration_grants_to_a_role_the_policy_does_not_define(
    tmp_path: Path,
) -> None:
    grants = [{"role": "auditor", "operations": ["*"]}, {"role": "owner", "operations": ["*"]}]
    message = refusal_at_start(tmp_path, {"mapping": {"registration": {"default_grants": grants}}})
    assert message.startswith("mapping.registration.default_grants: ")
    assert "policy.roles does not define: auditor (" in message


def test_start_refuses_a_role_entry_that_names_nothing_in_the_catalog(tmp_path: Path) -> None:
    roles = {**DEFAULT_ROLES, "support": ["payment_method:list"]}
    message = refusal_at_start(tmp_path, {"policy": {"roles": roles}})
    assert message == "policy.roles: entries name nothing in the catalog: payment_method:list"


def test_an_unknown_tier_in_a_role_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="unknown tier 'cash'"):
        PolicySettings(roles={"cashier": ["tier:cash"]})
