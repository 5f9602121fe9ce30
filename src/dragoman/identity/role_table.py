"""Roles of a principal by the `roles` table of an authenticator whose credential has none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class RoleTable:
    """Exact entries by lookup, `prefix*` entries by scan (tables are small)."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._exact = {k: frozenset(v) for k, v in table.items() if not k.endswith("*")}
        self._prefixes = tuple((k[:-1], frozenset(v)) for k, v in table.items() if k.endswith("*"))

    def roles_of(self, principal: str) -> frozenset[str]:
        roles = self._exact.get(principal, frozenset())
        for prefix, more in self._prefixes:
            if principal.startswith(prefix):
                roles = roles | more
        return roles
