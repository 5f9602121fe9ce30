"""Revocation of TLS client certificates: the CRLs of ``identity.mtls.crl_file``.

The mtls authenticator asks on every request, once the certificate's validity is checked
and before what it names is judged, against the lists as last read:

- a certificate whose serial its issuing CA's list names is refused (401
  ``unauthenticated``, reason ``client_certificate_revoked``);
- a certificate whose issuing CA has no list in the file, or whose CA's list is past its
  ``nextUpdate``, cannot be judged and is refused too (503 ``identity_unavailable``, reason
  ``crl_missing`` or ``crl_out_of_date``): revocation that cannot be checked never becomes
  an allow.

A list belongs to the CA of ``server.tls.client_ca_file`` whose key signed it (a list
anybody could write could un-revoke; one no CA signed is refused), not to a name: two CAs
may share a subject name (a CA re-keyed under its old name), and each has its own list. A
certificate is judged by the list of the CA whose key signed it.

The file is re-read when it changes, looked at no more often than ``crl_refresh``, so a
CA's new list takes effect without a restart, on kept-alive connections too. A new file
that does not load is logged and the lists already loaded stay (each until its own
``nextUpdate``); a list is never replaced by an older one of the same CA (an old file put
back cannot un-revoke).

Only complete lists are read: a delta CRL (``DeltaCRLIndicator``), a partitioned or
indirect one (``IssuingDistributionPoint``), and one with any other critical extension (of
the list or of an entry) this module does not understand are refused at load, since
reading them as complete lists would drop revocations.

The handshake does not check revocation: OpenSSL would keep the lists it read at start for
the life of the listener, and one past its ``nextUpdate`` would then fail every handshake
until a restart.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from dragoman.pipeline.errors import IdentityUnavailable, Unauthenticated

log = logging.getLogger(__name__)

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)

_UNDERSTOOD = frozenset({ExtensionOID.CRL_NUMBER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER})
"""The list extensions that may be critical: neither changes which certificates the list
covers. Any other critical one is refused (RFC 5280 §5.2)."""
_UNDERSTOOD_ENTRY = frozenset(
    {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
)
"""The entry extensions that may be critical: a revoked serial stays revoked whatever its
reason or date. Any other critical one (``CertificateIssuer``...) is refused (RFC 5280
§5.3)."""

AuthorityKey = tuple[bytes, bytes]
"""A CA as a list names it: its subject (DER) and its public key (DER
SubjectPublicKeyInfo). Two CAs of the same name with different keys are two CAs."""


@dataclass(frozen=True, slots=True)
class IssuerList:
    """One CA's list, as it decides: serials revoked, and how long it may be used."""

    issuer: str
    """RFC 4514, for messages."""
    authority: x509.Certificate
    """The CA of ``client_ca_file`` whose key signed the list: the list judges the
    certificates this key signed."""
    this_update: float
    next_update: float
    revoked: frozenset[int]


def _authority_key(ca: x509.Certificate) -> AuthorityKey:
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ca.subject.public_bytes(), spki


def _signed(crl: x509.CertificateRevocationList, *, by: x509.Certificate) -> bool:
    """Whether the CA ``by`` issued ``crl``: its name, and its key verifies the signature."""
    if crl.issuer.public_bytes() != by.subject.public_bytes():
        return False
    return crl.is_signature_valid(by.public_key())  # type: ignore[arg-type]


def _not_complete(crl: x509.CertificateRevocationList) -> str | None:
    """Why ``crl`` cannot be read as its CA's complete list, or None when it can."""
    try:
        extensions = list(crl.extensions)
        entries = [extension for entry in crl for extension in entry.extensions]
    except x509.DuplicateExtension as exc:
        return f"has a duplicate extension ({exc.oid.dotted_string})"
    except ValueError as exc:
        return f"has an extension that cannot be read ({exc})"
    for extension in extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            return "is a delta CRL (DeltaCRLIndicator); only complete lists are supported"
        if extension.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
            return (
                "has an IssuingDistributionPoint (a partitioned or indirect list);"
                " only complete lists are supported"
            )
        if extension.critical and extension.oid not in _UNDERSTOOD:
            return f"has a critical extension that is not supported ({extension.oid.dotted_string})"
    for extension in entries:
        if extension.critical and extension.oid not in _UNDERSTOOD_ENTRY:
            return (
                "has an entry with a critical extension that is not supported"
                f" ({extension.oid.dotted_string})"
            )
    return None


def load_revocation_lists(crl_file: Path, ca_file: Path) -> dict[AuthorityKey, IssuerList]:
    """The lists of ``crl_file`` by the CA of ``ca_file`` that signed them, the newest per
    CA. Raises ValueError saying what is wrong (no list, one that does not parse, one no CA
    of ``ca_file`` signed, one without ``nextUpdate``, one that is not a complete list) and
    OSError when a file cannot be read."""
    authorities = x509.load_pem_x509_certificates(ca_file.read_bytes())
    blocks = _PEM_CRL.findall(crl_file.read_bytes())
    if not blocks:
        raise ValueError("no `X509 CRL` PEM block in the file")
    lists: dict[AuthorityKey, IssuerList] = {}
    for block in blocks:
        crl = x509.load_pem_x509_crl(block)
        named = crl.issuer.rfc4514_string()
        signer = next((ca for ca in authorities if _signed(crl, by=ca)), None)
        if signer is None:
            raise ValueError(f"the list of {named!r} is not signed by a CA of client_ca_file")
        if crl.next_update_utc is None:
            raise ValueError(f"the list of {named!r} has no nextUpdate")
        why = _not_complete(crl)
        if why is not None:
            raise ValueError(f"the list of {named!r} {why}")
        found = IssuerList(
            issuer=named,
            authority=signer,
            this_update=crl.last_update_utc.timestamp(),
            next_update=crl.next_update_utc.timestamp(),
            revoked=frozenset(entry.serial_number for entry in crl),
        )
        key = _authority_key(signer)
        known = lists.get(key)
        if known is None or found.this_update > known.this_update:
            lists[key] = found
    return lists


@functools.lru_cache(maxsize=1024)
def _issued_by(certificate: bytes, authority: x509.Certificate) -> bool:
    """Whether ``authority``'s key signed the DER ``certificate`` (a caller presents the same
    one on every connection)."""
    try:
        x509.load_der_x509_certificate(certificate).verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when the file is replaced or rewritten."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class RevocationCheck:
    """The lists of ``crl_file``, kept current, and the per-request verdict."""

    def __init__(
        self,
        crl_file: Path,
        ca_file: Path,
        *,
        refresh: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._crl_file = crl_file
        self._ca_file = ca_file
        self._refresh = refresh
        self._clock = clock
        self._monotonic = monotonic
        self._stamp = _stamp(crl_file)
        self._lists = load_revocation_lists(crl_file, ca_file)  # at start: a bad file stops it
        self._next_look = monotonic() + refresh

    def check(self, certificate: bytes, *, issuer: bytes, serial: int) -> None:
        """Nothing when the DER ``certificate`` (of issuer name ``issuer``, DER, and serial
        ``serial``) is not revoked by the current list of the CA whose key signed it; raises
        the refusal otherwise."""
        self._reload_if_changed()
        found = next(
            (
                candidate
                for (name, _), candidate in self._lists.items()
                if name == issuer and _issued_by(certificate, candidate.authority)
            ),
            None,
        )
        if found is None:
            raise IdentityUnavailable(
                "crl_missing", "No revocation list of the client certificate's issuer is loaded."
            )
        if self._clock() >= found.next_update:
            raise IdentityUnavailable(
                "crl_out_of_date",
                "The revocation list of the client certificate's issuer is out of date.",
            )
        if serial in found.revoked:
            raise Unauthenticated(
                "client_certificate_revoked", "The client certificate has been revoked."
            )

    def _reload_if_changed(self) -> None:
        now = self._monotonic()
        if now < self._next_look:
            return
        self._next_look = now + self._refresh
        try:
            stamp = _stamp(self._crl_file)
            if stamp == self._stamp:
                return
            lists = load_revocation_lists(self._crl_file, self._ca_file)
        except (OSError, ValueError) as exc:
            log.error(
                "identity.mtls.crl_file: not reloaded, the lists loaded before stay (%s)", exc
            )
            return
        for key, known in self._lists.items():
            newer = lists.get(key)
            if newer is not None and newer.this_update < known.this_update:
                log.error(
                    "identity.mtls.crl_file: the list of %r is older than the one in use;"
                    " the one in use stays",
                    known.issuer,
                )
                lists[key] = known
        self._lists, self._stamp = lists, stamp
