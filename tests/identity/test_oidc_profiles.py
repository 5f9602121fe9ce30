"""Provider profiles of ``[[identity.oidc]]``: each local issuer mimics one provider's tokens
(claims and JOSE header), configured with little more than ``profile``."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from identity_helpers import ProxyClient, oidc_overrides

from dragoman.demo.issuer import DevIssuer
from dragoman.demo.runner import DemoStack
from dragoman.settings import OidcIssuerSettings
from settings_support import settings_problems

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

MakeStack = Callable[..., Awaitable[DemoStack]]
ServeIssuer = Callable[..., Awaitable[DevIssuer]]


def header_of(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


async def seen_as(
    make_stack: MakeStack,
    client_for: Callable[[DemoStack], ProxyClient],
    issuer: DevIssuer,
    table: dict[str, Any],
    token: str,
) -> dict[str, Any]:
    stack = await make_stack(
        oidc_overrides({"name": "provider", "audiences": ["dragoman"], **table})
    )
    client = client_for(stack)
    answer = await client.get(token)
    # Authenticated: the account is linked to no customer, so step 4 refuses it (403), and
    # the audit record shows whom step 1 saw.
    assert answer.status == 403, answer.body
    assert answer.body["code"] == "mapping_missing"
    return client.record_of(answer)


def google_token(issuer: DevIssuer) -> str:
    claims = issuer.claims(
        "110169484474386276334",
        None,
        azp="110169484474386276334",
        email="ci-runner@example.com",
        email_verified=True,
        hd="example.com",
    )
    return issuer.sign(claims, headers={"typ": "JWT"})


def github_token(issuer: DevIssuer, sub: str = "repo:octo/app:ref:refs/heads/main") -> str:
    claims = issuer.claims(
        sub,
        None,
        repository="octo/app",
        repository_id="74",
        repository_owner="octo",
        repository_owner_id="65",
        ref="refs/heads/main",
        event_name="push",
        workflow="ci",
        runner_environment="github-hosted",
    )
    return issuer.sign(claims, headers={"typ": "JWT"})


async def test_google_identity_token_maps_sub_and_hosted_domain(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    issuer = await serve_issuer()
    table = {"profile": "google", "issuer": issuer.issuer}
    body = await seen_as(make_stack, client_for, issuer, table, google_token(issuer))
    assert (body["principal"], body["cloud_account"]) == ("110169484474386276334", "example.com")


async def test_entra_access_token_maps_oid_and_tid(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    issuer = await serve_issuer()
    claims = issuer.claims(
        "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        None,
        roles=["viewer"],
        oid="00000000-0000-0000-66f3-3332eca7ea81",
        tid=TENANT,
        azp="6e74172b-be56-4843-9ff4-e66a39bb12e3",
        scp="access_as_user",
        ver="2.0",
    )
    token = issuer.sign(claims, headers={"typ": "JWT"})
    table = {"profile": "entra", "tenant": TENANT, "issuer": issuer.issuer}
    body = await seen_as(make_stack, client_for, issuer, table, token)
    assert (body["principal"], body["cloud_account"]) == (
        "00000000-0000-0000-66f3-3332eca7ea81",
        TENANT,
    )


async def test_kubernetes_token_without_typ_maps_sub_and_nested_namespace(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    issuer = await serve_issuer()
    claims = issuer.claims(
        "system:serviceaccount:payments:console",
        None,
        **{
            "kubernetes.io": {
                "namespace": "payments",
                "serviceaccount": {"name": "console", "uid": "f0e1d2c3"},
                "pod": {"name": "console-7d9f", "uid": "a1b2c3d4"},
            }
        },
    )
    token = issuer.sign(claims, headers={"typ": None})
    assert "typ" not in header_of(token)
    table = {"profile": "kubernetes", "issuer": issuer.issuer}
    body = await seen_as(make_stack, client_for, issuer, table, token)
    assert (body["principal"], body["cloud_account"]) == (
        "system:serviceaccount:payments:console",
        "payments",
    )


@pytest.mark.parametrize(
    "sub",
    [
        "repo:octo/app:ref:refs/heads/main",
        # GitHub's immutable subject format (default for repositories created after 2026-07-15).
        "repo:octo@65/app@74:ref:refs/heads/main",
    ],
)
async def test_github_actions_token_maps_sub_and_owner_id(
    make_stack: MakeStack,
    serve_issuer: ServeIssuer,
    client_for: Callable[[DemoStack], ProxyClient],
    sub: str,
) -> None:
    issuer = await serve_issuer()
    table = {"profile": "github-actions", "issuer": issuer.issuer}
    body = await seen_as(make_stack, client_for, issuer, table, github_token(issuer, sub))
    assert (body["principal"], body["cloud_account"]) == (sub, "65")


async def test_explicit_claim_overrides_the_profile(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    issuer = await serve_issuer()
    table = {
        "profile": "github-actions",
        "issuer": issuer.issuer,
        "account_claim": "repository_owner",
    }
    body = await seen_as(make_stack, client_for, issuer, table, github_token(issuer))
    assert body["cloud_account"] == "octo"


async def test_google_profile_refuses_a_token_without_typ(
    make_stack: MakeStack, serve_issuer: ServeIssuer, client_for: Callable[[DemoStack], ProxyClient]
) -> None:
    issuer = await serve_issuer()
    table = {"name": "provider", "audiences": ["dragoman"], "profile": "google"}
    stack = await make_stack(oidc_overrides({**table, "issuer": issuer.issuer}))
    client = client_for(stack)
    token = issuer.sign(issuer.claims("110169484474386276334", None), headers={"typ": None})
    client.assert_refused(await client.get(token), "typ_not_allowed")


@pytest.mark.parametrize(
    ("profile", "issuer"),
    [
        ("google", "https://accounts.google.com"),
        ("github-actions", "https://token.actions.githubusercontent.com"),
    ],
)
def test_fixed_issuer_profile_fills_in_the_issuer(profile: str, issuer: str) -> None:
    config = OidcIssuerSettings(name="p", profile=profile, audiences=["dragoman"])  # type: ignore[arg-type]
    assert config.issuer == issuer
    assert config.algorithms == ["RS256"]


def test_entra_issuer_is_built_from_the_tenant() -> None:
    config = OidcIssuerSettings(
        name="p",
        profile="entra",
        tenant=TENANT.upper(),
        audiences=["api://dragoman"],
    )
    assert config.issuer == f"https://login.microsoftonline.com/{TENANT}/v2.0"


def test_entra_profile_accepts_continuous_access_evaluation_lifetimes() -> None:
    # CAE access tokens live up to 28 hours; other issuers keep the one-day cap.
    entra = OidcIssuerSettings(name="p", profile="entra", tenant=TENANT, audiences=["a"])
    google = OidcIssuerSettings(name="g", profile="google", audiences=["a"])
    assert (entra.max_token_lifetime, google.max_token_lifetime) == (30 * 3600, 86_400)


def problems_with(tmp_path: Path, table: dict[str, Any]) -> dict[str, str]:
    def edit(data: dict[str, Any]) -> None:
        data["identity"]["oidc"] = [{"name": "provider", "audiences": ["dragoman"], **table}]

    return settings_problems(tmp_path, edit)


def test_unknown_profile_is_a_settings_error_naming_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"profile": "okta"})
    assert problems["identity.oidc.0"].startswith("profile: unknown profile 'okta'")


def test_entra_without_tenant_is_a_settings_error_naming_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"profile": "entra"})
    assert problems["identity.oidc.0"].startswith("tenant: profile 'entra' needs")


def test_kubernetes_without_issuer_is_a_settings_error_naming_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"profile": "kubernetes"})
    assert problems["identity.oidc.0"].startswith("issuer: profile 'kubernetes' needs")
