"""Revocation of TLS client certificates: the CRLs of ``identity.mtls.crl_file``.

The mtls authenticator asks on every request, once the certificate's validity is checked
and before what it names is judged, against the lists as last read:

- a certificate whose serial its issuer's list names is refused (401 ``unauthenticated``,
  reason ``client_certificate_revoked``);
- a certificate whose issuer has no list in the file, or whose issuer's list is past its
  ``nextUpdate``, cannot be judged and is refused too (503 ``identity_unavailable``, reason
  ``crl_missing`` or ``crl_out_of_date``): revocation that cannot be checked never becomes
  an allow.

Every list must be signed by a CA of ``server.tls.client_ca_file`` (a list anybody could
write could un-revoke). The file is re-read when it changes, looked at no more often than
``crl_refresh``, so a CA's new list takes effect without a restart, on kept-alive
connections too. A new file that does not load is logged and the lists already loaded stay
(each until its own ``nextUpdate``); a list is never replaced by an older one of the same
issuer (an old file put back cannot un-revoke).

The handshake does not check revocation: OpenSSL would keep the lists it read at start for
the life of the listener, and one past its ``nextUpdate`` would then fail every handshake
until a restart. Delta CRLs and indirect CRLs are not supported.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from dragoman.pipeline.errors import IdentityUnavailable, Unauthenticated

log = logging.getLogger(__name__)

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class IssuerList:
    """One issuer's list, as it decides: serials revoked, and how long it may be used."""

    issuer: str
    """RFC 4514, for messages."""
    this_update: float
    next_update: float
    revoked: frozenset[int]


def load_revocation_lists(crl_file: Path, ca_file: Path) -> dict[bytes, IssuerList]:
    """The lists of ``crl_file`` by issuer (its DER name), the newest per issuer. Raises
    ValueError saying what is wrong (no list, one that does not parse, one no CA of
    ``ca_file`` signed, one without ``nextUpdate``) and OSError when a file cannot be read."""
    authorities = x509.load_pem_x509_certificates(ca_file.read_bytes())
    blocks = _PEM_CRL.findall(crl_file.read_bytes())
    if not blocks:
        raise ValueError("no `X509 CRL` PEM block in the file")
    lists: dict[bytes, IssuerList] = {}
    for block in blocks:
        crl = x509.load_pem_x509_crl(block)
        issuer = crl.issuer.public_bytes()
        named = crl.issuer.rfc4514_string()
        if not any(
            ca.subject.public_bytes() == issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            for ca in authorities
        ):
            raise ValueError(f"the list of {named!r} is not signed by a CA of client_ca_file")
        if crl.next_update_utc is None:
            raise ValueError(f"the list of {named!r} has no nextUpdate")
        found = IssuerList(
            issuer=named,
            this_update=crl.last_update_utc.timestamp(),
            next_update=crl.next_update_utc.timestamp(),
            revoked=frozenset(entry.serial_number for entry in crl),
        )
        known = lists.get(issuer)
        if known is None or found.this_update > known.this_update:
            lists[issuer] = found
    return lists


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

    def check(self, issuer: bytes, serial: int) -> None:
        """Nothing when the certificate ``serial`` of ``issuer`` (DER name) is not revoked by
        a current list; raises the refusal otherwise."""
        self._reload_if_changed()
        found = self._lists.get(issuer)
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
        for issuer, known in self._lists.items():
            newer = lists.get(issuer)
            if newer is not None and newer.this_update < known.this_update:
                log.error(
                    "identity.mtls.crl_file: the list of %r is older than the one in use;"
                    " the one in use stays",
                    known.issuer,
                )
                lists[issuer] = known
        self._lists, self._stamp = lists, stamp
