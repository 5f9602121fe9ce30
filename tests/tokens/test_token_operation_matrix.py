"""Issue 5's acceptance, as a matrix over the demo platform's operations.

A token the proxy mints for operation X (its own minter, with exactly the request the mint
stage builds: the mapped customer, X's scope, X's method and upstream URL) is stolen and
replayed by an attacker directly against the demo platform:

- on every other operation Y of the same customer, it is refused with the verifier's
  ``scope_mismatch`` (403), whatever the pair: list vs add, set default, delete, and back;
- on the same operation for another customer (alice's token on bob's path and bob's on
  alice's), it is refused with ``customer_mismatch`` (403).

In both cases the platform's handler never runs: every request it saw was refused, and the
customers' payment methods and billing addresses are unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import pytest

from dragoman.demo.platform import OPERATIONS, DemoOperation
from dragoman.demo.runner import DemoStack

from .support import Tokens

OPS = {op.id: op for op in OPERATIONS}
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}
ADDRESS = {"line1": "2 Attacker Road", "country": "US"}
ACCOUNTS = {"cus_alice": ("alice", "acct-1001"), "cus_bob": ("bob", "acct-2002")}


def path_of(op: DemoOperation, customer: str, payment_method: str) -> str:
    return op.path.format(customer_id=customer, payment_method_id=payment_method)


def body_of(op: DemoOperation, payment_method: str) -> dict[str, Any] | None:
    """A body that would change something, were the request accepted."""
    return {
        "payment_methods.create": CARD,
        "payment_methods.set_default": {"payment_method_id": payment_method},
        "billing_address.update": ADDRESS,
    }.get(op.id)


async def minted_for(
    tokens: Tokens, stack: DemoStack, op: DemoOperation, customer: str, payment_method: str
) -> str:
    principal, account = ACCOUNTS[customer]
    url = stack.urls["platform"] + path_of(op, customer, payment_method)
    minted = await tokens.mint(
        customer=customer,
        scope=op.scope,
        principal=principal,
        cloud_account=account,
        method=op.method,
        url=url,
    )
    return minted.value


async def replay(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    op: DemoOperation,
    token: str,
    customer: str,
    payment_method: str,
) -> tuple[int, str, str]:
    """Status, problem code and challenge of ``token`` sent to ``op`` for ``customer``."""
    async with http.request(
        op.method,
        stack.urls["platform"] + path_of(op, customer, payment_method),
        headers={"Authorization": f"Bearer {token}"},
        json=body_of(op, payment_method),
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body["code"], response.headers["WWW-Authenticate"]


def state(stack: DemoStack) -> dict[str, Any]:
    return copy.deepcopy(
        {cid: (c.payment_methods, c.billing_address) for cid, c in stack.platform.customers.items()}
    )


SCOPE_REFUSED = (403, "scope_mismatch", 'Bearer error="insufficient_scope"')
CUSTOMER_REFUSED = (403, "customer_mismatch", 'Bearer error="insufficient_scope"')


@pytest.mark.parametrize("minted_op", sorted(OPS))
async def test_a_token_for_one_operation_opens_no_other_operation(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession, minted_op: str
) -> None:
    pm = stack.platform.customers["cus_alice"].payment_methods[0]["id"]
    before = state(stack)
    token = await minted_for(tokens, stack, OPS[minted_op], "cus_alice", pm)
    others = [op for op in OPERATIONS if op.id != minted_op]
    answers = {op.id: await replay(http, stack, op, token, "cus_alice", pm) for op in others}
    assert answers == {op.id: SCOPE_REFUSED for op in others}
    assert [s.accepted for s in stack.platform.seen] == [False] * len(others)
    assert state(stack) == before


@pytest.mark.parametrize(
    ("owner", "victim"),
    [("cus_alice", "cus_bob"), ("cus_bob", "cus_alice")],
    ids=["alice-token-on-bob", "bob-token-on-alice"],
)
@pytest.mark.parametrize("op_id", sorted(OPS))
async def test_a_token_for_one_customer_is_refused_on_another_customers_path(
    stack: DemoStack,
    tokens: Tokens,
    http: aiohttp.ClientSession,
    op_id: str,
    owner: str,
    victim: str,
) -> None:
    op = OPS[op_id]
    pm = stack.platform.customers["cus_alice"].payment_methods[0]["id"]
    before = state(stack)
    token = await minted_for(tokens, stack, op, owner, pm)
    assert await replay(http, stack, op, token, victim, pm) == CUSTOMER_REFUSED
    assert [(s.accepted, s.reason) for s in stack.platform.seen] == [(False, "customer_mismatch")]
    assert state(stack) == before


@pytest.mark.parametrize("op_id", sorted(OPS))
async def test_the_same_token_opens_its_own_operation(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession, op_id: str
) -> None:
    # The diagonal of the matrix: the refusals above are not a platform that refuses all.
    op = OPS[op_id]
    pm = stack.platform.customers["cus_alice"].payment_methods[0]["id"]
    token = await minted_for(tokens, stack, op, "cus_alice", pm)
    async with http.request(
        op.method,
        stack.urls["platform"] + path_of(op, "cus_alice", pm),
        headers={"Authorization": f"Bearer {token}"},
        json=body_of(op, pm),
    ) as response:
        assert response.status < 300
    assert [s.accepted for s in stack.platform.seen] == [True]
