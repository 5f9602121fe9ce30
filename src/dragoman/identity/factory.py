"""The authenticators of step 1, in the order they are asked, from settings."""

from __future__ import annotations

import time
from collections.abc import Callable

from dragoman.identity.aws_sts import AwsStsAuthenticator
from dragoman.identity.base import Authenticator
from dragoman.identity.mtls import MtlsAuthenticator
from dragoman.identity.oidc import OidcAuthenticator
from dragoman.settings import IdentitySettings


def build_authenticators(
    settings: IdentitySettings,
    *,
    clock: Callable[[], float] = time.time,
    jwks_fetched: Callable[[str, str], None] | None = None,
) -> list[Authenticator]:
    """Bearer credentials first (each kind recognises its own), the TLS client certificate
    last: a request that carries an Authorization header is never authenticated by its
    connection instead, so a credential nobody recognises is refused, not ignored.
    ``jwks_fetched(issuer name, outcome)`` counts the OIDC key set fetches."""
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
        authenticators.append(MtlsAuthenticator(settings.mtls, clock=clock))
    return authenticators
