"""The decision API (docs/decision.md): nginx ``auth_request`` and Envoy ``ext_authz``."""

from __future__ import annotations

from pydantic import Field

from dragoman.settings.base import Section


class DecisionSettings(Section):
    """The decision listener: a gateway in front of the upstream asks dragoman about each
    request and forwards it itself with the token dragoman minted. It has its own listener,
    never the proxy's port: an allow answer carries a minted token, so only the gateway may
    reach it."""

    enabled: bool = Field(False, description="Serve the decision API on `host`:`port`.")
    host: str = Field(
        "127.0.0.1",
        description=(
            "Address of the decision listener; only the gateway may reach it (an allow answer"
            " carries a minted token). Keep it on loopback or a private interface."
        ),
    )
    port: int = Field(
        9191,
        ge=0,
        le=65535,
        description=(
            "TCP port of the decision listener (0: any free port, with one worker only). Every"
            " worker shares it."
        ),
    )
    trust_forwarded_for: bool = Field(
        True,
        description=(
            "Record the caller's address as the last entry of the gateway's X-Forwarded-For"
            " (the address the gateway saw); off: record the gateway's own address."
        ),
    )
