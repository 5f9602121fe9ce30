"""Attacks on the JOSE header of the caller's token, through the running proxy.

Each test forges a token the way an attacker would (SEMANTICS §2 "Rejected always"), sends
it through the proxy and expects 401 ``unauthenticated`` with the exact audit reason, and an
upstream that saw nothing.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from identity_helpers import (
    ProxyClient,
    alice_claims,
    b64url,
    es256_signer,
    forge,
    issuer_table,
    oidc_overrides,
    rs256_signer,
)

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack


def rsa_header(issuer: DevIssuer, **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": issuer.rsa_kid, "typ": "at+jwt", **extra}


def self_signed_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "login.attacker.example")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


# -- algorithms -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(client: ProxyClient, stack: DemoStack, alg: str) -> None:
    token = forge(rsa_header(stack.issuer, alg=alg), alice_claims(stack.issuer), signer=None)
    client.assert_refused(await client.get(token), "alg_not_allowed")


async def test_alg_none_built_by_pyjwt_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    token = jwt.encode(
        alice_claims(stack.issuer),
        None,
        algorithm="none",
        headers={"kid": stack.issuer.rsa_kid, "typ": "at+jwt"},
    )
    client.assert_refused(await client.get(token), "alg_not_allowed")


async def test_hs256_keyed_with_the_issuers_public_key_pem_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    pem = stack.issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = forge(
        rsa_header(stack.issuer, alg="HS256"),
        alice_claims(stack.issuer),
        signer=lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    client.assert_refused(await client.get(token), "alg_not_allowed")


async def test_hs256_keyed_with_the_issuers_jwk_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    published = json.dumps(stack.issuer.jwks()["keys"][0], separators=(",", ":")).encode()
    token = forge(
        rsa_header(stack.issuer, alg="HS256"),
        alice_claims(stack.issuer),
        signer=lambda data: hmac.new(published, data, hashlib.sha256).digest(),
    )
    client.assert_refused(await client.get(token), "alg_not_allowed")


async def test_algorithm_outside_the_issuers_allow_list_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    # PS256 with the issuer's real RSA key: a valid signature, but not an algorithm this
    # issuer is configured for (RS256, ES256).
    token = jwt.encode(
        alice_claims(stack.issuer),
        stack.issuer.rsa_key,
        algorithm="PS256",
        headers={"kid": stack.issuer.rsa_kid, "typ": "at+jwt"},
    )
    client.assert_refused(await client.get(token), "alg_not_allowed")


# -- keys -------------------------------------------------------------------------------------


async def test_attacker_key_under_the_issuers_rsa_kid_is_refused(
    client: ProxyClient, stack: DemoStack, attacker_rsa: rsa.RSAPrivateKey
) -> None:
    token = forge(rsa_header(stack.issuer), alice_claims(stack.issuer), rs256_signer(attacker_rsa))
    client.assert_refused(await client.get(token), "signature_invalid")


async def test_attacker_key_under_the_issuers_ec_kid_is_refused(
    client: ProxyClient, stack: DemoStack, attacker_ec: ec.EllipticCurvePrivateKey
) -> None:
    header = {"alg": "ES256", "kid": stack.issuer.ec_kid, "typ": "at+jwt"}
    token = forge(header, alice_claims(stack.issuer), es256_signer(attacker_ec))
    client.assert_refused(await client.get(token), "signature_invalid")


async def test_tampered_claims_under_a_genuine_signature_are_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    genuine = stack.issuer.sign(stack.issuer.claims("mallory", "acct-9999", roles=["viewer"]))
    header, _, signature = genuine.split(".")
    claims = alice_claims(stack.issuer)
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    client.assert_refused(await client.get(f"{header}.{payload}.{signature}"), "signature_invalid")


async def test_es256_token_naming_the_rsa_key_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    header = {"alg": "ES256", "kid": stack.issuer.rsa_kid, "typ": "at+jwt"}
    token = forge(header, alice_claims(stack.issuer), es256_signer(stack.issuer.ec_key))
    client.assert_refused(await client.get(token), "key_mismatch")


async def test_rs256_token_naming_the_ec_key_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    header = {"alg": "RS256", "kid": stack.issuer.ec_kid, "typ": "at+jwt"}
    token = forge(header, alice_claims(stack.issuer), rs256_signer(stack.issuer.rsa_key))
    client.assert_refused(await client.get(token), "key_mismatch")


async def test_es256_signed_with_a_p384_key_of_the_issuer_is_refused(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    # The issuer publishes a P-384 key labelled ES256: the curve does not fit the algorithm,
    # so even its own signature must not be accepted.
    issuer = await serve_issuer(ec_key=ec.generate_private_key(ec.SECP384R1()))
    stack = await make_stack(oidc_overrides(issuer_table(issuer)))
    client = client_for(stack)
    header = {"alg": "ES256", "kid": issuer.ec_kid, "typ": "at+jwt"}
    token = forge(header, alice_claims(issuer), es256_signer(issuer.ec_key))
    client.assert_refused(await client.get(token), "key_mismatch")


async def test_missing_kid_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    token = forge(
        {"alg": "RS256", "typ": "at+jwt"},
        alice_claims(stack.issuer),
        rs256_signer(stack.issuer.rsa_key),
    )
    client.assert_refused(await client.get(token), "kid_missing")


# -- headers that locate or carry a key -----------------------------------------------------


async def test_jku_header_is_refused_and_never_fetched(
    client: ProxyClient,
    stack: DemoStack,
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
) -> None:
    attacker = await serve_issuer()
    header = {
        "alg": "RS256",
        "kid": attacker.rsa_kid,
        "typ": "at+jwt",
        "jku": f"{attacker.issuer}/jwks.json",
    }
    token = forge(header, alice_claims(stack.issuer), rs256_signer(attacker.rsa_key))
    client.assert_refused(await client.get(token), "header_forbidden")
    assert attacker.jwks_fetches == 0


async def test_x5u_header_is_refused_and_never_fetched(
    client: ProxyClient,
    stack: DemoStack,
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
) -> None:
    attacker = await serve_issuer()
    header = {
        "alg": "RS256",
        "kid": stack.issuer.rsa_kid,
        "typ": "at+jwt",
        "x5u": f"{attacker.issuer}/jwks.json",
    }
    token = forge(header, alice_claims(stack.issuer), rs256_signer(attacker.rsa_key))
    client.assert_refused(await client.get(token), "header_forbidden")
    assert attacker.jwks_fetches == 0


async def test_embedded_jwk_header_is_refused(
    client: ProxyClient, stack: DemoStack, attacker_rsa: rsa.RSAPrivateKey
) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker_rsa.public_key()))
    header = rsa_header(stack.issuer, jwk={**jwk, "kid": stack.issuer.rsa_kid})
    token = forge(header, alice_claims(stack.issuer), rs256_signer(attacker_rsa))
    client.assert_refused(await client.get(token), "header_forbidden")


async def test_x5c_header_is_refused(
    client: ProxyClient, stack: DemoStack, attacker_rsa: rsa.RSAPrivateKey
) -> None:
    der = self_signed_certificate(attacker_rsa)
    header = rsa_header(stack.issuer, x5c=[base64.b64encode(der).decode("ascii")])
    token = forge(header, alice_claims(stack.issuer), rs256_signer(attacker_rsa))
    client.assert_refused(await client.get(token), "header_forbidden")


@pytest.mark.parametrize("name", ["x5t", "x5t#S256"])
async def test_certificate_thumbprint_header_is_refused(
    client: ProxyClient, stack: DemoStack, name: str
) -> None:
    # Even on a token the issuer really signed: the header would let the token pick a key.
    header = rsa_header(stack.issuer, **{name: b64url(secrets.token_bytes(32))})
    token = forge(header, alice_claims(stack.issuer), rs256_signer(stack.issuer.rsa_key))
    client.assert_refused(await client.get(token), "header_forbidden")


async def test_crit_header_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    # ``crit`` naming an extension the reader knows (b64, left at its default): still refused,
    # the proxy supports no critical extension at all.
    header = rsa_header(stack.issuer, crit=["b64"], b64=True)
    token = forge(header, alice_claims(stack.issuer), rs256_signer(stack.issuer.rsa_key))
    client.assert_refused(await client.get(token), "header_forbidden")


async def test_crit_header_naming_an_unknown_extension_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    # Unreadable even for routing by ``iss``, so no issuer claims it.
    header = rsa_header(stack.issuer, crit=["https://attacker.example/skip-exp"])
    token = forge(header, alice_claims(stack.issuer), rs256_signer(stack.issuer.rsa_key))
    client.assert_refused(await client.get(token), "issuer_unknown")


async def test_unencoded_payload_header_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    # RFC 7797 b64=false: the payload would be signed raw; unreadable for routing.
    header = rsa_header(stack.issuer, b64=False, crit=["b64"])
    token = forge(header, alice_claims(stack.issuer), rs256_signer(stack.issuer.rsa_key))
    client.assert_refused(await client.get(token), "issuer_unknown")


# -- typ --------------------------------------------------------------------------------------


async def test_id_token_typ_is_refused_where_only_access_tokens_are_accepted(
    client: ProxyClient, stack: DemoStack
) -> None:
    token = stack.issuer.sign(alice_claims(stack.issuer), headers={"typ": "JWT"})
    client.assert_refused(await client.get(token), "typ_not_allowed")


async def test_missing_typ_is_refused_by_default(client: ProxyClient, stack: DemoStack) -> None:
    header = {"alg": "RS256", "kid": stack.issuer.rsa_kid}
    token = forge(header, alice_claims(stack.issuer), rs256_signer(stack.issuer.rsa_key))
    client.assert_refused(await client.get(token), "typ_not_allowed")


async def test_id_token_typ_is_accepted_where_the_issuer_allows_it(
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve_issuer: Callable[..., Awaitable[DevIssuer]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    issuer = await serve_issuer()
    table = issuer_table(issuer, accepted_types=["at+jwt", "JWT"])
    stack = await make_stack(oidc_overrides(table))
    client = client_for(stack)
    token = issuer.sign(alice_claims(issuer), headers={"typ": "JWT"})
    client.assert_reached_upstream(await client.get(token))


async def test_access_token_typ_with_media_type_prefix_is_accepted(
    client: ProxyClient, stack: DemoStack
) -> None:
    token = stack.issuer.sign(alice_claims(stack.issuer), headers={"typ": "application/AT+JWT"})
    client.assert_reached_upstream(await client.get(token))


# -- shape ------------------------------------------------------------------------------------


async def test_jwe_shaped_token_is_refused(client: ProxyClient, stack: DemoStack) -> None:
    header = b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode())
    parts = [header] + [b64url(secrets.token_bytes(16)) for _ in range(4)]
    client.assert_refused(await client.get(".".join(parts)), "issuer_unknown")


async def test_token_whose_claims_are_not_an_object_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    header = rsa_header(stack.issuer)
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(b'[1,2,3]')}"
    signature = rs256_signer(stack.issuer.rsa_key)(signing_input.encode())
    token = f"{signing_input}.{b64url(signature)}"
    client.assert_refused(await client.get(token), "issuer_unknown")
