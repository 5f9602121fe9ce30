"""The Authorization header itself: absent, doubled, malformed, oversized."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from identity_helpers import ProxyClient, alice_claims

from dragoman.demo.runner import DemoStack


async def test_request_without_credentials_is_refused(client: ProxyClient) -> None:
    answer = await client.get()
    client.assert_refused(answer, "credentials_missing")
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="dragoman"'


async def test_non_bearer_scheme_is_not_a_credential(client: ProxyClient) -> None:
    answer = await client.get(headers=[("Authorization", "Basic YWxpY2U6c2VjcmV0")])
    client.assert_refused(answer, "credentials_missing")


async def test_two_authorization_headers_are_refused(client: ProxyClient, stack: DemoStack) -> None:
    # Both valid: which one a component reads must never matter, so neither is used.
    first = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    second = stack.issuer.token("bob", "acct-2002", roles=["billing_admin"])
    headers = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
    client.assert_refused(await client.get(headers=headers), "authorization_ambiguous")


async def test_bearer_without_a_credential_is_refused(client: ProxyClient) -> None:
    answer = await client.get(headers=[("Authorization", "Bearer")])
    client.assert_refused(answer, "authorization_malformed")


async def test_bearer_credential_with_inner_spaces_is_refused(
    client: ProxyClient, stack: DemoStack
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    answer = await client.get(headers=[("Authorization", f"Bearer {token} {token}")])
    client.assert_refused(answer, "authorization_malformed")


async def test_bearer_credential_that_is_not_a_jwt_is_refused(client: ProxyClient) -> None:
    client.assert_refused(await client.get("not-a-jwt"), "issuer_unknown")


async def test_invalid_token_answer_names_the_bearer_error(
    client: ProxyClient, stack: DemoStack
) -> None:
    answer = await client.get(stack.issuer.sign(alice_claims(stack.issuer, aud="other")))
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="dragoman", error="invalid_token"'


async def test_bearer_scheme_is_case_insensitive(client: ProxyClient, stack: DemoStack) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    answer = await client.get(headers=[("Authorization", f"bearer {token}")])
    client.assert_reached_upstream(answer)


async def test_token_larger_than_max_token_bytes_is_refused(
    make_stack: Callable[..., Awaitable[DemoStack]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    stack = await make_stack({"identity": {"max_token_bytes": 1024}})
    client = client_for(stack)
    # Validly signed by the issuer: only its size is wrong.
    token = stack.issuer.sign(alice_claims(stack.issuer, padding="x" * 1500))
    assert 1024 < len(token) < 8000
    client.assert_refused(await client.get(token), "token_too_large")


async def test_token_within_max_token_bytes_is_accepted(
    make_stack: Callable[..., Awaitable[DemoStack]],
    client_for: Callable[[DemoStack], ProxyClient],
) -> None:
    stack = await make_stack({"identity": {"max_token_bytes": 1024}})
    client = client_for(stack)
    token = stack.issuer.sign(alice_claims(stack.issuer))
    assert len(token) <= 1024
    client.assert_reached_upstream(await client.get(token))


async def test_a_token_longer_than_aiohttps_default_header_limit_reaches_the_authenticator(
    client: ProxyClient, stack: DemoStack
) -> None:
    # Between aiohttp's default 8190-byte field limit and the default max_token_bytes:
    # accepted, so the limit that applies is dragoman's own (and is audited when refused).
    token = stack.issuer.sign(alice_claims(stack.issuer, padding="x" * 9000))
    assert 8190 < len(token) < 16_384
    client.assert_reached_upstream(await client.get(token))


async def test_a_token_over_max_token_bytes_is_refused_by_dragoman_not_the_parser(
    client: ProxyClient, stack: DemoStack
) -> None:
    token = stack.issuer.sign(alice_claims(stack.issuer, padding="x" * 13_000))
    assert len(token) > 16_384
    client.assert_refused(await client.get(token), "token_too_large")
