"""Minting scoped tokens (SEMANTICS §2): header, claims, lifetime and jti, cross-checked with
PyJWT against the JWKS the running proxy publishes."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from jwt.utils import base64url_decode

from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack, demo_settings
from dragoman.settings import SettingsError, load_settings

from .support import PM, Tokens

CLAIMS = {
    "iss",
    "aud",
    "sub",
    "scope",
    "act",
    "cloud_account",
    "iat",
    "nbf",
    "exp",
    "jti",
    "htm",
    "htu",
}


async def test_header_is_es256_at_jwt_with_the_current_kid(
    stack: DemoStack, tokens: Tokens
) -> None:
    assert stack.proxy is not None
    minted = await tokens.mint()
    current = stack.proxy.keys.current_key()
    assert current is not None
    assert jwt.get_unverified_header(minted.value) == {
        "alg": "ES256",
        "typ": "at+jwt",
        "kid": current.kid,
    }
    assert minted.kid == current.kid


async def test_signature_verifies_with_pyjwt_and_the_published_jwks(tokens: Tokens) -> None:
    minted = await tokens.mint()
    claims = await tokens.decode(minted.value)
    assert claims["jti"] == minted.jti


async def test_claims_are_exactly_the_specified_set(tokens: Tokens) -> None:
    claims = await tokens.decode((await tokens.mint()).value)
    assert set(claims) == CLAIMS
    assert set(claims["act"]) == {"sub", "iss"}


async def test_claims_name_the_request_customer_operation_principal_and_binding(
    stack: DemoStack, tokens: Tokens
) -> None:
    claims = await tokens.decode(
        (
            await tokens.mint(
                customer="cus_bob",
                scope="billing_address:update",
                principal="bob",
                cloud_account="acct-2002",
                method="PUT",
                url=stack.urls["platform"] + "/v1/customers/cus_bob/billing-address",
            )
        ).value
    )
    assert claims["iss"] == TOKEN_ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == "cus_bob"
    assert claims["scope"] == "billing_address:update"
    assert claims["act"] == {"sub": "bob", "iss": stack.urls["issuer"]}
    assert claims["cloud_account"] == "acct-2002"
    assert claims["htm"] == "PUT"
    assert claims["htu"] == stack.urls["platform"] + "/v1/customers/cus_bob/billing-address"


async def test_claims_with_non_ascii_text_decode_to_the_same_text(tokens: Tokens) -> None:
    """The payload is UTF-8 JSON (RFC 7519 §7.1), non-ASCII text included as is."""
    principal = 'zoë@exämple.test \u2028 \U0001f600 "quoted" \\ \x01'
    minted = await tokens.mint(principal=principal, cloud_account="acct-ü")
    claims = await tokens.decode(minted.value)
    assert claims["act"]["sub"] == principal
    assert claims["cloud_account"] == "acct-ü"


async def test_iat_and_nbf_are_the_minting_second_and_exp_is_iat_plus_ttl(
    tokens: Tokens,
) -> None:
    minter = tokens.minter(ttl=300, clock=lambda: 1_700_000_000.9)
    minted = await minter.mint(tokens.request())
    claims = jwt.decode(minted.value, options={"verify_signature": False})
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (
        1_700_000_000,
        1_700_000_000,
        1_700_000_300,
    )
    assert (minted.issued_at, minted.expires_at) == (1_700_000_000, 1_700_000_300)


async def test_exp_follows_the_configured_tokens_ttl(
    make_stack: Callable[..., Awaitable[DemoStack]],
) -> None:
    stack = await make_stack({"tokens": {"ttl": "2m"}})
    claims = await Tokens(stack).decode((await Tokens(stack).mint()).value)
    assert claims["exp"] - claims["iat"] == 120


async def test_jti_carries_at_least_122_random_bits(tokens: Tokens) -> None:
    minted = await tokens.mint()
    raw = base64url_decode(minted.jti)
    assert len(raw) * 8 >= 122
    assert set(minted.jti) <= set(string.ascii_letters + string.digits + "-_")


async def test_jti_is_unique_across_many_mints(tokens: Tokens) -> None:
    jtis = [(await tokens.mint()).jti for _ in range(2000)]
    assert len(set(jtis)) == len(jtis)


async def test_tokens_minted_in_one_turn_each_verify_and_name_their_own_request(
    tokens: Tokens,
) -> None:
    """Signatures asked for in one turn of the loop are made together (dragoman.keys.batch):
    no token may carry another's signature or claims."""
    requests = [tokens.request(principal=f"caller-{n}") for n in range(24)]
    minted = await asyncio.gather(*(tokens.proxy_minter.mint(r) for r in requests))
    assert len({m.jti for m in minted}) == len(requests)
    for request, token in zip(requests, minted, strict=True):
        claims = await tokens.decode(token.value)
        assert claims["act"]["sub"] == request.principal
        assert claims["jti"] == token.jti


async def test_identical_requests_through_the_proxy_reach_the_platform_with_fresh_jtis(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    caller = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    for _ in range(3):
        async with http.get(
            stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {caller}"}
        ) as response:
            assert response.status == 200
    jtis = [seen.jti for seen in stack.platform.seen if seen.accepted]
    assert len(jtis) == 3
    assert len(set(jtis)) == 3


async def test_token_forwarded_by_the_proxy_is_bound_to_the_callers_request(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve: Callable[[web.Application], Any],
    http: aiohttp.ClientSession,
) -> None:
    forwarded: list[str] = []

    async def capture(request: web.Request) -> web.Response:
        forwarded.append(request.headers["Authorization"])
        return web.json_response({"data": []})

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", capture)
    async with serve(upstream_app) as upstream:
        stack = await make_stack({"upstream": {"url": upstream}})
        caller = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
        path = "/v1/customers/cus_alice/payment-methods"
        async with http.post(
            stack.urls["proxy"] + path,
            headers={"Authorization": f"Bearer {caller}"},
            json={"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031},
        ) as response:
            assert response.status == 200
    assert len(forwarded) == 1
    scheme, _, token = forwarded[0].partition(" ")
    assert scheme == "Bearer"
    claims = await Tokens(stack).decode(token)
    assert claims["scope"] == "payment_methods:create"
    assert claims["sub"] == "cus_alice"
    assert claims["act"] == {"sub": "alice", "iss": stack.urls["issuer"]}
    assert claims["cloud_account"] == "acct-1001"
    assert claims["htm"] == "POST"
    assert claims["htu"] == upstream + path


def _settings_with_ttl(tmp_path: Path, ttl: object) -> dict[str, Any]:
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8081",
        issuer="http://127.0.0.1:8082",
        console="http://127.0.0.1:8083",
        state_dir=tmp_path,
    )
    (tmp_path / "master.key").write_text("A" * 43)
    data["tokens"]["ttl"] = ttl
    return data


@pytest.mark.parametrize("ttl", [901, "901s", "16m", "1h"])
def test_settings_refuse_a_token_ttl_over_15_minutes(tmp_path: Path, ttl: object) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=_settings_with_ttl(tmp_path, ttl))
    assert [p.key for p in caught.value.problems] == ["tokens.ttl"]


def test_settings_accept_a_token_ttl_of_exactly_15_minutes(tmp_path: Path) -> None:
    settings = load_settings(overrides=_settings_with_ttl(tmp_path, "15m"))
    assert settings.tokens.ttl == 900


def test_settings_error_for_the_ttl_does_not_echo_the_value(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=_settings_with_ttl(tmp_path, "987654s"))
    assert "987654" not in str(caught.value)


def test_the_minter_itself_refuses_a_lifetime_over_15_minutes(tokens: Tokens) -> None:
    with pytest.raises(ValueError, match="at most 900"):
        tokens.minter(ttl=901)
