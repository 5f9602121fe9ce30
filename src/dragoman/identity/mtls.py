"""TLS client certificates of dragoman's own handshake: SPIFFE X.509-SVIDs, or certificates
matched by subject.

The handshake (:mod:`dragoman.tls`) has already checked the chain to ``client_ca_file`` and
the validity window against the system clock; a certificate that fails either never gets
here. This authenticator then judges what the certificate says, on every request:

- its validity window again, against the proxy's clock (a kept-alive connection may outlive
  its certificate);
- that it is a leaf (X.509-SVID §5.2: ``cA`` false, neither ``keyCertSign`` nor ``cRLSign``);
- with ``crl_file``, that the current list of the CA whose key signed it does not revoke it
  (:mod:`dragoman.identity.revocation`);
- with a ``spiffe:`` URI SAN: exactly one URI SAN, a well-formed SPIFFE ID with a non-root
  path, an accepted trust domain, and ``id_pattern`` when set;
- without one: ``subject_pattern`` against the RFC 4514 subject.

The certificate is read from the TLS connection only, never from a header a front proxy
might have set, and a request carrying an Authorization header is "not mine": its bearer
credential is judged by the bearer authenticators, never replaced by the connection's.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from cryptography import x509

from dragoman.identity.base import NOT_MINE, NotMine
from dragoman.identity.principal import Principal
from dragoman.identity.revocation import RevocationCheck
from dragoman.identity.role_table import RoleTable
from dragoman.pipeline.errors import Unauthenticated
from dragoman.settings import MtlsSettings

MAX_SPIFFE_ID = 2048
"""Longest SPIFFE ID accepted (SPIFFE-ID §2.3)."""

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

E = TypeVar("E", bound=x509.ExtensionType)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def parse_spiffe_id(value: str) -> SpiffeId | None:
    """A SPIFFE ID (SPIFFE-ID §2), or None when ``value`` is not one.

    Only the exact form is accepted: scheme ``spiffe`` in lowercase, a lowercase trust domain
    (so no port, no userinfo), path segments of ``[A-Za-z0-9._-]`` that are neither ``.`` nor
    ``..``, no empty segment or trailing slash, no query, no fragment, no percent-encoding.
    """
    if len(value) > MAX_SPIFFE_ID or not value.startswith("spiffe://"):
        return None
    trust_domain, slash, path = value[len("spiffe://") :].partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        return None
    if not slash:
        return SpiffeId(trust_domain, "")
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            return None
    return SpiffeId(trust_domain, "/" + path)


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the authenticator reads from a certificate (settings-independent)."""

    not_before: float
    not_after: float
    is_leaf: bool
    uris: tuple[str, ...]
    subject: str
    issuer: str
    issuer_der: bytes
    serial: int


def _extension(cert: x509.Certificate, kind: type[E]) -> E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


@functools.lru_cache(maxsize=1024)
def certificate_facts(der: bytes) -> CertificateFacts:
    """Parse a DER certificate once (a caller presents the same one on every connection).

    Raises ValueError when the certificate cannot be read."""
    cert = x509.load_der_x509_certificate(der)
    try:
        constraints = _extension(cert, x509.BasicConstraints)
        usage = _extension(cert, x509.KeyUsage)
        names = _extension(cert, x509.SubjectAlternativeName)
        subject = cert.subject.rfc4514_string()
        issuer = cert.issuer.rfc4514_string()
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(str(exc)) from None
    is_ca = constraints is not None and constraints.ca
    signs = usage is not None and (usage.key_cert_sign or usage.crl_sign)
    uris = names.get_values_for_type(x509.UniformResourceIdentifier) if names else []
    return CertificateFacts(
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        is_leaf=not (is_ca or signs),
        uris=tuple(uris),
        subject=subject,
        issuer=issuer,
        issuer_der=cert.issuer.public_bytes(),
        serial=cert.serial_number,
    )


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate of the request's own TLS connection, if it has one."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der or None


def _account(match: re.Match[str] | None) -> str | None:
    if match is None or "account" not in match.re.groupindex:
        return None
    return match.group("account") or None


class MtlsAuthenticator:
    """Service callers by their TLS client certificate (SPIFFE IDs or subjects)."""

    def __init__(
        self,
        settings: MtlsSettings,
        *,
        clock: Callable[[], float] = time.time,
        revocation: RevocationCheck | None = None,
    ) -> None:
        """``revocation``: the lists of ``settings.crl_file`` (None: not checked)."""
        self.name = settings.name
        self._revocation = revocation
        self._settings = settings
        self._trust_domains = frozenset(settings.trust_domains)
        self._id_pattern = re.compile(settings.id_pattern) if settings.id_pattern else None
        self._subject_pattern = (
            re.compile(settings.subject_pattern) if settings.subject_pattern is not None else None
        )
        self._roles = RoleTable(settings.roles)
        self._clock = clock

    async def authenticate(self, request: web.Request) -> Principal | NotMine:
        if "Authorization" in request.headers:
            return NOT_MINE
        der = peer_certificate(request)
        if der is None:
            return NOT_MINE
        try:
            facts = certificate_facts(der)
        except ValueError:
            raise Unauthenticated(
                "client_certificate_invalid", "The client certificate cannot be read."
            ) from None
        now = self._clock()
        if now >= facts.not_after:
            raise Unauthenticated(
                "client_certificate_expired", "The client certificate has expired."
            )
        if now < facts.not_before:
            raise Unauthenticated(
                "client_certificate_not_yet_valid", "The client certificate is not valid yet."
            )
        if not facts.is_leaf:
            raise Unauthenticated(
                "client_certificate_not_leaf", "A CA certificate cannot authenticate a caller."
            )
        if self._revocation is not None:
            self._revocation.check(der, issuer=facts.issuer_der, serial=facts.serial)
        if any(uri[:7].lower() == "spiffe:" for uri in facts.uris):
            return self._spiffe(facts)
        return self._subject(facts)

    def _spiffe(self, facts: CertificateFacts) -> Principal:
        if len(facts.uris) != 1:
            raise Unauthenticated("spiffe_id_ambiguous", "An X.509-SVID has exactly one URI SAN.")
        spiffe_id = parse_spiffe_id(facts.uris[0])
        if spiffe_id is None or not spiffe_id.path:
            raise Unauthenticated("spiffe_id_invalid", "The certificate's SPIFFE ID is malformed.")
        if spiffe_id.trust_domain not in self._trust_domains:
            raise Unauthenticated(
                "spiffe_trust_domain_not_allowed", "The SPIFFE trust domain is not accepted."
            )
        text = str(spiffe_id)
        account: str | None = spiffe_id.trust_domain
        if self._id_pattern is not None:
            match = self._id_pattern.fullmatch(text)
            if match is None:
                raise Unauthenticated("spiffe_id_not_allowed", "The SPIFFE ID is not accepted.")
            if "account" in self._id_pattern.groupindex:
                account = _account(match)
        return self._principal(
            text, account, issuer=f"spiffe://{spiffe_id.trust_domain}", facts=facts
        )

    def _subject(self, facts: CertificateFacts) -> Principal:
        if self._subject_pattern is None:
            raise Unauthenticated(
                "spiffe_id_missing", "The client certificate carries no SPIFFE ID."
            )
        match = self._subject_pattern.fullmatch(facts.subject)
        if match is None or not facts.subject:
            raise Unauthenticated(
                "client_certificate_subject_not_allowed",
                "The client certificate's subject is not accepted.",
            )
        return self._principal(facts.subject, _account(match), issuer=facts.issuer, facts=facts)

    def _principal(
        self, name: str, account: str | None, *, issuer: str, facts: CertificateFacts
    ) -> Principal:
        settings = self._settings
        return Principal(
            subject=settings.principal_prefix + name,
            cloud_account=None if account is None else settings.account_prefix + account,
            issuer=issuer,
            authenticator=settings.name,
            roles=self._roles.roles_of(name),
            credential_expires_at=facts.not_after,
        )

    async def close(self) -> None:
        return None
