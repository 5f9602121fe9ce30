"""Several authenticators at once: each says "not mine" apart from "rejected", the first that
applies decides, and a rejection is never handed on to another kind.

The stack runs all three kinds (OIDC, aws-sts against a local STS, mTLS over real TLS).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest
from aiohttp import web
from identity_helpers import ProxyClient, alice_claims
from local_sts import AwsCaller, LocalSts, as_token, link_to_alice, presign
from mtls_support import BILLING, ClientWith, Pki, good_context, mtls_overrides

from dragoman.demo.runner import DemoStack
from dragoman.identity.base import NOT_MINE, NotMine
from dragoman.identity.principal import Principal
from dragoman.identity.stage import AuthenticateStage
from dragoman.pipeline.errors import Unauthenticated

MakeStack = Callable[..., Awaitable[DemoStack]]
ACCOUNT = "111122223333"


@pytest.fixture
def aws_caller() -> AwsCaller:
    return AwsCaller(
        access_key_id="ASIA" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
        session_token=secrets.token_urlsafe(30),
        arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/BillingAdmin/alice",
        account=ACCOUNT,
        user_id="AROA3XFRBF535PLBIFPI4:alice",
    )


@pytest.fixture
async def sts(
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]], aws_caller: AwsCaller
) -> AsyncIterator[tuple[LocalSts, str]]:
    local = LocalSts()
    local.add(aws_caller)
    async with serve(local.app()) as url:
        yield local, url


@pytest.fixture
async def stack(make_stack: MakeStack, pki: Pki, sts: tuple[LocalSts, str]) -> DemoStack:
    overrides = mtls_overrides(pki)
    overrides["identity"]["aws_sts"] = {
        "binding_id": "proxy-test",
        "regions": ["eu-west-1"],
        "connect_to": sts[1],
        "roles": {f"arn:aws:iam::{ACCOUNT}:role/BillingAdmin": ["billing_admin"]},
    }
    stack = await make_stack(overrides)
    await link_to_alice(stack, ACCOUNT)
    return stack


@pytest.fixture
async def with_certificate(stack: DemoStack, pki: Pki, client_with: ClientWith) -> ProxyClient:
    return client_with(stack, good_context(pki))


@pytest.fixture
async def without_certificate(stack: DemoStack, pki: Pki, client_with: ClientWith) -> ProxyClient:
    return client_with(stack, pki.context(None))


def oidc_token(stack: DemoStack, **extra: object) -> str:
    return stack.issuer.sign(alice_claims(stack.issuer, **extra))


# --- each kind is decided by its own authenticator ------------------------------------


async def test_oidc_token_is_decided_by_oidc(without_certificate: ProxyClient) -> None:
    client = without_certificate
    answer = await client.get(oidc_token(client.stack))
    client.assert_reached_upstream(answer)
    assert client.record_of(answer)["authenticator"] == "console"


async def test_aws_credential_is_decided_by_aws_sts(
    without_certificate: ProxyClient, aws_caller: AwsCaller
) -> None:
    client = without_certificate
    answer = await client.get(as_token(presign(aws_caller)))
    client.assert_reached_upstream(answer)
    assert client.record_of(answer)["authenticator"] == "aws"


async def test_client_certificate_alone_is_decided_by_mtls(with_certificate: ProxyClient) -> None:
    answer = await with_certificate.get()
    with_certificate.assert_reached_upstream(answer)
    assert with_certificate.record_of(answer)["principal"] == BILLING


async def test_aws_credential_over_a_certified_connection_is_the_aws_principal(
    with_certificate: ProxyClient, aws_caller: AwsCaller
) -> None:
    answer = await with_certificate.get(as_token(presign(aws_caller)))
    with_certificate.assert_reached_upstream(answer)
    assert with_certificate.record_of(answer)["authenticator"] == "aws"


# --- a rejection is final ----------------------------------------------------------------


async def test_rejected_aws_credential_is_not_tried_as_a_jwt(
    without_certificate: ProxyClient, sts: tuple[LocalSts, str], aws_caller: AwsCaller
) -> None:
    url = presign(aws_caller).replace("Action=GetCallerIdentity", "Action=AssumeRole")
    answer = await without_certificate.get(as_token(url))
    without_certificate.assert_refused(answer, "aws_action_not_allowed")
    assert sts[0].calls == []


async def test_expired_oidc_token_is_not_replaced_by_the_connections_certificate(
    with_certificate: ProxyClient,
) -> None:
    token = oidc_token(with_certificate.stack, ttl=-120)
    with_certificate.assert_refused(await with_certificate.get(token), "token_expired")


async def test_aws_credential_refused_by_sts_is_not_replaced_by_the_certificate(
    with_certificate: ProxyClient, aws_caller: AwsCaller
) -> None:
    token = as_token(presign(aws_caller, binding="another-deployment"))
    with_certificate.assert_refused(await with_certificate.get(token), "aws_sts_rejected")


async def test_unknown_issuers_token_with_a_good_certificate_is_refused(
    with_certificate: ProxyClient, serve_issuer: Callable[..., Awaitable[object]]
) -> None:
    stranger = await serve_issuer()
    token = stranger.sign(alice_claims(stranger))  # type: ignore[attr-defined]
    with_certificate.assert_refused(await with_certificate.get(token), "issuer_unknown")


async def test_no_credential_and_no_certificate_is_credentials_missing(
    without_certificate: ProxyClient,
) -> None:
    without_certificate.assert_refused(await without_certificate.get(), "credentials_missing")


# --- the stage's rule, with authenticators that record whether they were asked ------------


class Recording:
    def __init__(self, name: str, outcome: Principal | NotMine | Unauthenticated) -> None:
        self.name = name
        self.outcome = outcome
        self.asked = 0

    async def authenticate(self, request: web.Request) -> Principal | NotMine:
        self.asked += 1
        if isinstance(self.outcome, Unauthenticated):
            raise self.outcome
        return self.outcome

    async def close(self) -> None:
        return None


class Context:
    def __init__(self) -> None:
        self.request: object = None
        self.principal: Principal | None = None


PRINCIPAL = Principal(subject="s", cloud_account="a", issuer="i", authenticator="second")


async def test_authenticators_after_a_rejection_are_never_asked() -> None:
    first = Recording("first", Unauthenticated("forged", "no"))
    second = Recording("second", PRINCIPAL)
    with pytest.raises(Unauthenticated):
        await AuthenticateStage([first, second])(Context())  # type: ignore[arg-type]
    assert (first.asked, second.asked) == (1, 0)


async def test_not_mine_hands_the_request_to_the_next_authenticator() -> None:
    first = Recording("first", NOT_MINE)
    second = Recording("second", PRINCIPAL)
    context = Context()
    await AuthenticateStage([first, second])(context)  # type: ignore[arg-type]
    assert context.principal is PRINCIPAL
    assert (first.asked, second.asked) == (1, 1)
