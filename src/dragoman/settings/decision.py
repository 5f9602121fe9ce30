"""The decision API (docs/decision.md): nginx ``auth_request`` and Envoy ``ext_authz``."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from dragoman.settings.base import Section
from dragoman.settings.server import TlsSettings

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def check_peer_networks(value: list[str]) -> list[str]:
    """``decision.allowed_peers``: at least one IP network, each in CIDR notation (a bare
    address is a network of one) without host bits, none written as IPv4-mapped IPv6.
    Entries are named by their position, never echoed. Returns the canonical spellings."""
    if not value:
        raise ValueError(
            'must name at least one network; to allow any peer write ["0.0.0.0/0", "::/0"]'
        )
    canonical = []
    for position, entry in enumerate(value):
        try:
            network = ipaddress.ip_network(entry.strip())
        except ValueError:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"entry {position} is not an IP network (CIDR such as 10.0.0.0/8 or"
                    " fd00::/8, or one address)"
                ) from None
            raise ValueError(
                f"entry {position} has host bits set: write the network's own address"
                " (10.0.0.0/8, not 10.0.0.1/8)"
            ) from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            raise ValueError(
                f"entry {position} is an IPv4-mapped IPv6 network: write it as IPv4 (peers"
                " reported as ::ffff:a.b.c.d are matched against the IPv4 networks)"
            )
        canonical.append(str(network))
    return canonical


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
    allowed_peers: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description=(
            "IP networks (CIDR) the gateway connects from: a connection from any other"
            " address (the TCP peer's, never a forwarded header's), or from no address (a"
            " Unix socket), is refused with 403 peer_not_allowed before anything else. Never"
            ' empty: to allow any peer, write ["0.0.0.0/0", "::/0"]. An IPv4 peer reported as'
            " ::ffff:a.b.c.d matches the IPv4 networks."
        ),
    )
    trust_forwarded_for: bool = Field(
        True,
        description=(
            "Record the caller's address as the last entry of the gateway's X-Forwarded-For"
            " (the address the gateway saw); off: record the gateway's own address."
            " Believed from allowed_peers only."
        ),
    )
    tls: TlsSettings | None = Field(
        None,
        description=(
            "Serve the decision listener over HTTPS (TLS 1.2 at least) with a certificate of"
            " its own, independent of `server.tls`; unset: plain http. Set it when the gateway"
            " is on another host: otherwise the caller's bearer token and the minted token"
            " cross the network in clear. With `client_ca_file` and"
            ' `client_auth = "required"` (the only mode accepted here) a gateway without a'
            " certificate from those CAs fails the handshake; allowed_peers still applies."
            " The certificate admits the gateway only; it never authenticates a caller."
        ),
    )

    @field_validator("allowed_peers")
    @classmethod
    def _allowed_peers(cls, value: list[str]) -> list[str]:
        return check_peer_networks(value)

    @field_validator("tls")
    @classmethod
    def _gateway_certificate_required(cls, value: TlsSettings | None) -> TlsSettings | None:
        # Here a client certificate only admits the gateway: `optional` would admit anyone
        # without one, so a client_ca_file would look like a fence and be none.
        if (
            value is not None
            and value.client_ca_file is not None
            and value.client_auth != "required"
        ):
            raise ValueError(
                'client_auth must be "required" with client_ca_file (on the decision'
                " listener a certificate only admits the gateway; optional would let"
                " anyone without one in)"
            )
        return value
