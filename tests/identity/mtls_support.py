"""The PKI of the mTLS tests: a server certificate for the proxy, a trusted CA for the accepted
SPIFFE trust domain and an untrusted one, all made at test time (``certs``)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs import Authority, Issued, name
from identity_helpers import ProxyClient

from dragoman.demo.runner import DemoStack

TRUST_DOMAIN = "prod.example.org"
BILLING = f"spiffe://{TRUST_DOMAIN}/ns/acct-1001/sa/billing"
"""A workload of the namespace of account acct-1001 (linked to cus_alice in the demo)."""
ID_PATTERN = r"spiffe://prod\.example\.org/ns/(?P<account>acct-[0-9]+)/sa/[a-z0-9-]+"
ROLES = {f"spiffe://{TRUST_DOMAIN}/ns/acct-1001/sa/*": ["billing_admin"]}


@dataclass(slots=True)
class Pki:
    directory: Path
    server_ca: Path
    trusted: Authority
    """The CA of the accepted trust domain; its certificate is `client_ca_file`."""
    untrusted: Authority
    tls: dict[str, str]
    """The `server.tls` table."""

    def context(self, issued: Issued | None, stem: str = "client") -> ssl.SSLContext:
        """A client context trusting the proxy's server CA, presenting ``issued``."""
        context = ssl.create_default_context(cafile=self.server_ca)
        if issued is not None:
            cert, key = issued.write(self.directory, stem)
            context.load_cert_chain(cert, key)
        return context


def make_pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    server_authority = Authority("dragoman tests server CA")
    server = server_authority.issue(subject=name("127.0.0.1"), ips=["127.0.0.1"])
    cert_file, key_file = server.write(directory, "server")
    trusted = Authority("prod CA", trust_domain=TRUST_DOMAIN)
    return Pki(
        directory=directory,
        server_ca=server_authority.write(directory, "server-ca"),
        trusted=trusted,
        untrusted=Authority("stranger CA", trust_domain=TRUST_DOMAIN),
        tls={
            "cert_file": str(cert_file),
            "key_file": str(key_file),
            "client_ca_file": str(trusted.write(directory, "client-ca")),
        },
    )


def good_context(pki: Pki) -> ssl.SSLContext:
    return pki.context(pki.trusted.issue(BILLING), "good")


def mtls_overrides(pki: Pki, **mtls: Any) -> dict[str, Any]:
    table = {"trust_domains": [TRUST_DOMAIN], "id_pattern": ID_PATTERN, "roles": ROLES, **mtls}
    return {"server": {"tls": pki.tls}, "identity": {"mtls": table}}


ClientWith = Callable[[DemoStack, ssl.SSLContext], ProxyClient]
