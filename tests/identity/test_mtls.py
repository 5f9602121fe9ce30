"""mTLS workload identity: dragoman terminates TLS and a client certificate (a SPIFFE
X.509-SVID, or a subject matched by pattern) authenticates a service caller.

Every certificate is made at test time (``certs``); the tests talk real HTTPS to the proxy.
A certificate the handshake cannot verify (unknown CA, expired) never reaches the
application; everything else is judged per request by the authenticator and audited.
"""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.x509.oid import NameOID
from identity_helpers import ProxyClient
from mtls_support import BILLING, TRUST_DOMAIN, ClientWith, Pki, good_context, mtls_overrides

from certs import HOUR, name, now
from dragoman.demo.runner import DemoStack
from dragoman.identity.mtls import parse_spiffe_id
from settings_support import settings_problems

MakeStack = Callable[..., Awaitable[DemoStack]]


async def _record(into: list[object], args: tuple[object, ...]) -> None:
    into.append(args)


async def assert_handshake_refused(client: ProxyClient, control: ProxyClient) -> None:
    """The TLS handshake fails (under TLS 1.3 the client sees the server hang up after its
    certificate was refused): nothing reached the proxy's application or the upstream, while
    ``control``, a good certificate on the same stack, gets through."""
    with pytest.raises((aiohttp.ClientConnectionError, ssl.SSLError)):
        await client.get()
    assert client.audit() == []
    assert client.stack.platform.seen == []
    control.assert_reached_upstream(await control.get())


async def test_valid_spiffe_id_reaches_the_upstream(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    assert stack.urls["proxy"].startswith("https://127.0.0.1:")
    client = client_with(stack, pki.context(pki.trusted.issue(BILLING)))
    answer = await client.get()
    client.assert_reached_upstream(answer)
    record = client.record_of(answer)
    assert record["principal"] == BILLING
    assert record["authenticator"] == "mtls"
    assert record["cloud_account"] == "acct-1001"


async def test_wrong_trust_domain_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    # Signed by the trusted CA, but naming another trust domain.
    stack = await make_stack(mtls_overrides(pki))
    issued = pki.trusted.issue("spiffe://staging.example.org/ns/acct-1001/sa/billing")
    client = client_with(stack, pki.context(issued))
    client.assert_refused(await client.get(), "spiffe_trust_domain_not_allowed")


async def test_certificate_of_an_untrusted_ca_fails_the_handshake(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    client = client_with(stack, pki.context(pki.untrusted.issue(BILLING)))
    await assert_handshake_refused(client, client_with(stack, good_context(pki)))


async def test_expired_certificate_fails_the_handshake(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    expired = pki.trusted.issue(
        BILLING, not_before=now() - 3 * HOUR, not_after=now() - datetime.timedelta(minutes=5)
    )
    client = client_with(stack, pki.context(expired))
    await assert_handshake_refused(client, client_with(stack, good_context(pki)))


async def test_certificate_expiring_on_a_kept_alive_connection_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    offset = [0.0]
    stack = await make_stack(mtls_overrides(pki), clock=lambda: time.time() + offset[0])
    connections: list[object] = []
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(lambda *args: _record(connections, args))
    connector = aiohttp.TCPConnector(ssl=pki.context(pki.trusted.issue(BILLING)))
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        client = ProxyClient(stack, http)
        client.assert_reached_upstream(await client.get())
        offset[0] = 2 * 3600.0  # the proxy's clock passes the certificate's end (in an hour)
        answer = await client.get()
    assert len(connections) == 1  # the same connection, whose handshake was fine
    assert answer.status == 401, answer.body
    assert client.record_of(answer)["reason"] == "client_certificate_expired"
    assert len(stack.platform.seen) == 1


async def test_two_uri_sans_are_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    issued = pki.trusted.issue(BILLING, "https://billing.example.org/")
    client = client_with(stack, pki.context(issued))
    client.assert_refused(await client.get(), "spiffe_id_ambiguous")


async def test_ca_certificate_as_client_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    intermediate = pki.trusted.issue(BILLING, subject=name("prod intermediate"), ca=True)
    client = client_with(stack, pki.context(intermediate))
    client.assert_refused(await client.get(), "client_certificate_not_leaf")


async def test_spiffe_id_outside_the_id_pattern_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    issued = pki.trusted.issue(f"spiffe://{TRUST_DOMAIN}/host/build-agent")
    client = client_with(stack, pki.context(issued))
    client.assert_refused(await client.get(), "spiffe_id_not_allowed")


async def test_bearer_token_decides_even_with_a_good_certificate(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    # The connection never stands in for a credential the request carries.
    stack = await make_stack(mtls_overrides(pki))
    client = client_with(stack, pki.context(pki.trusted.issue(BILLING)))
    client.assert_refused(await client.get("not-a-token"), "issuer_unknown")


async def test_good_bearer_token_with_a_certificate_is_the_tokens_principal(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    client = client_with(stack, pki.context(pki.trusted.issue(BILLING)))
    token = stack.issuer.sign(stack.issuer.claims("alice", "acct-1001", roles=["viewer"]))
    answer = await client.get(token)
    client.assert_reached_upstream(answer)
    record = client.record_of(answer)
    assert (record["principal"], record["authenticator"]) == ("alice", "console")


async def test_without_a_certificate_bearer_tokens_still_work(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    # client_auth "optional": a caller without a certificate is not refused in the handshake.
    stack = await make_stack(mtls_overrides(pki))
    client = client_with(stack, pki.context(None))
    token = stack.issuer.sign(stack.issuer.claims("alice", "acct-1001", roles=["viewer"]))
    client.assert_reached_upstream(await client.get(token))
    answer = await client.get()
    assert answer.status == 401, answer.body
    assert client.record_of(answer)["reason"] == "credentials_missing"


async def test_subject_pattern_accepts_a_certificate_without_spiffe_id(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    subject = "CN=billing-batch,OU=acct-1001,O=Example Corp"
    stack = await make_stack(
        mtls_overrides(
            pki,
            subject_pattern=r"CN=[a-z-]+,OU=(?P<account>acct-[0-9]+),O=Example Corp",
            roles={subject: ["billing_admin"]},
        )
    )
    issued = pki.trusted.issue(
        subject=name(
            "billing-batch",
            (NameOID.ORGANIZATION_NAME, "Example Corp"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "acct-1001"),
        )
    )
    client = client_with(stack, pki.context(issued))
    answer = await client.get()
    client.assert_reached_upstream(answer)
    record = client.record_of(answer)
    assert (record["principal"], record["cloud_account"]) == (subject, "acct-1001")


async def test_subject_not_matching_the_pattern_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki, subject_pattern=r"CN=[a-z-]+,O=Example Corp"))
    issued = pki.trusted.issue(subject=name("mallory", (NameOID.ORGANIZATION_NAME, "Evil")))
    client = client_with(stack, pki.context(issued))
    client.assert_refused(await client.get(), "client_certificate_subject_not_allowed")


async def test_certificate_without_spiffe_id_is_refused_without_subject_pattern(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    stack = await make_stack(mtls_overrides(pki))
    issued = pki.trusted.issue(subject=name("billing-batch"))
    client = client_with(stack, pki.context(issued))
    client.assert_refused(await client.get(), "spiffe_id_missing")


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://prod.example.org",  # the root: no workload
        "spiffe://Prod.example.org/a",
        "spiffe://prod.example.org:443/a",
        "spiffe://user@prod.example.org/a",
        "spiffe://prod.example.org/a/",
        "spiffe://prod.example.org//a",
        "spiffe://prod.example.org/a/../b",
        "spiffe://prod.example.org/./a",
        "spiffe://prod.example.org/a?x=1",
        "spiffe://prod.example.org/a#x",
        "spiffe://prod.example.org/a%2Fb",
        "SPIFFE://prod.example.org/a",
        "spiffe:///a",
        "spiffe://prod.example.org/" + "a" * 2048,
    ],
)
def test_malformed_spiffe_ids_are_not_spiffe_ids(value: str) -> None:
    parsed = parse_spiffe_id(value)
    assert parsed is None or not parsed.path


def test_well_formed_spiffe_id_is_parsed() -> None:
    parsed = parse_spiffe_id("spiffe://prod.example.org/ns/acct-1001/sa/Billing_v2.1")
    assert parsed is not None
    assert (parsed.trust_domain, parsed.path) == (
        "prod.example.org",
        "/ns/acct-1001/sa/Billing_v2.1",
    )


# Settings errors name the key.


def problems_with(tmp_path: Path, overrides: dict[str, Any]) -> dict[str, str]:
    return settings_problems(tmp_path, overrides=overrides)


def test_mtls_without_a_client_ca_is_a_settings_error(tmp_path: Path, pki: Pki) -> None:
    tls = {k: v for k, v in pki.tls.items() if k != "client_ca_file"}
    overrides = mtls_overrides(pki)
    overrides["server"]["tls"] = tls
    problems = problems_with(tmp_path, overrides)
    assert problems["identity.mtls"].startswith("needs server.tls with client_ca_file")


def test_mtls_without_tls_is_a_settings_error(tmp_path: Path, pki: Pki) -> None:
    overrides = mtls_overrides(pki)
    del overrides["server"]
    problems = problems_with(tmp_path, overrides)
    assert problems["identity.mtls"].startswith("needs server.tls with client_ca_file")


def test_bad_regex_is_a_settings_error_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    problems = problems_with(
        tmp_path, mtls_overrides(pki, id_pattern="spiffe://(", subject_pattern="[")
    )
    assert problems["identity.mtls.id_pattern"].startswith("not a valid regular expression")
    assert problems["identity.mtls.subject_pattern"].startswith("not a valid regular expression")


def test_bad_trust_domain_is_a_settings_error_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    problems = problems_with(tmp_path, mtls_overrides(pki, trust_domains=["Prod.Example.org:443"]))
    assert "is not a SPIFFE trust domain" in problems["identity.mtls.trust_domains"]


def test_mtls_accepting_nothing_is_a_settings_error(tmp_path: Path, pki: Pki) -> None:
    problems = problems_with(tmp_path, mtls_overrides(pki, trust_domains=[], id_pattern=None))
    assert problems["identity.mtls"].endswith("set trust_domains, subject_pattern, or both")


def test_missing_certificate_file_is_a_settings_error_naming_the_key(
    tmp_path: Path, pki: Pki
) -> None:
    overrides = mtls_overrides(pki)
    overrides["server"]["tls"] = {**pki.tls, "cert_file": str(tmp_path / "nope.pem")}
    problems = problems_with(tmp_path, overrides)
    assert problems["server.tls.cert_file"].endswith("file not found")
