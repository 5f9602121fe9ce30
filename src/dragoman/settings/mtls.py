"""The `mtls` authenticator: service callers prove themselves with the TLS client certificate
of dragoman's own handshake (SPIFFE X.509-SVIDs, or certificates matched by subject)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section, check_existing_file
from dragoman.settings.principals import ROLE_TABLE_DESCRIPTION, RoleTable, check_role_table

TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
"""A SPIFFE trust domain: lowercase letters, digits, dots, dashes and underscores."""


def _compiled(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


class MtlsSettings(Section):
    name: str = Field(
        "mtls",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Short name of this authenticator, used in audit records.",
    )
    trust_domains: list[str] = Field(
        default_factory=list,
        description=(
            "SPIFFE trust domains whose X.509-SVIDs are accepted (`prod.example.org`). The"
            " certificate must also chain to `server.tls.client_ca_file`."
        ),
    )
    id_pattern: str | None = Field(
        None,
        description=(
            "Regular expression the whole SPIFFE ID must match"
            " (`spiffe://prod\\.example\\.org/ns/(?P<account>[a-z0-9-]+)/sa/.+`). Its named"
            " group `account`, when present, names the cloud account; otherwise the account"
            " is the trust domain."
        ),
    )
    subject_pattern: str | None = Field(
        None,
        description=(
            "Regular expression the whole subject of a certificate without a SPIFFE ID must"
            " match, in RFC 4514 form (`CN=billing-batch,O=Example`: most specific first);"
            " unset: only SPIFFE IDs are accepted. Its named group `account`, when present,"
            " names the cloud account."
        ),
    )
    roles: RoleTable = Field(
        default_factory=dict,
        description=ROLE_TABLE_DESCRIPTION
        + " Principals are the SPIFFE ID (or the RFC 4514 subject), before `principal_prefix`.",
    )
    principal_prefix: str = Field(
        "", description="Prepended to the principal (the SPIFFE ID or the subject)."
    )
    account_prefix: str = Field("", description="Prepended to the cloud account.")
    crl_file: Path | None = Field(
        None,
        description=(
            "PEM file of certificate revocation lists (`X509 CRL` blocks), each signed by a CA"
            " of `server.tls.client_ca_file`. When set, a request authenticated by a client"
            " certificate is refused when its issuer's list revokes it (401), and when its"
            " issuer has no list in the file or the list is past its nextUpdate (503"
            " identity_unavailable). Re-read when it changes; unset: no revocation checks."
        ),
    )
    crl_refresh: Duration = Field(
        60.0,
        gt=0,
        le=3600,
        description="How often `crl_file` is looked at for a new version.",
    )

    @field_validator("trust_domains")
    @classmethod
    def _trust_domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not TRUST_DOMAIN.match(domain):
                raise ValueError(
                    f"{domain!r} is not a SPIFFE trust domain (lowercase letters, digits, `.-_`)"
                )
        if len(set(value)) != len(value):
            raise ValueError("each trust domain may be listed only once")
        return value

    @field_validator("id_pattern", "subject_pattern")
    @classmethod
    def _patterns(cls, value: str | None) -> str | None:
        return _compiled(value)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: RoleTable) -> RoleTable:
        return check_role_table(value)

    @field_validator("crl_file")
    @classmethod
    def _crl_file_exists(cls, value: Path | None) -> Path | None:
        return check_existing_file(value)

    @model_validator(mode="after")
    def _accepts_something(self) -> MtlsSettings:
        if not self.trust_domains and self.subject_pattern is None:
            raise ValueError("set trust_domains, subject_pattern, or both")
        if self.id_pattern is not None and not self.trust_domains:
            raise ValueError("id_pattern applies to SPIFFE IDs: set trust_domains too")
        return self
