"""Certificates made at test time with `cryptography`: a CA per trust domain, SPIFFE
X.509-SVIDs and other client certificates, a server certificate for 127.0.0.1, and the
``Pki`` of a TLS listener (``make_pki``): what the mTLS tests (tests/identity) and the
decision listener's TLS tests (tests/decision) build on.

Everything is written as PEM under a directory the test owns (``tmp_path``).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOUR = datetime.timedelta(hours=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def name(common_name: str, *more: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    """A subject; ``more`` attributes come first (most general), the CN last."""
    attributes = [x509.NameAttribute(oid, value) for oid, value in more]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, leaf: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not leaf,
        crl_sign=not leaf,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.pem`` and ``stem.key`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


class Authority:
    """A self-signed CA; for SPIFFE, its certificate names the trust domain (no path)."""

    def __init__(self, common_name: str, *, trust_domain: str | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = name(common_name, (NameOID.ORGANIZATION_NAME, "dragoman tests"))
        uris = [f"spiffe://{trust_domain}"] if trust_domain else []
        self.cert = self._build(
            self.subject,
            self.key,
            uris=uris,
            ca=True,
            not_before=now() - HOUR,
            not_after=now() + 24 * HOUR,
        )

    def _build(
        self,
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        *,
        uris: Sequence[str] = (),
        ips: Sequence[str] = (),
        ca: bool,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(_usage(leaf=not ca), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            # X.509-SVID §3.1: without a subject, the SAN extension is critical.
            critical = len(subject) == 0
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=critical)
        return builder.sign(self.key, hashes.SHA256())

    def issue(
        self,
        *uris: str,
        subject: x509.Name | None = None,
        ips: Sequence[str] = (),
        ca: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        """A certificate signed by this CA: a leaf unless ``ca``; valid for an hour around
        now unless told otherwise."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(
            subject if subject is not None else x509.Name([]),
            key,
            uris=uris,
            ips=ips,
            ca=ca,
            not_before=not_before or now() - HOUR,
            not_after=not_after or now() + HOUR,
        )
        return Issued(cert, key)

    def write(self, directory: Path, stem: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.pem"
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def crl(
        self,
        *revoked: Issued,
        this_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
    ) -> bytes:
        """This CA's revocation list (PEM) naming ``revoked``: issued a minute ago unless
        told otherwise, next update in a day."""
        issued_at = this_update or now() - datetime.timedelta(minutes=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.subject)
            .last_update(issued_at)
            .next_update(next_update or issued_at + 24 * HOUR)
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.cert.serial_number)
                .revocation_date(issued_at)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass(slots=True)
class Pki:
    """A TLS listener's certificates: its own (for 127.0.0.1, from a server CA its clients
    trust), the CA whose client certificates it accepts, and a stranger CA."""

    directory: Path
    server_ca: Path
    trusted: Authority
    """The CA whose client certificates are accepted; its certificate is `client_ca_file`."""
    untrusted: Authority
    """A CA the listener does not know (of the same trust domain, when there is one)."""
    tls: dict[str, str]
    """The listener's TLS table (`server.tls`, `decision.tls`)."""

    def context(self, issued: Issued | None, stem: str = "client") -> ssl.SSLContext:
        """A client context trusting the listener's server CA, presenting ``issued``."""
        context = ssl.create_default_context(cafile=self.server_ca)
        if issued is not None:
            cert, key = issued.write(self.directory, stem)
            context.load_cert_chain(cert, key)
        return context


def make_pki(tmp_path: Path, *, trust_domain: str | None = None) -> Pki:
    """A Pki under ``tmp_path/pki``; ``trust_domain``: the SPIFFE trust domain of both client
    CAs (None: plain CAs)."""
    directory = tmp_path / "pki"
    server_authority = Authority("dragoman tests server CA")
    server = server_authority.issue(subject=name("127.0.0.1"), ips=["127.0.0.1"])
    cert_file, key_file = server.write(directory, "server")
    trusted = Authority("prod CA", trust_domain=trust_domain)
    return Pki(
        directory=directory,
        server_ca=server_authority.write(directory, "server-ca"),
        trusted=trusted,
        untrusted=Authority("stranger CA", trust_domain=trust_domain),
        tls={
            "cert_file": str(cert_file),
            "key_file": str(key_file),
            "client_ca_file": str(trusted.write(directory, "client-ca")),
        },
    )
