"""TLS termination in dragoman: a listener's SSL context, from ``server.tls`` (the proxy) or
``decision.tls`` (the decision listener).

Python's ssl module cannot accept a client certificate first and judge it later: a client
certificate that does not chain to ``client_ca_file``, or is outside its validity window,
fails the handshake. Everything about the certificate beyond that (its SPIFFE ID, its subject,
whether it is a leaf, its validity at each request) is judged by :mod:`dragoman.identity.mtls`.
"""

from __future__ import annotations

import ssl

from dragoman.settings.server import TlsSettings


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context of the listener: TLS 1.2 at least, the configured certificate, and
    client certificates verified against ``client_ca_file`` when it is set."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth == "required" else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context
