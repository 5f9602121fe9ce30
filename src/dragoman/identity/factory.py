"""The authenticators of step 1, in the order they are asked, from settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dragoman.identity.aws_sts import AwsStsAuthenticator
from dragoman.identity.base import Authenticator
from dragoman.identity.mtls import MtlsAuthenticator
from dragoman.identity.oidc import OidcAuthenticator
from dragoman.identity.revocation import RevocationCheck
from dragoman.settings import IdentitySettings


def build_authenticators(
    settings: IdentitySettings,
    *,
    clock: Callable[[], float] = time.time,
    jwks_fetched: Callable[[str, str], None] | None = None,
    client_ca_file: Path | None = None,
) -> list[Authenticator]:
    """Bearer credentials first (each kind recognises its own), the TLS client certificate
    last: a request that carries an Authorization header is never authenticated by its
    connection instead, so a credential nobody recognises is refused, not ignored.
    ``jwks_fetched(issuer name, outcome)`` counts the OIDC key set fetches;
    ``client_ca_file`` (``server.tls``) signs the revocation lists of ``mtls.crl_file``."""
    authenticators: list[Authenticator] = []
    if settings.aws_sts is not None:
        authenticators.append(
            AwsStsAuthenticator(
                settings.aws_sts, max_token_bytes=settings.max_token_bytes, clock=clock
            )
        )
    if settings.oidc:
        authenticators.append(OidcAuthenticator(settings, clock=clock, jwks_fetched=jwks_fetched))
    # mtls: the TLS client certificate (identity/mtls.py)
    if settings.mtls is not None:
        mtls = settings.mtls
        revocation = None
        if mtls.crl_file is not None:
            if client_ca_file is None:
                raise ValueError("identity.mtls.crl_file needs server.tls.client_ca_file")
            revocation = RevocationCheck(
                mtls.crl_file, client_ca_file, refresh=mtls.crl_refresh, clock=clock
            )
        authenticators.append(MtlsAuthenticator(mtls, clock=clock, revocation=revocation))
    return authenticators
