"""A listener's TLS against what a renewal or a client may bring: sessions resumed across a
change of the client CA bundle, and a certificate OpenSSL serves but `cryptography` cannot
read. Real listeners on 127.0.0.1, real TLS handshakes (blocking sockets: only they offer a
session to resume)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certs import Authority, Issued, name
from dragoman.tls import ServerTls, TlsWatch
from tls_support import Listen, ServerFiles, client_cas, client_of, first_files, tls_listeners


@pytest.fixture
def pair(tmp_path: Path) -> ServerFiles:
    return first_files(tmp_path / "server")


@pytest.fixture
async def listen() -> AsyncIterator[Listen]:
    async with tls_listeners() as serve:
        yield serve


def get(
    port: int, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bool, ssl.SSLSession | None, bool]:
    """One GET on a new connection (blocking socket: only it can offer a session to resume).
    Returns (answered 200, the session, whether the handshake resumed ``session``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            tls = client.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
        except (ssl.SSLError, ConnectionError):
            return False, None, False
        with tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            try:
                while chunk := tls.recv(4096):
                    data += chunk
            except (ssl.SSLError, ConnectionError):
                return False, None, bool(tls.session_reused)
            return data.startswith(b"HTTP/1.1 200"), tls.session, bool(tls.session_reused)


# -- a client CA taken out of the bundle: its sessions still resume -----------------------------


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_a_session_made_before_its_client_ca_was_removed_does_not_resume(
    pair: ServerFiles, tmp_path: Path, listen: Listen, version: ssl.TLSVersion
) -> None:
    cas = client_cas(pair, tmp_path, listener="decision")
    port = await listen(cas.tls)
    client = client_of(pair, cas.old, tmp_path)
    client.maximum_version = version
    answered, session, _ = await asyncio.to_thread(get, port, client)
    assert answered and session is not None
    assert cas.swap()
    assert not (await asyncio.to_thread(get, port, client))[0]  # a full handshake: refused
    answered, _, resumed = await asyncio.to_thread(get, port, client, session)
    assert not answered, f"admitted (resumed: {resumed})"


async def test_a_tls12_session_made_after_the_bundle_changed_resumes(
    pair: ServerFiles, tmp_path: Path, listen: Listen
) -> None:
    cas = client_cas(pair, tmp_path, listener="decision")
    port = await listen(cas.tls)
    assert cas.swap()
    await asyncio.sleep(1.1)  # session times count whole seconds: one made after the change
    client = client_of(pair, cas.new, tmp_path)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    answered, session, _ = await asyncio.to_thread(get, port, client)
    assert answered and session is not None
    answered, _, resumed = await asyncio.to_thread(get, port, client, session)
    assert answered and resumed


async def test_no_session_ticket_is_issued_where_client_certificates_are_asked_for(
    pair: ServerFiles, tmp_path: Path, listen: Listen
) -> None:
    ca = Authority("client CA")
    bundle = ca.write(tmp_path / "ca", "clients")
    tls = ServerTls(
        pair.settings(client_ca_file=str(bundle), client_auth="required"), listener="proxy"
    )
    port = await listen(tls)
    client = ssl.create_default_context(cafile=pair.ca_file)
    client.load_cert_chain(*ca.issue(subject=name("client")).write(tmp_path, "client"))
    answered, session, _ = await asyncio.to_thread(get, port, client)
    assert answered and session is not None
    assert not session.has_ticket


# -- a certificate OpenSSL serves but cryptography cannot read ----------------------------------


def version_4(issued: Issued) -> bytes:
    """``issued``'s certificate with version field 3 (no X.509 version): OpenSSL loads it
    for a server (it does not check its own certificate's signature); cryptography raises
    x509.InvalidVersion, which is no ValueError."""
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    at = der.index(b"\xa0\x03\x02\x01\x02")
    odd = der[:at] + b"\xa0\x03\x02\x01\x03" + der[at + 5 :]
    return (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(odd) + b"-----END CERTIFICATE-----\n"
    )


def test_a_certificate_cryptography_cannot_read_still_starts_the_listener(
    pair: ServerFiles,
) -> None:
    issued = pair.issue("odd")
    cert, key = issued.write(pair.directory / "odd", "server")
    cert.write_bytes(version_4(issued))
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)  # OpenSSL serves it
    os.replace(cert, pair.cert_file)
    os.replace(key, pair.key_file)
    tls = ServerTls(pair.settings(), listener="proxy")
    assert tls.not_after is None


async def test_the_watch_survives_a_certificate_cryptography_cannot_read(pair: ServerFiles) -> None:
    tls = ServerTls(pair.settings(reload_interval="20ms"), listener="proxy")
    watch = TlsWatch(tls)
    watch.start()
    try:
        odd = pair.issue("odd")
        cert, key = odd.write(pair.directory / "odd", "server")
        cert.write_bytes(version_4(odd))
        os.replace(cert, pair.cert_file)
        os.replace(key, pair.key_file)
        await asyncio.sleep(0.2)
        renewed = pair.issue("renewed")
        pair.put(renewed)
        expected = renewed.cert.not_valid_after_utc.timestamp()
        for _ in range(50):
            if tls.not_after == expected:
                break
            await asyncio.sleep(0.02)
        assert tls.not_after == expected
    finally:
        await watch.stop()
