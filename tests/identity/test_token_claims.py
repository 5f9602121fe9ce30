"""The claims of the caller's token (iss, aud, exp, nbf, iat, sub), through the running proxy.

Tokens here are signed with the issuer's real key: only the claims are wrong. Times are
relative to the wall clock, with margins far from the 30 s leeway on either side.
"""

from __future__ import annotations

import time

import pytest
from identity_helpers import ProxyClient, alice_claims

from dragoman.demo.runner import DemoStack

LEEWAY = 30


async def test_valid_token_is_accepted_with_its_principal_and_account(
    client: ProxyClient, stack: DemoStack
) -> None:
    answer = await client.get(stack.issuer.sign(alice_claims(stack.issuer)))
    client.assert_reached_upstream(answer)
    record = client.record_of(answer)
    assert record["principal"] == "alice"
    assert record["cloud_account"] == "acct-1001"
    assert record["authenticator"] == "console"


@pytest.mark.parametrize("roles", [["viewer"], "viewer"], ids=["list", "space-separated"])
async def test_roles_claim_decides_the_granted_operations(
    client: ProxyClient, stack: DemoStack, roles: list[str] | str
) -> None:
    claims = stack.issuer.claims("alice", "acct-1001", roles=None)
    claims["roles"] = roles
    answer = await client.get(stack.issuer.sign(claims), path="/_dragoman/whoami")
    assert answer.status == 200, answer.body
    assert answer.body["principal"] == "alice"
    assert sorted(answer.body["operations"]) == [
        "billing_address.get",
        "customers.get",
        "payment_methods.get",
        "payment_methods.list",
    ]


async def test_token_naming_no_configured_issuer_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, iss="https://login.attacker.example")
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "issuer_unknown")


async def test_issuer_with_a_trailing_slash_is_another_issuer(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, iss=stack.issuer.issuer + "/")
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "issuer_unknown")


async def test_token_without_iss_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer)
    del claims["iss"]
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "issuer_unknown")


async def test_wrong_audience_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer, aud="payments-demo")
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "audience_mismatch")


async def test_missing_audience_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer)
    del claims["aud"]
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "audience_mismatch")


async def test_audience_list_naming_the_proxy_is_accepted(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, aud=["https://other.example", "dragoman"])
    client.assert_reached_upstream(await client.get(stack.issuer.sign(claims)))


async def test_expired_token_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer, ttl=-(LEEWAY + 60))
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "token_expired")


async def test_token_expired_seconds_ago_is_refused_whatever_the_leeway(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, ttl=-5)
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "token_expired")


async def test_missing_exp_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer)
    del claims["exp"]
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "claim_missing")


async def test_exp_that_is_not_a_number_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer, exp=str(int(time.time()) + 600))
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "claim_invalid")


async def test_exp_of_infinity_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    # Python's JSON reads `Infinity`; such a token would never expire.
    claims = alice_claims(stack.issuer, exp=float("inf"))
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "claim_invalid")


async def test_exp_of_nan_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    # Every comparison with NaN is false: without a check, it would never expire.
    claims = alice_claims(stack.issuer, exp=float("nan"))
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "claim_invalid")


async def test_exp_beyond_any_float_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer, exp=10**400)
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "claim_invalid")


async def test_nbf_in_the_future_beyond_the_leeway_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, nbf=int(time.time()) + LEEWAY + 60)
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "token_not_yet_valid")


async def test_nbf_in_the_future_within_the_leeway_is_accepted(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, nbf=int(time.time()) + 5)
    client.assert_reached_upstream(await client.get(stack.issuer.sign(claims)))


async def test_iat_in_the_future_beyond_the_leeway_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer, iat=int(time.time()) + LEEWAY + 60)
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "token_not_yet_valid")


async def test_missing_iat_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    # RFC 9068 §2.2: iat is required in JWT access tokens.
    claims = alice_claims(stack.issuer)
    del claims["iat"]
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "claim_missing")


DAY = 86_400  # max_token_lifetime's default


@pytest.mark.parametrize(
    ("iat_ago", "ttl"),
    [(0, 100 * 365 * DAY), (time.time(), 300), (time.time() + 10, 300)],
    ids=["lives-a-century", "issued-at-zero", "issued-at-a-negative-time"],
)
async def test_token_living_longer_than_max_token_lifetime_is_refused(
    client: ProxyClient, stack: DemoStack, iat_ago: float, ttl: int
) -> None:
    # A leaked token of a century is good for no more than a day's.
    now = int(time.time())
    claims = alice_claims(stack.issuer, iat=now - int(iat_ago), exp=now + ttl)
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "token_lifetime_too_long")


async def test_token_living_exactly_max_token_lifetime_is_accepted(
    client: ProxyClient, stack: DemoStack
) -> None:
    now = int(time.time())
    claims = alice_claims(stack.issuer, iat=now - 60, exp=now - 60 + DAY)
    client.assert_reached_upstream(await client.get(stack.issuer.sign(claims)))


async def test_token_naming_no_principal_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    claims = alice_claims(stack.issuer)
    del claims["sub"]
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "principal_claim_missing")


async def test_account_claim_that_is_not_a_string_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    claims = alice_claims(stack.issuer)
    claims["cloud_account"] = ["acct-1001", "acct-2002"]
    client.assert_refused(await client.get(stack.issuer.sign(claims)), "account_claim_invalid")
