"""What the mTLS tests share: the accepted SPIFFE trust domain and a workload of it, the
settings that turn the mTLS authenticator on, and clients presenting a certificate. Their
PKI is ``certs.Pki``, made for ``TRUST_DOMAIN`` (the ``pki`` fixture)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from identity_helpers import ProxyClient

from certs import Pki
from dragoman.demo.runner import DemoStack

TRUST_DOMAIN = "prod.example.org"
BILLING = f"spiffe://{TRUST_DOMAIN}/ns/acct-1001/sa/billing"
"""A workload of the namespace of account acct-1001 (linked to cus_alice in the demo)."""
ID_PATTERN = r"spiffe://prod\.example\.org/ns/(?P<account>acct-[0-9]+)/sa/[a-z0-9-]+"
ROLES = {f"spiffe://{TRUST_DOMAIN}/ns/acct-1001/sa/*": ["billing_admin"]}


def good_context(pki: Pki) -> ssl.SSLContext:
    return pki.context(pki.trusted.issue(BILLING), "good")


def mtls_overrides(pki: Pki, **mtls: Any) -> dict[str, Any]:
    table = {"trust_domains": [TRUST_DOMAIN], "id_pattern": ID_PATTERN, "roles": ROLES, **mtls}
    return {"server": {"tls": pki.tls}, "identity": {"mtls": table}}


ClientWith = Callable[[DemoStack, ssl.SSLContext], ProxyClient]
