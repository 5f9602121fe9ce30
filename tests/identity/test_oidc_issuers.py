"""Issuers and their key sets as the proxy sees them: several issuers, discovery, JWKS outages,
and floods of unknown key ids."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from identity_helpers import (
    ProxyClient,
    alice_claims,
    forge,
    issuer_table,
    oidc_overrides,
    rs256_signer,
)

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import Grant

CAROL_PM = "/v1/customers/cus_carol/payment-methods"


@dataclass(frozen=True, slots=True)
class TwoIssuers:
    stack: DemoStack
    client: ProxyClient
    console: DevIssuer
    partner: DevIssuer


@pytest.fixture
async def two_issuers(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> TwoIssuers:
    """Issuer "console" without prefixes, issuer "partner" with ``partner:`` prefixes; the
    partner's account acct-3003 (as partner:acct-3003) is linked to cus_carol, granted to the
    principal partner:carol only."""
    console, partner = await serve_issuer(), await serve_issuer()
    stack = await make_stack(
        oidc_overrides(
            issuer_table(console),
            issuer_table(
                partner, name="partner", principal_prefix="partner:", account_prefix="partner:"
            ),
        )
    )
    stack.platform.add_customer("cus_carol", "partner:acct-3003")
    assert stack.proxy is not None
    await stack.proxy.store.add(
        cloud_account="partner:acct-3003",
        payment_customer="cus_carol",
        created_by="test",
        verification_method="test-seed",
        grants=(Grant(principal="partner:carol", operations=("*",)),),
    )
    return TwoIssuers(stack, client_for(stack), console, partner)


# -- several issuers --------------------------------------------------------------------------


async def test_tokens_of_each_configured_issuer_are_accepted(two_issuers: TwoIssuers) -> None:
    env = two_issuers
    alice = env.console.sign(alice_claims(env.console))
    env.client.assert_reached_upstream(await env.client.get(alice))
    carol = env.partner.token("carol", "acct-3003")
    env.client.assert_reached_upstream(await env.client.get(carol, path=CAROL_PM))
    assert [s.accepted for s in env.stack.platform.seen] == [True, True]


async def test_issuer_prefixes_are_applied_to_principal_and_account(
    two_issuers: TwoIssuers,
) -> None:
    env = two_issuers
    answer = await env.client.get(env.partner.token("carol", "acct-3003"), path=CAROL_PM)
    record = env.client.record_of(answer)
    assert record["decision"] == "allow"
    assert record["authenticator"] == "partner"
    assert record["principal"] == "partner:carol"
    assert record["cloud_account"] == "partner:acct-3003"


async def test_issuer_prefixes_keep_the_issuers_accounts_apart(two_issuers: TwoIssuers) -> None:
    # The partner issuer vouches for "acct-1001" too; that is not the console's acct-1001.
    env = two_issuers
    answer = await env.client.get(env.partner.sign(alice_claims(env.partner)))
    assert answer.status == 403
    assert answer.body["code"] == "mapping_missing"
    record = env.client.record_of(answer)
    assert record["principal"] == "partner:alice"
    assert record["cloud_account"] == "partner:acct-1001"
    assert env.stack.platform.seen == []


async def test_token_for_one_issuer_signed_with_another_issuers_key_is_refused(
    two_issuers: TwoIssuers,
) -> None:
    env = two_issuers
    claims = env.console.claims("carol", "acct-3003", iss=env.partner.issuer)
    token = env.console.sign(claims)  # the console's key and kid, the partner's iss
    env.client.assert_refused(await env.client.get(token, path=CAROL_PM), "kid_unknown")


async def test_other_issuers_key_under_this_issuers_kid_is_refused(
    two_issuers: TwoIssuers,
) -> None:
    env = two_issuers
    claims = env.console.claims("carol", "acct-3003", iss=env.partner.issuer)
    header = {"alg": "RS256", "kid": env.partner.rsa_kid, "typ": "at+jwt"}
    token = forge(header, claims, rs256_signer(env.console.rsa_key))
    env.client.assert_refused(await env.client.get(token, path=CAROL_PM), "signature_invalid")


async def test_each_issuer_has_its_own_audience(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    console, partner = await serve_issuer(), await serve_issuer()
    stack = await make_stack(
        oidc_overrides(
            issuer_table(console),
            issuer_table(partner, name="partner", audiences=["https://partner.example/api"]),
        )
    )
    client = client_for(stack)
    # "dragoman" is the console's audience, not the partner's.
    token = partner.sign(alice_claims(partner, aud="dragoman"))
    client.assert_refused(await client.get(token), "audience_mismatch")


# -- discovery and key set availability -------------------------------------------------------


async def test_discovery_document_naming_another_issuer_leaves_the_proxy_without_keys(
    client: ProxyClient, stack: DemoStack
) -> None:
    configured = stack.issuer.issuer
    stack.issuer.issuer = "https://login.attacker.example"  # what discovery now claims
    token = stack.issuer.sign(alice_claims(stack.issuer, iss=configured))
    answer = await client.get(token)
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == "jwks_unavailable"
    assert stack.issuer.jwks_fetches == 0


async def test_provider_down_with_no_cached_keys_is_identity_unavailable(
    client: ProxyClient, stack: DemoStack
) -> None:
    stack.issuer.jwks_available = False
    answer = await client.get(stack.issuer.sign(alice_claims(stack.issuer)))
    client.assert_unavailable(answer)
    assert answer.headers["Retry-After"] == "5"


async def test_cached_keys_keep_verifying_while_the_provider_is_down(
    client: ProxyClient, stack: DemoStack
) -> None:
    client.assert_reached_upstream(await client.get(stack.issuer.sign(alice_claims(stack.issuer))))
    stack.issuer.jwks_available = False
    client.assert_reached_upstream(await client.get(stack.issuer.sign(alice_claims(stack.issuer))))


async def test_cached_keys_keep_verifying_after_the_provider_stopped(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    issuer = DevIssuer()
    async with serve(issuer.app()) as url:
        issuer.issuer = url
        stack = await make_stack(oidc_overrides(issuer_table(issuer)))
        client = client_for(stack)
        client.assert_reached_upstream(await client.get(issuer.sign(alice_claims(issuer))))
    client.assert_reached_upstream(await client.get(issuer.sign(alice_claims(issuer))))
    assert issuer.jwks_fetches == 1


async def test_keys_are_fetched_once_for_many_requests(
    client: ProxyClient, stack: DemoStack
) -> None:
    tokens = [stack.issuer.sign(alice_claims(stack.issuer)) for _ in range(20)]
    answers = await asyncio.gather(*(client.get(t) for t in tokens))
    assert [a.status for a in answers] == [200] * 20
    assert stack.issuer.jwks_fetches == 1


# -- unknown kid flood ------------------------------------------------------------------------


async def test_unknown_kid_flood_costs_the_provider_at_most_one_fetch(
    client: ProxyClient, stack: DemoStack, attacker_rsa: rsa.RSAPrivateKey
) -> None:
    client.assert_reached_upstream(await client.get(stack.issuer.sign(alice_claims(stack.issuer))))
    fetches_before = stack.issuer.jwks_fetches
    seen_before = list(stack.platform.seen)
    audited_before = len(client.audit())
    sign = rs256_signer(attacker_rsa)
    tokens = [
        forge(
            {"alg": "RS256", "kid": secrets.token_hex(8), "typ": "at+jwt"},
            alice_claims(stack.issuer),
            sign,
        )
        for _ in range(200)
    ]
    answers = await asyncio.gather(*(client.get(t) for t in tokens))
    assert {a.status for a in answers} == {401}
    assert {a.body["code"] for a in answers} == {"unauthenticated"}
    flood = client.audit()[audited_before:]
    assert len(flood) == 200
    assert {r["reason"] for r in flood} == {"kid_unknown"}
    assert stack.issuer.jwks_fetches <= fetches_before + 1
    assert stack.platform.seen == seen_before


async def test_unknown_kid_flood_on_a_cold_cache_costs_the_provider_one_fetch(
    client: ProxyClient, stack: DemoStack, attacker_rsa: rsa.RSAPrivateKey
) -> None:
    sign = rs256_signer(attacker_rsa)
    tokens = [
        forge(
            {"alg": "RS256", "kid": secrets.token_hex(8), "typ": "at+jwt"},
            alice_claims(stack.issuer),
            sign,
        )
        for _ in range(50)
    ]
    answers = await asyncio.gather(*(client.get(t) for t in tokens))
    assert {a.status for a in answers} == {401}
    assert {r["reason"] for r in client.audit()} == {"kid_unknown"}
    assert stack.issuer.jwks_fetches == 1
    assert stack.platform.seen == []


# -- what the issuer publishes ----------------------------------------------------------------


class IssuerWithOddKeys(DevIssuer):
    """Publishes, next to its real keys, entries that name no usable verification key."""

    def jwks(self) -> dict[str, Any]:
        keys = super().jwks()["keys"]
        odd = [
            {**keys[0], "kid": "odd-alg-none", "alg": "none"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "odd-symmetric", "alg": "HS256"},
            {"kty": "RSA", "kid": "odd-broken", "n": "AA", "e": "AQAB"},
            {"kty": "oct", "kid": "odd-empty"},
        ]
        return {"keys": odd + keys}


async def test_unusable_entries_in_the_key_set_do_not_stop_the_others_verifying(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    issuer = IssuerWithOddKeys()
    async with serve(issuer.app()) as url:
        issuer.issuer = url
        stack = await make_stack(oidc_overrides(issuer_table(issuer)))
        client = client_for(stack)
        client.assert_reached_upstream(await client.get(issuer.sign(alice_claims(issuer))))


async def test_token_naming_an_unusable_entry_of_the_key_set_is_refused(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    issuer = IssuerWithOddKeys()
    async with serve(issuer.app()) as url:
        issuer.issuer = url
        stack = await make_stack(oidc_overrides(issuer_table(issuer)))
        client = client_for(stack)
        header = {"alg": "RS256", "kid": "odd-alg-none", "typ": "at+jwt"}
        token = forge(header, alice_claims(issuer), rs256_signer(issuer.rsa_key))
        client.assert_refused(await client.get(token), "kid_unknown")
