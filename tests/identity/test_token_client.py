"""The OAuth client a caller's token was issued to (``client_claim``, ``allowed_clients``),
through the running proxy: a token of the right issuer and audience, signed with the
issuer's real key, but issued to another application or not issued as an access token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from identity_helpers import ProxyClient, alice_claims, issuer_table, oidc_overrides
from test_oidc_profiles import TENANT

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack
from settings_support import settings_problems

MakeStack = Callable[..., Awaitable[DemoStack]]
ServeIssuer = Callable[..., Awaitable[DevIssuer]]

CONSOLE_APP = "6e74172b-be56-4843-9ff4-e66a39bb12e3"


async def client_with_table(
    make_stack: MakeStack,
    serve_issuer: ServeIssuer,
    client_for: Callable[[DemoStack], ProxyClient],
    **changes: Any,
) -> tuple[ProxyClient, DevIssuer]:
    issuer = await serve_issuer()
    stack = await make_stack(oidc_overrides(issuer_table(issuer, **changes)))
    return client_for(stack), issuer


async def test_token_naming_no_client_is_refused_when_client_claim_is_set(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    client, issuer = await client_with_table(
        make_stack, serve_issuer, client_for, client_claim="client_id"
    )
    token = issuer.sign(alice_claims(issuer))
    client.assert_refused(await client.get(token), "client_claim_missing")


async def test_token_whose_client_is_not_a_string_is_refused(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    client, issuer = await client_with_table(
        make_stack, serve_issuer, client_for, client_claim="client_id"
    )
    token = issuer.sign(alice_claims(issuer, client_id=["console", "other"]))
    client.assert_refused(await client.get(token), "client_claim_missing")


async def test_token_issued_to_a_client_not_allowed_is_refused(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    # Another application of the same tenant asked the issuer for a token for dragoman.
    client, issuer = await client_with_table(
        make_stack, serve_issuer, client_for, client_claim="azp", allowed_clients=[CONSOLE_APP]
    )
    token = issuer.sign(alice_claims(issuer, azp="11111111-2222-3333-4444-555555555555"))
    client.assert_refused(await client.get(token), "client_not_allowed")


async def test_token_issued_to_an_allowed_client_reaches_the_upstream(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    client, issuer = await client_with_table(
        make_stack, serve_issuer, client_for, client_claim="azp", allowed_clients=[CONSOLE_APP]
    )
    token = issuer.sign(alice_claims(issuer, azp=CONSOLE_APP))
    client.assert_reached_upstream(await client.get(token))


async def test_entra_id_token_of_the_api_app_registration_is_refused(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    # When the API's own app registration also signs users in, its v2.0 ID tokens have the
    # access tokens' iss, aud and typ (JWT); only the missing azp (and scp) tells them apart.
    issuer = await serve_issuer()
    table = {
        "name": "entra",
        "audiences": ["dragoman"],
        "profile": "entra",
        "tenant": TENANT,
        "issuer": issuer.issuer,
    }
    client = client_for(await make_stack(oidc_overrides(table)))
    id_token = issuer.claims(
        "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        None,
        roles=["billing_admin"],
        oid="00000000-0000-0000-66f3-3332eca7ea81",
        tid=TENANT,
        nonce="n-0S6_WzA2Mj",
        ver="2.0",
    )
    token = issuer.sign(id_token, headers={"typ": "JWT"})
    client.assert_refused(await client.get(token), "client_claim_missing")


def test_allowed_clients_without_client_claim_is_a_settings_error_naming_the_key(
    tmp_path: Path,
) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["identity"]["oidc"][0]["allowed_clients"] = [CONSOLE_APP]

    problems = settings_problems(tmp_path, edit)
    assert problems["identity.oidc.0"].startswith("allowed_clients: needs client_claim")
