"""Who may ask for a decision: the TCP peers of ``decision.allowed_peers``.

An allow answer carries a freshly minted token, so the listener answers its gateway only.
The peer is the connection's own address (aiohttp's ``request.remote`` of the request as it
arrived, before the endpoint re-addresses it with X-Forwarded-For), never a header: a
forwarded address is believed only from a peer that passed this check. A connection
without an address (a Unix socket) is refused, like one from outside the networks
(fail closed), with 403 ``peer_not_allowed``, before anything else runs.

An IPv4 peer on a dual-stack socket is reported as ``::ffff:a.b.c.d``: it is matched as the
IPv4 address it is, against the IPv4 networks only. The networks are parsed once; the
answer for each peer string is kept in a small bounded table, so the check per request is
one dictionary lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from dragoman.pipeline.errors import Forbidden

CACHE_SIZE = 4096
"""Peers whose answer is remembered; past it the table starts over (a gateway has a few
addresses; a flood of others costs a parse each, never memory)."""


class PeerNotAllowed(Forbidden):
    """The connection's address is not in ``decision.allowed_peers`` (reason
    ``peer_not_allowed``), or it has none (reason ``peer_unknown``)."""

    code = "peer_not_allowed"
    title = "This listener answers its gateway only; the connection's address is not allowed."


class AllowedPeers:
    """The networks of ``decision.allowed_peers``, checked against a connection's address."""

    __slots__ = ("_known", "_v4", "_v6")

    def __init__(self, networks: Iterable[str]) -> None:
        """``networks``: CIDR strings, as settings validated them."""
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        for text in networks:
            network = ipaddress.ip_network(text)
            if isinstance(network, ipaddress.IPv4Network):
                v4.append(network)
            else:
                v6.append(network)
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)
        self._known: dict[str, bool] = {}

    def allows(self, peer: str | None) -> bool:
        """Whether ``peer`` (an address as aiohttp reports the connection's; None or
        anything that is no IP address: no) is inside one of the networks."""
        if not peer:
            return False
        known = self._known.get(peer)
        if known is None:
            known = self._check(peer)
            if len(self._known) >= CACHE_SIZE:
                self._known.clear()
            self._known[peer] = known
        return known

    def _check(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is None:
                return any(address in network for network in self._v6)
            address = mapped
        return any(address in network for network in self._v4)
