"""The aws-sts authenticator, through the running proxy, against a local STS on 127.0.0.1.

Every tampered presigned request must be refused before STS is asked anything (the local
STS records each call); a good one is confirmed by STS and its ARN mapped to the principal.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiohttp import web
from identity_helpers import PM, Answer, ProxyClient, alice_claims
from local_sts import AwsCaller, LocalSts, as_token, link_to_alice, presign

from dragoman.demo.runner import DemoStack
from dragoman.identity.aws_sts import MAX_STS_CALLS, REFUSAL_TTL

ACCOUNT = "111122223333"
BINDING = "proxy-test"

MakeStack = Callable[..., Awaitable[DemoStack]]


def fake_secret() -> str:
    return secrets.token_urlsafe(30)


@pytest.fixture
def role_caller() -> AwsCaller:
    """Temporary credentials of an assumed-role session (an SSO sign-in, say)."""
    return AwsCaller(
        access_key_id="ASIA" + secrets.token_hex(8).upper(),
        secret_access_key=fake_secret(),
        session_token=fake_secret(),
        arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/BillingAdmin/alice@example.com",
        account=ACCOUNT,
        user_id="AROA3XFRBF535PLBIFPI4:alice@example.com",
    )


@pytest.fixture
def user_caller() -> AwsCaller:
    return AwsCaller(
        access_key_id="AKIA" + secrets.token_hex(8).upper(),
        secret_access_key=fake_secret(),
        arn=f"arn:aws:iam::{ACCOUNT}:user/ci/deployer",
        account=ACCOUNT,
        user_id="AIDA3XFRBF535PLBIFPI4",
    )


@pytest.fixture
async def sts(
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
    role_caller: AwsCaller,
    user_caller: AwsCaller,
) -> AsyncIterator[tuple[LocalSts, str]]:
    local = LocalSts()
    local.add(role_caller)
    local.add(user_caller)
    async with serve(local.app()) as url:
        yield local, url


class Clock:
    """The proxy's clock, which a test can move."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def aws_stack(
    make_stack: MakeStack, sts: tuple[LocalSts, str], clock: Clock
) -> Callable[..., Awaitable[DemoStack]]:
    async def make(**settings: Any) -> DemoStack:
        table = {
            "binding_id": BINDING,
            "regions": ["eu-west-1", "us-east-1"],
            "connect_to": sts[1],
            "roles": {f"arn:aws:iam::{ACCOUNT}:role/Billing*": ["billing_admin"]},
            **settings,
        }
        stack = await make_stack({"identity": {"aws_sts": table}}, clock=clock)
        await link_to_alice(stack, ACCOUNT)
        return stack

    return make


@pytest.fixture
async def client(
    aws_stack: Callable[..., Awaitable[DemoStack]], client_for: Callable[[DemoStack], ProxyClient]
) -> ProxyClient:
    return client_for(await aws_stack())


def forged(url: str) -> str:
    """The presigned URL with a made-up signature: passes every local check, not STS's."""
    return url[:-64] + secrets.token_hex(32)


def refused_before_sts(client: ProxyClient, sts: LocalSts, answer: Answer, reason: str) -> None:
    client.assert_refused(answer, reason)
    assert sts.calls == []


# --- accepted ------------------------------------------------------------------------


async def test_assumed_role_session_reaches_the_upstream_as_its_role(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    answer = await client.get(as_token(presign(role_caller)))
    client.assert_reached_upstream(answer)
    record = client.record_of(answer)
    assert record["principal"] == f"arn:aws:iam::{ACCOUNT}:role/BillingAdmin"
    assert record["cloud_account"] == ACCOUNT
    assert record["authenticator"] == "aws"


async def test_sts_is_asked_at_the_signed_host_with_the_binding_header(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    url = presign(role_caller)
    await client.get(as_token(url))
    (call,) = sts[0].calls
    assert call["host"] == "sts.eu-west-1.amazonaws.com"
    assert call["binding"] == BINDING
    assert call["query"] == url.partition("?")[2]
    assert call["accept"] == "application/json"


async def test_iam_user_is_its_own_principal_without_roles(
    client: ProxyClient, user_caller: AwsCaller
) -> None:
    answer = await client.get(as_token(presign(user_caller)))
    # Authenticated, but the user has no role the mapping grants anything to.
    assert answer.status == 403, answer.body
    record = client.record_of(answer)
    assert record["principal"] == f"arn:aws:iam::{ACCOUNT}:user/ci/deployer"
    assert record["code"] == "scope_denied"


async def test_sts_answer_is_reused_for_the_same_presigned_request(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    token = as_token(presign(role_caller))
    for _ in range(3):
        client.assert_reached_upstream(await client.get(token))
    assert len(sts[0].calls) == 1


async def test_concurrent_requests_with_one_presigned_request_share_one_sts_call(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    sts[0].stall = 0.3
    token = as_token(presign(role_caller))
    answers = await asyncio.gather(*(client.get(token) for _ in range(5)))
    assert [a.status for a in answers] == [200] * 5
    assert len(sts[0].calls) == 1


async def test_remembered_answer_is_not_used_past_the_presigned_expiry(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller, clock: Clock
) -> None:
    token = as_token(presign(role_caller, expires=30))
    client.assert_reached_upstream(await client.get(token))
    clock.offset = 31
    client.stack.platform.seen.clear()
    client.assert_refused(await client.get(token), "aws_presign_expired")


# --- refused before STS is asked -------------------------------------------------------


def replace_in_query(url: str, old: str, new: str) -> str:
    assert old in url
    return url.replace(old, new)


TAMPERINGS: list[tuple[str, Callable[[str], str], str]] = [
    (
        "other_host",
        lambda u: u.replace("sts.eu-west-1.amazonaws.com", "sts.example.com"),
        "aws_sts_endpoint_not_allowed",
    ),
    (
        "lookalike_host",
        lambda u: u.replace("amazonaws.com/", "amazonaws.com.example.com/"),
        "aws_sts_endpoint_not_allowed",
    ),
    (
        "host_with_port",
        lambda u: u.replace("amazonaws.com/", "amazonaws.com:8443/"),
        "aws_sts_endpoint_not_allowed",
    ),
    (
        "host_with_user_info",
        lambda u: u.replace("https://", "https://evil@"),
        "aws_sts_endpoint_not_allowed",
    ),
    ("plain_http", lambda u: u.replace("https://", "http://"), "aws_sts_endpoint_not_allowed"),
    (
        "other_action",
        lambda u: replace_in_query(u, "Action=GetCallerIdentity", "Action=AssumeRole"),
        "aws_action_not_allowed",
    ),
    (
        "extra_parameter",
        lambda u: u + "&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2FAdmin",
        "aws_parameter_not_allowed",
    ),
    (
        "parameter_twice",
        lambda u: u + "&Action=GetCallerIdentity",
        "aws_token_malformed",
    ),
    (
        "parameter_twice_in_another_case",
        lambda u: u + "&action=GetCallerIdentity",
        "aws_parameter_not_allowed",
    ),
    ("other_path", lambda u: u.replace(".com/?", ".com/admin?"), "aws_token_malformed"),
    ("fragment", lambda u: u + "#x", "aws_token_malformed"),
    (
        "expires_over_15_minutes",
        lambda u: replace_in_query(u, "X-Amz-Expires=60", "X-Amz-Expires=3600"),
        "aws_expires_too_long",
    ),
    (
        "signature_not_hex",
        lambda u: u[:-4] + "zzzz",
        "aws_token_malformed",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "reason"), [(t, r) for _, t, r in TAMPERINGS], ids=[n for n, _, _ in TAMPERINGS]
)
async def test_tampered_presigned_url_is_refused_without_calling_sts(
    client: ProxyClient,
    sts: tuple[LocalSts, str],
    role_caller: AwsCaller,
    tamper: Callable[[str], str],
    reason: str,
) -> None:
    url = tamper(presign(role_caller))
    refused_before_sts(client, sts[0], await client.get(as_token(url)), reason)


async def test_region_outside_the_list_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    url = presign(role_caller, region="ap-southeast-2")
    answer = await client.get(as_token(url))
    refused_before_sts(client, sts[0], answer, "aws_sts_endpoint_not_allowed")


async def test_signed_for_another_region_than_its_host_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    # Both regions are allowed; the signature's scope must still be its host's.
    url = presign(role_caller, region="us-east-1", host="sts.eu-west-1.amazonaws.com")
    answer = await client.get(as_token(url))
    refused_before_sts(client, sts[0], answer, "aws_sts_endpoint_not_allowed")


async def test_global_endpoint_is_refused_unless_allowed(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    url = presign(role_caller, region="us-east-1", host="sts.amazonaws.com")
    answer = await client.get(as_token(url))
    refused_before_sts(client, sts[0], answer, "aws_sts_endpoint_not_allowed")


async def test_global_endpoint_is_accepted_when_allowed(
    aws_stack: Callable[..., Awaitable[DemoStack]],
    client_for: Callable[[DemoStack], ProxyClient],
    sts: tuple[LocalSts, str],
    role_caller: AwsCaller,
) -> None:
    client = client_for(await aws_stack(allow_global_endpoint=True))
    url = presign(role_caller, region="us-east-1", host="sts.amazonaws.com")
    client.assert_reached_upstream(await client.get(as_token(url)))
    assert sts[0].calls[0]["host"] == "sts.amazonaws.com"


async def test_expired_presigned_request_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller, clock: Clock
) -> None:
    token = as_token(presign(role_caller, expires=60))
    clock.offset = 61
    refused_before_sts(client, sts[0], await client.get(token), "aws_presign_expired")


async def test_presigned_request_older_than_max_age_is_refused_without_calling_sts(
    aws_stack: Callable[..., Awaitable[DemoStack]],
    client_for: Callable[[DemoStack], ProxyClient],
    sts: tuple[LocalSts, str],
    role_caller: AwsCaller,
    clock: Clock,
) -> None:
    client = client_for(await aws_stack(max_age="2m"))
    token = as_token(presign(role_caller, expires=900))
    clock.offset = 121
    refused_before_sts(client, sts[0], await client.get(token), "aws_presign_expired")


async def test_future_dated_presigned_request_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    token = as_token(presign(role_caller, signed_in=120))
    refused_before_sts(client, sts[0], await client.get(token), "aws_presign_not_yet_valid")


async def test_clock_skew_within_leeway_is_accepted(
    client: ProxyClient, role_caller: AwsCaller
) -> None:
    token = as_token(presign(role_caller, signed_in=20))
    client.assert_reached_upstream(await client.get(token))


async def test_missing_binding_header_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    token = as_token(presign(role_caller, binding=None))
    refused_before_sts(client, sts[0], await client.get(token), "aws_binding_missing")


async def test_token_presigned_for_a_kubernetes_cluster_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    # aws-iam-authenticator's binding header: a token for an EKS cluster is not ours.
    token = as_token(presign(role_caller, binding="prod", binding_header="x-k8s-aws-id"))
    refused_before_sts(client, sts[0], await client.get(token), "aws_binding_missing")


async def test_other_signed_headers_are_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    url = replace_in_query(
        presign(role_caller),
        "X-Amz-SignedHeaders=host%3Bx-dragoman-id",
        "X-Amz-SignedHeaders=host%3Bx-dragoman-id%3Bx-k8s-aws-id",
    )
    answer = await client.get(as_token(url))
    refused_before_sts(client, sts[0], answer, "aws_signed_headers_not_allowed")


@pytest.mark.parametrize(
    "token",
    [
        "dragoman-aws-v1.",
        "dragoman-aws-v1.%%%%",
        "dragoman-aws-v1."
        + base64.urlsafe_b64encode(b"https://sts.eu-west-1.amazonaws.com/?").decode(),
        "dragoman-aws-v1."
        + base64.urlsafe_b64encode("https://stś.example/".encode()).decode().rstrip("="),
    ],
    ids=["empty", "not_base64", "padded", "not_ascii"],
)
async def test_malformed_aws_credential_is_refused_without_calling_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], token: str
) -> None:
    refused_before_sts(client, sts[0], await client.get(token), "aws_token_malformed")


# --- refused or unavailable after asking STS -------------------------------------------


async def test_presigned_for_another_binding_value_is_refused_by_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    # Signed for another dragoman deployment: the header value is inside the signature.
    token = as_token(presign(role_caller, binding="staging-proxy"))
    client.assert_refused(await client.get(token), "aws_sts_rejected")
    assert len(sts[0].calls) == 1


async def test_forged_signature_is_refused_by_sts(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    client.assert_refused(
        await client.get(as_token(forged(presign(role_caller)))), "aws_sts_rejected"
    )


async def test_unknown_access_key_is_refused_by_sts(
    client: ProxyClient, role_caller: AwsCaller
) -> None:
    stranger = AwsCaller("AKIA" + secrets.token_hex(8).upper(), fake_secret(), "", "", "")
    client.assert_refused(await client.get(as_token(presign(stranger))), "aws_sts_rejected")


async def test_sts_throttling_is_503_with_retry_after_never_an_allow(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    sts[0].throttle = 1
    answer = await client.get(as_token(presign(role_caller)))
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == "aws_sts_throttled"
    assert answer.headers["Retry-After"] == "2"


async def test_sts_failure_is_503_and_not_remembered(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    sts[0].fail = 1
    token = as_token(presign(role_caller))
    answer = await client.get(token)
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == "aws_sts_unavailable"
    client.assert_reached_upstream(await client.get(token))


async def test_forged_credential_sent_repeatedly_reaches_sts_once(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    token = as_token(forged(presign(role_caller)))
    for _ in range(5):
        client.assert_refused(await client.get(token), "aws_sts_rejected")
    assert len(sts[0].calls) == 1


async def test_refusal_is_not_remembered_past_its_bound(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller, clock: Clock
) -> None:
    token = as_token(forged(presign(role_caller, expires=900)))
    client.assert_refused(await client.get(token), "aws_sts_rejected")
    clock.offset = REFUSAL_TTL - 1
    client.assert_refused(await client.get(token), "aws_sts_rejected")
    assert len(sts[0].calls) == 1
    clock.offset = REFUSAL_TTL + 1
    client.assert_refused(await client.get(token), "aws_sts_rejected")
    assert len(sts[0].calls) == 2


async def test_refusal_is_not_remembered_past_the_presigned_expiry(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller, clock: Clock
) -> None:
    token = as_token(forged(presign(role_caller, expires=30)))
    client.assert_refused(await client.get(token), "aws_sts_rejected")
    clock.offset = 29
    client.assert_refused(await client.get(token), "aws_sts_rejected")
    assert len(sts[0].calls) == 1
    clock.offset = 31
    client.assert_refused(await client.get(token), "aws_presign_expired")
    assert len(sts[0].calls) == 1


@pytest.mark.parametrize(
    ("outage", "reason"),
    [
        ("throttle", "aws_sts_throttled"),
        ("fail", "aws_sts_unavailable"),
        ("drop", "aws_sts_unavailable"),
    ],
    ids=["throttled", "failing", "connection_lost"],
)
async def test_network_error_or_throttling_is_not_remembered(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller, outage: str, reason: str
) -> None:
    local = sts[0]
    token = as_token(forged(presign(role_caller)))
    setattr(local, outage, 2)  # 2: aiohttp may retry a GET whose connection was lost
    answer = await client.get(token)
    setattr(local, outage, 0)
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == reason
    before = len(local.calls)
    # Asked again, STS refuses the forged signature: that refusal is remembered.
    for _ in range(2):
        client.assert_refused(await client.get(token), "aws_sts_rejected")
    assert len(local.calls) == before + 1


async def test_sts_calls_past_the_limit_are_refused_at_once(
    client: ProxyClient, sts: tuple[LocalSts, str], role_caller: AwsCaller
) -> None:
    local = sts[0]
    local.hold = asyncio.Event()
    url = presign(role_caller)
    try:
        held = [
            asyncio.ensure_future(client.get(as_token(forged(url)))) for _ in range(MAX_STS_CALLS)
        ]
        while len(local.calls) < MAX_STS_CALLS:
            await asyncio.sleep(0.01)
        extra = asyncio.ensure_future(client.get(as_token(forged(url))))
        # Refused while every call before it is still held, or (the defect) sent to STS too.
        while not extra.done() and len(local.calls) == MAX_STS_CALLS:
            await asyncio.sleep(0.01)
        assert len(local.calls) == MAX_STS_CALLS
        answer = await extra
        client.assert_unavailable(answer)
        assert client.record_of(answer)["reason"] == "aws_sts_throttled"
        assert answer.headers["Retry-After"] == "2"
    finally:
        local.hold.set()
    for done in await asyncio.gather(*held):
        client.assert_refused(done, "aws_sts_rejected")
    # The calls have settled: a genuine caller gets through again.
    client.assert_reached_upstream(await client.get(as_token(url)))


async def test_sts_out_of_reach_is_503(
    aws_stack: Callable[..., Awaitable[DemoStack]],
    client_for: Callable[[DemoStack], ProxyClient],
    role_caller: AwsCaller,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    client = client_for(await aws_stack(connect_to=f"http://127.0.0.1:{port}"))
    answer = await client.get(as_token(presign(role_caller)))
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == "aws_sts_unavailable"


async def test_account_outside_the_allowed_accounts_is_refused(
    aws_stack: Callable[..., Awaitable[DemoStack]],
    client_for: Callable[[DemoStack], ProxyClient],
    role_caller: AwsCaller,
) -> None:
    client = client_for(await aws_stack(accounts=["444455556666"]))
    answer = await client.get(as_token(presign(role_caller)))
    client.assert_refused(answer, "aws_account_not_allowed")


# --- beside the other authenticators ---------------------------------------------------


async def test_oidc_bearer_tokens_still_authenticate_beside_aws_sts(
    client: ProxyClient, sts: tuple[LocalSts, str]
) -> None:
    issuer = client.stack.issuer
    answer = await client.get(issuer.sign(alice_claims(issuer)), path=PM)
    client.assert_reached_upstream(answer)
    assert client.record_of(answer)["authenticator"] == "console"
    assert sts[0].calls == []


async def test_aws_credential_without_aws_sts_configured_is_an_unknown_issuer(
    stack: DemoStack, client_for: Callable[[DemoStack], ProxyClient], role_caller: AwsCaller
) -> None:
    client = client_for(stack)
    client.assert_refused(await client.get(as_token(presign(role_caller))), "issuer_unknown")


async def test_presigned_credential_is_never_logged_or_audited(
    client: ProxyClient,
    sts: tuple[LocalSts, str],
    role_caller: AwsCaller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sts[0].fail = 1
    url = presign(role_caller)
    token = as_token(url)
    caplog.set_level(logging.DEBUG)  # from here on: the proxy's logs, not botocore's
    assert (await client.get(token)).status == 503  # logged as a warning
    client.assert_reached_upstream(await client.get(token))
    written = caplog.text + (client.stack.state_dir / "audit.jsonl").read_text("utf-8")
    assert role_caller.session_token is not None
    for secret in (url.rsplit("=", 1)[1], role_caller.session_token, token[16:80]):
        assert secret not in written
