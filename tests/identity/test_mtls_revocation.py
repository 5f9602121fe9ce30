"""identity.mtls.crl_file: client certificates revoked by their issuer's list are refused on
every request; a certificate whose issuer's list is missing or out of date cannot be judged
and is refused too; the file is re-read when it changes, and never rolls a list back.

Real HTTPS to the proxy, certificates and lists made at test time (``certs``)."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from identity_helpers import ProxyClient
from mtls_support import BILLING, TRUST_DOMAIN, ClientWith, Pki, mtls_overrides

from certs import HOUR, Authority, now
from dragoman.demo.runner import DemoStack
from settings_support import settings_problems

MakeStack = Callable[..., Awaitable[DemoStack]]
MINUTE = datetime.timedelta(minutes=1)


def with_crl(pki: Pki, crl: bytes, **mtls: Any) -> dict[str, Any]:
    path = pki.directory / "clients.crl.pem"
    path.write_bytes(crl)
    return mtls_overrides(pki, crl_file=str(path), **mtls)


def replace_crl(pki: Pki, crl: bytes) -> None:
    """A new version of the file, as an operator's job would put it (write, then rename)."""
    staged = pki.directory / "clients.crl.pem.new"
    staged.write_bytes(crl)
    staged.replace(pki.directory / "clients.crl.pem")


def trust_first(pki: Pki, authority: Authority) -> None:
    """``client_ca_file`` lists ``authority``'s certificate, then the trusted CA's."""
    bundle = pki.directory / "bundle.pem"
    bundle.write_bytes(
        authority.write(pki.directory, "more").read_bytes()
        + Path(pki.tls["client_ca_file"]).read_bytes()
    )
    pki.tls["client_ca_file"] = str(bundle)


def same_name_ca(pki: Pki) -> Authority:
    """The trusted CA re-keyed under its name, trusted too.

    Listed first in ``client_ca_file``: the test certificates carry no key identifiers, so
    the handshake finds a certificate's CA by name only, the first listed."""
    rekeyed = Authority("prod CA", trust_domain=TRUST_DOMAIN)
    assert rekeyed.subject == pki.trusted.subject
    trust_first(pki, rekeyed)
    return rekeyed


def crl_with(authority: Authority, extension: x509.ExtensionType, *, critical: bool) -> bytes:
    """``authority``'s list (revoking nothing) carrying ``extension``."""
    issued_at = now() - MINUTE
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.subject)
        .last_update(issued_at)
        .next_update(issued_at + 24 * HOUR)
        .add_extension(extension, critical=critical)
    )
    return builder.sign(authority.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_problem(tmp_path: Path, pki: Pki, crl: bytes) -> str:
    """What loading the settings with ``crl`` as ``crl_file`` says about it (it must fail)."""
    problems = settings_problems(tmp_path, overrides=with_crl(pki, crl))
    assert any("crl_file" in key or "crl_file" in message for key, message in problems.items())
    return " ".join(problems.values())


async def refused_now(client: ProxyClient, status: int, reason: str) -> None:
    """After requests that went through: the next one is refused with ``status`` and
    ``reason`` (audited), and nothing more goes upstream."""
    seen = len(client.stack.platform.seen)
    answer = await client.get()
    assert answer.status == status, answer.body
    record = client.record_of(answer)
    assert (record["decision"], record["reason"]) == ("deny", reason)
    assert len(client.stack.platform.seen) == seen


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + 5
    while not await check():
        assert time.monotonic() < deadline, "the new list never took effect"
        await asyncio.sleep(0.05)


async def test_a_certificate_its_issuer_revoked_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    revoked = pki.trusted.issue(BILLING)
    stack = await make_stack(with_crl(pki, pki.trusted.crl(revoked)))
    client = client_with(stack, pki.context(revoked))
    client.assert_refused(await client.get(), "client_certificate_revoked")


async def test_a_certificate_the_list_does_not_name_reaches_the_upstream(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    other = pki.trusted.issue(BILLING)
    stack = await make_stack(with_crl(pki, pki.trusted.crl(other)))
    client = client_with(stack, pki.context(pki.trusted.issue(BILLING)))
    client.assert_reached_upstream(await client.get())


async def test_a_list_past_its_next_update_refuses_every_certificate_of_its_issuer(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    offset = [0.0]
    crl = pki.trusted.crl(next_update=now() + 10 * MINUTE)
    stack = await make_stack(with_crl(pki, crl), clock=lambda: time.time() + offset[0])
    client = client_with(stack, pki.context(pki.trusted.issue(BILLING)))  # valid for an hour
    client.assert_reached_upstream(await client.get())
    offset[0] = 20 * 60.0  # the list's next update has passed; the certificate is still valid
    await refused_now(client, 503, "crl_out_of_date")


async def test_a_certificate_of_an_issuer_without_a_list_cannot_be_judged(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    second = Authority("second prod CA", trust_domain=TRUST_DOMAIN)
    bundle = pki.directory / "two-cas.pem"
    bundle.write_bytes(
        Path(pki.tls["client_ca_file"]).read_bytes()
        + second.write(pki.directory, "second").read_bytes()
    )
    pki.tls["client_ca_file"] = str(bundle)
    stack = await make_stack(with_crl(pki, pki.trusted.crl()))  # the first CA's list only
    client = client_with(stack, pki.context(second.issue(BILLING)))
    answer = await client.get()
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == "crl_missing"


async def test_a_new_list_takes_effect_on_a_kept_alive_connection_without_a_restart(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    issued = pki.trusted.issue(BILLING)
    stack = await make_stack(with_crl(pki, pki.trusted.crl(), crl_refresh=0.1))
    client = client_with(stack, pki.context(issued))
    client.assert_reached_upstream(await client.get())
    replace_crl(pki, pki.trusted.crl(issued))

    async def refused() -> bool:
        return (await client.get()).status == 401

    await until(refused)
    await refused_now(client, 401, "client_certificate_revoked")


async def test_an_older_list_put_back_does_not_unrevoke(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    issued = pki.trusted.issue(BILLING)
    older = pki.trusted.crl(this_update=now() - 10 * MINUTE)
    stack = await make_stack(with_crl(pki, pki.trusted.crl(issued), crl_refresh=0.1))
    client = client_with(stack, pki.context(issued))
    client.assert_refused(await client.get(), "client_certificate_revoked")
    replace_crl(pki, older)
    await asyncio.sleep(0.3)  # several looks at the file
    client.assert_refused(await client.get(), "client_certificate_revoked")


async def test_a_file_that_no_longer_loads_keeps_the_lists_in_use(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    revoked, good = pki.trusted.issue(BILLING), pki.trusted.issue(BILLING)
    stack = await make_stack(with_crl(pki, pki.trusted.crl(revoked), crl_refresh=0.1))
    replace_crl(pki, b"-----BEGIN X509 CRL-----\nbm90IGEgbGlzdA==\n-----END X509 CRL-----\n")
    await asyncio.sleep(0.3)
    refused = client_with(stack, pki.context(revoked, "revoked"))
    refused.assert_refused(await refused.get(), "client_certificate_revoked")
    allowed = client_with(stack, pki.context(good, "good"))
    allowed.assert_reached_upstream(await allowed.get())


def test_a_list_no_trusted_ca_signed_is_refused_at_load(tmp_path: Path, pki: Pki) -> None:
    forged = pki.untrusted.crl()  # same trust domain, another CA's key
    problems = settings_problems(tmp_path, overrides=with_crl(pki, forged))
    assert "not signed by a CA of client_ca_file" in " ".join(problems.values()), problems
    assert any("crl_file" in key or "crl_file" in message for key, message in problems.items())


def test_a_file_without_a_list_is_refused_at_load(tmp_path: Path, pki: Pki) -> None:
    problems = settings_problems(tmp_path, overrides=with_crl(pki, b"nothing here\n"))
    assert any("crl_file" in key or "crl_file" in message for key, message in problems.items())
    assert "no `X509 CRL`" in " ".join(problems.values()), problems


def test_a_missing_file_is_refused_at_load(tmp_path: Path, pki: Pki) -> None:
    overrides = mtls_overrides(pki, crl_file=str(tmp_path / "absent.pem"))
    problems = settings_problems(tmp_path, overrides=overrides)
    assert problems.get("identity.mtls.crl_file") == "file not found", problems


async def test_a_revoked_certificate_of_the_second_of_two_same_name_cas_is_refused(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    rekeyed = same_name_ca(pki)
    revoked = rekeyed.issue(BILLING)
    crl = rekeyed.crl(revoked, this_update=now() - 10 * MINUTE) + pki.trusted.crl()  # newer
    stack = await make_stack(with_crl(pki, crl))
    client = client_with(stack, pki.context(revoked))
    client.assert_refused(await client.get(), "client_certificate_revoked")


async def test_a_certificate_of_a_same_name_ca_without_a_list_cannot_be_judged(
    make_stack: MakeStack, pki: Pki, client_with: ClientWith
) -> None:
    rekeyed = same_name_ca(pki)
    stack = await make_stack(with_crl(pki, pki.trusted.crl()))  # the other CA's list only
    client = client_with(stack, pki.context(rekeyed.issue(BILLING)))
    answer = await client.get()
    client.assert_unavailable(answer)
    assert client.record_of(answer)["reason"] == "crl_missing"


def test_a_delta_list_is_refused_at_load(tmp_path: Path, pki: Pki) -> None:
    revoked = pki.trusted.issue(BILLING)
    full = pki.trusted.crl(revoked, this_update=now() - 10 * MINUTE)
    delta = crl_with(pki.trusted, x509.DeltaCRLIndicator(1), critical=True)  # newer
    assert "DeltaCRLIndicator" in load_problem(tmp_path, pki, full + delta)


def test_a_list_with_an_issuing_distribution_point_is_refused_at_load(
    tmp_path: Path, pki: Pki
) -> None:
    partition = x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier("http://crl.example.org/part-1.crl")],
        relative_name=None,
        only_contains_user_certs=True,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    crl = crl_with(pki.trusted, partition, critical=True)
    assert "IssuingDistributionPoint" in load_problem(tmp_path, pki, crl)


def test_a_list_with_an_unknown_critical_extension_is_refused_at_load(
    tmp_path: Path, pki: Pki
) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    crl = crl_with(pki.trusted, unknown, critical=True)
    assert "critical extension that is not supported (1.3.6.1.4.1.55555.1)" in load_problem(
        tmp_path, pki, crl
    )


def test_a_list_with_an_unknown_critical_entry_extension_is_refused_at_load(
    tmp_path: Path, pki: Pki
) -> None:
    issued_at = now() - MINUTE
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(pki.trusted.issue(BILLING).cert.serial_number)
        .revocation_date(issued_at)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00"),
            critical=True,
        )
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.trusted.subject)
        .last_update(issued_at)
        .next_update(issued_at + 24 * HOUR)
        .add_revoked_certificate(entry)
        .sign(pki.trusted.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    assert "entry with a critical extension that is not supported" in load_problem(
        tmp_path, pki, crl
    )
