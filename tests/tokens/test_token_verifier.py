"""The upstream verifier (``TokenVerifier.verify``), called directly with genuine tokens of a
running proxy and its real JWKS: each test breaks one rule and expects its exact refusal."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.utils import base64url_encode

from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, DemoStack
from dragoman.tokens.verify import TokenRejected, TokenVerifier, VerifiedToken

from .support import PM, Tokens, parts_of, segment


async def check(
    verifier: TokenVerifier,
    token: str | None,
    *,
    method: str = "GET",
    path: str = PM,
    scope: str = "payment_methods:list",
    customer: str | None = "cus_alice",
) -> VerifiedToken:
    """What the platform's list handler asks of its token, unless told otherwise."""
    return await verifier.verify(token, method=method, path=path, scope=scope, customer=customer)


async def refusal(verifier: TokenVerifier, token: str | None, **request: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        await check(verifier, token, **request)
    return caught.value


def _verifier(stack: DemoStack, **options: object) -> TokenVerifier:
    return TokenVerifier(
        jwks_url=stack.urls["proxy"] + "/.well-known/jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=stack.urls["platform"],
        **options,  # type: ignore[arg-type]
    )


# -- the genuine token ---------------------------------------------------------------------


async def test_genuine_token_is_accepted_for_its_own_request(
    stack: DemoStack, tokens: Tokens, verifier: TokenVerifier
) -> None:
    minted = await tokens.mint()
    verified = await check(verifier, minted.value)
    assert verified.customer == "cus_alice"
    assert verified.scope == "payment_methods:list"
    assert verified.principal == "alice"
    assert verified.cloud_account == "acct-1001"
    assert verified.jti == minted.jti
    assert verified.kid == minted.kid
    assert verified.expires_at == minted.expires_at


async def test_missing_token_is_refused(verifier: TokenVerifier) -> None:
    rejected = await refusal(verifier, None)
    assert (rejected.reason, rejected.status) == ("token_missing", 401)


# -- the binding: operation, customer, request ---------------------------------------------


async def test_token_for_another_operation_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = (await tokens.mint(scope="payment_methods:read")).value
    rejected = await refusal(verifier, token, scope="payment_methods:list")
    assert (rejected.reason, rejected.status) == ("scope_mismatch", 403)


async def test_token_for_another_customer_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = (await tokens.mint(customer="cus_bob")).value
    rejected = await refusal(verifier, token, customer="cus_alice")
    assert (rejected.reason, rejected.status) == ("customer_mismatch", 403)


async def test_token_for_another_path_is_refused(
    stack: DemoStack, tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = (await tokens.mint(url=stack.urls["platform"] + PM + "/pm_one")).value
    rejected = await refusal(verifier, token, path=PM + "/pm_two")
    assert (rejected.reason, rejected.status) == ("url_mismatch", 401)


async def test_token_for_another_origin_is_refused(
    stack: DemoStack, tokens: Tokens, verifier: TokenVerifier
) -> None:
    # Same audience, same path, but minted for another server (here: the proxy's own origin).
    token = (await tokens.mint(url=stack.urls["proxy"] + PM)).value
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("url_mismatch", 401)


async def test_token_whose_htu_carries_a_query_is_refused(
    stack: DemoStack, tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = (await tokens.mint(url=stack.urls["platform"] + PM + "?limit=1")).value
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("url_mismatch", 401)


async def test_token_for_another_method_is_refused(tokens: Tokens, verifier: TokenVerifier) -> None:
    token = (await tokens.mint(method="POST")).value
    rejected = await refusal(verifier, token, method="GET")
    assert (rejected.reason, rejected.status) == ("method_mismatch", 401)


async def test_claims_edited_after_signing_are_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    # Turn a genuine list token into a delete token by editing its claims, keeping the
    # signature: the signature no longer verifies.
    genuine = (await tokens.mint()).value
    header, claims = parts_of(genuine)
    edited = {**claims, "scope": "payment_methods:delete"}
    token = f"{segment(header)}.{segment(edited)}.{genuine.rsplit('.', 1)[1]}"
    rejected = await refusal(verifier, token, scope="payment_methods:delete")
    assert (rejected.reason, rejected.status) == ("signature_invalid", 401)


# -- time ----------------------------------------------------------------------------------


async def test_token_is_refused_once_exp_has_passed_whatever_the_leeway(
    stack: DemoStack, tokens: Tokens
) -> None:
    minted = await tokens.mint()
    late = _verifier(stack, clock=lambda: minted.expires_at)
    try:
        rejected = await refusal(late, minted.value)
    finally:
        await late.close()
    assert (rejected.reason, rejected.status) == ("token_expired", 401)


async def test_token_is_accepted_in_its_last_second_before_exp(
    stack: DemoStack, tokens: Tokens
) -> None:
    minted = await tokens.mint()
    late = _verifier(stack, clock=lambda: minted.expires_at - 0.5)
    try:
        verified = await check(late, minted.value)
    finally:
        await late.close()
    assert verified.jti == minted.jti


async def test_token_minted_in_the_past_is_refused_as_expired(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    minter = tokens.minter(ttl=300, clock=lambda: time.time() - 400)
    token = (await minter.mint(tokens.request())).value
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("token_expired", 401)


async def test_token_not_yet_valid_beyond_the_leeway_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    minter = tokens.minter(ttl=300, clock=lambda: time.time() + 120)
    token = (await minter.mint(tokens.request())).value
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("token_not_yet_valid", 401)


async def test_token_living_longer_than_15_minutes_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    token = await tokens.forge(claims={"iat": now, "nbf": now, "exp": now + 901})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("token_lifetime_too_long", 401)


async def test_token_living_exactly_15_minutes_is_accepted(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    token = await tokens.forge(claims={"iat": now, "nbf": now, "exp": now + 900})
    verified = await check(verifier, token)
    assert verified.expires_at == now + 900


# -- header policy ---------------------------------------------------------------------------


async def test_alg_none_is_refused(tokens: Tokens, verifier: TokenVerifier) -> None:
    header, claims = parts_of((await tokens.mint()).value)
    token = f"{segment({**header, 'alg': 'none'})}.{segment(claims)}."
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("alg_not_allowed", 401)


async def test_hs256_signed_with_the_public_key_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    # The classic key confusion: HMAC keyed with the published public key (PEM).
    header, claims = parts_of((await tokens.mint()).value)
    public = jwt.PyJWK((await tokens.jwks())["keys"][0]).key
    secret = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{segment({**header, 'alg': 'HS256'})}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64url_encode(mac).decode()}"
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("alg_not_allowed", 401)


def test_verifier_cannot_be_configured_to_accept_hmac() -> None:
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(
            jwks_url="http://127.0.0.1:9/jwks.json",
            issuer=TOKEN_ISSUER,
            audience=AUDIENCE,
            origin="http://127.0.0.1:9",
            algorithms=("ES256", "HS256"),
        )


async def test_algorithm_outside_the_allow_list_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = await tokens.forge(header={"alg": "ES384"})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("alg_not_allowed", 401)


async def test_allowed_algorithm_that_does_not_fit_the_key_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    # EdDSA is on the allow-list, but the kid names a P-256 key.
    token = await tokens.forge(header={"alg": "EdDSA"})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("key_mismatch", 401)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("jwk", {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        ("x5c", ["MIIB"]),
    ],
)
async def test_key_locating_or_key_carrying_header_is_refused(
    tokens: Tokens, verifier: TokenVerifier, name: str, value: object
) -> None:
    token = await tokens.forge(header={name: value})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("header_forbidden", 401)


async def test_embedded_jwk_of_the_signing_key_itself_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    # Even when the embedded key is the genuine public key, the header is not accepted.
    genuine_jwk = (await tokens.jwks())["keys"][0]
    token = await tokens.forge(header={"jwk": genuine_jwk})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("header_forbidden", 401)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "dpop+jwt", "at+jws"])
async def test_typ_other_than_at_jwt_is_refused(
    tokens: Tokens, verifier: TokenVerifier, typ: str
) -> None:
    token = await tokens.forge(header={"typ": typ})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("typ_not_allowed", 401)


async def test_missing_typ_is_refused(tokens: Tokens, verifier: TokenVerifier) -> None:
    token = await tokens.forge(drop_header=["typ"])
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("typ_not_allowed", 401)


def signed_by(
    private: ec.EllipticCurvePrivateKey, header: dict[str, Any], claims: dict[str, Any]
) -> str:
    """A compact ES256 JWS signed by ``private`` (not the proxy's key)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{base64url_encode(signature).decode()}"


async def test_unknown_kid_is_refused(tokens: Tokens, verifier: TokenVerifier) -> None:
    # Signed by a key that is not in the proxy's key set, under a kid the set does not hold.
    header, claims = parts_of((await tokens.mint()).value)
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = signed_by(stranger, {**header, "kid": "not-in-the-key-set"}, claims)
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("kid_unknown", 401)


async def test_token_signed_by_another_key_under_the_genuine_kid_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    header, claims = parts_of((await tokens.mint()).value)
    token = signed_by(ec.generate_private_key(ec.SECP256R1()), header, claims)
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("signature_invalid", 401)


async def test_missing_kid_is_refused(tokens: Tokens, verifier: TokenVerifier) -> None:
    token = await tokens.forge(drop_header=["kid"])
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("kid_missing", 401)


# -- issuer, audience, jti --------------------------------------------------------------------


async def test_token_from_another_issuer_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    minter = tokens.minter(issuer="another-dragoman")
    token = (await minter.mint(tokens.request())).value
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("issuer_mismatch", 401)


async def test_token_for_another_audience_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    minter = tokens.minter(audience="another-upstream")
    token = (await minter.mint(tokens.request())).value
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("audience_mismatch", 401)


async def test_missing_jti_is_refused(tokens: Tokens, verifier: TokenVerifier) -> None:
    token = await tokens.forge(drop_claims=["jti"])
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("claim_missing", 401)


@pytest.mark.parametrize(
    ("claim", "reason", "status"),
    [
        ("iss", "issuer_mismatch", 401),
        ("aud", "audience_mismatch", 401),
        ("sub", "customer_mismatch", 403),
        ("scope", "scope_mismatch", 403),
        ("exp", "claim_missing", 401),
        ("iat", "claim_missing", 401),
        ("htm", "method_mismatch", 401),
        ("htu", "url_mismatch", 401),
    ],
)
async def test_a_claim_removed_and_the_token_re_signed_with_the_genuine_key_is_refused(
    tokens: Tokens, verifier: TokenVerifier, claim: str, reason: str, status: int
) -> None:
    # A missing claim is never "no restriction": each one the token binds is required.
    token = await tokens.forge(drop_claims=[claim])
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == (reason, status)


async def test_jti_shorter_than_122_random_bits_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = await tokens.forge(claims={"jti": "A" * 21})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("claim_invalid", 401)


async def test_token_without_the_acting_principal_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = await tokens.forge(drop_claims=["act"])
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("claim_missing", 401)


async def test_token_without_the_cloud_account_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = await tokens.forge(drop_claims=["cloud_account"])
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("claim_missing", 401)


@pytest.mark.parametrize(
    "claims",
    [
        {"act": {"sub": ""}},
        {"act": {"sub": 42}},
        {"act": {"sub": None}},
        {"cloud_account": ""},
        {"cloud_account": 42},
        {"cloud_account": None},
    ],
    ids=[
        "act-sub-empty",
        "act-sub-number",
        "act-sub-null",
        "account-empty",
        "account-number",
        "account-null",
    ],
)
async def test_a_who_claim_that_names_nobody_is_refused_although_genuinely_signed(
    tokens: Tokens, verifier: TokenVerifier, claims: dict[str, object]
) -> None:
    # The platform records who acted and for which account: a token naming nobody would
    # leave an action nobody answers for.
    token = await tokens.forge(claims=claims)
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("claim_invalid", 401)


async def test_jti_too_short_to_be_random_is_refused(
    tokens: Tokens, verifier: TokenVerifier
) -> None:
    token = await tokens.forge(claims={"jti": "1"})
    rejected = await refusal(verifier, token)
    assert (rejected.reason, rejected.status) == ("claim_invalid", 401)


# -- the key set -------------------------------------------------------------------------------


async def test_unreachable_key_set_fails_closed(stack: DemoStack, tokens: Tokens) -> None:
    token = (await tokens.mint()).value
    blind = TokenVerifier(
        jwks_url=stack.urls["platform"] + "/no-such-jwks.json",
        issuer=TOKEN_ISSUER,
        audience=AUDIENCE,
        origin=stack.urls["platform"],
    )
    try:
        rejected = await refusal(blind, token)
    finally:
        await blind.close()
    assert (rejected.reason, rejected.status) == ("jwks_unavailable", 503)
