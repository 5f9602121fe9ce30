"""The role policy (``policy.roles``): what a role may ever ask for, whatever a mapping says.

A principal may do an operation when some grant of its mapping applies to it and covers the
operation, and, for a grant to a role, the role's definition here covers the operation too:
a mapping's role grant never reaches beyond the role's definition. A role that is not
defined here grants nothing (deny by default), and a grant naming one is refused where
grants are written (``dragoman mappings add`` and ``link``, registration's default grants at
start). Grants to a principal by name are not capped by any role.

A role entry is an operation id, a scope (``payment_methods:create``), a resource wildcard
(``payment_methods:*``), ``tier:<read|change|destroy|money>`` for every operation of that
risk tier, or ``*`` for every operation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from dragoman.catalog.model import Operation
from dragoman.settings import RISK_TIERS, PolicySettings

if TYPE_CHECKING:
    from dragoman.identity.principal import Principal
    from dragoman.mapping.entity import AccountMapping, Grant


def entry_covers(entry: str, operation: Operation) -> bool:
    """Whether one role entry names ``operation``."""
    return entry in operation.role_names


class RolePolicy:
    """The roles of ``policy.roles``, and the decision a request is granted by."""

    def __init__(self, roles: Mapping[str, Sequence[str]], report_only: Iterable[str] = ()) -> None:
        self._roles = {role: frozenset(entries) for role, entries in roles.items()}
        self._report_only = frozenset(report_only)

    @classmethod
    def from_settings(cls, settings: PolicySettings) -> RolePolicy:
        return cls(settings.roles, settings.report_only_roles)

    def defines(self, role: str) -> bool:
        return role in self._roles

    def role_covers(self, role: str, operation: Operation) -> bool:
        """Whether ``role`` may ever ask for ``operation`` (an undefined role: never)."""
        entries = self._roles.get(role)
        return entries is not None and not entries.isdisjoint(operation.role_names)

    def grant_allows(self, grant: Grant, principal: Principal, operation: Operation) -> bool:
        if not (grant.applies_to(principal) and grant.covers(operation)):
            return False
        return grant.role is None or self.role_covers(grant.role, operation)

    def allows(self, mapping: AccountMapping, principal: Principal, operation: Operation) -> bool:
        """Deny by default: some grant applies to the principal and covers the operation,
        and a role grant's role covers it too."""
        return any(self.grant_allows(g, principal, operation) for g in mapping.grants)

    def report_only_role(
        self, mapping: AccountMapping, principal: Principal, operation: Operation
    ) -> str | None:
        """For a request :meth:`allows` refuses: the report-only role whose definition alone
        refuses it (a grant of that role applies to the principal and covers the
        operation), or None when the mapping's grants refuse it themselves."""
        if not self._report_only:
            return None
        for grant in mapping.grants:
            if (
                grant.role in self._report_only
                and grant.applies_to(principal)
                and grant.covers(operation)
            ):
                return grant.role
        return None

    def allowed_operations(
        self, mapping: AccountMapping, principal: Principal, catalog: Iterable[Operation]
    ) -> list[str]:
        """The ids of the catalog operations ``principal`` may ask for (whoami), including
        those only a report-only role's definition would refuse (they are served)."""
        return [
            op.id
            for op in catalog
            if self.allows(mapping, principal, op)
            or self.report_only_role(mapping, principal, op) is not None
        ]

    def undefined_roles(self, roles: Iterable[str | None]) -> list[str]:
        """The roles (of grants; None for a principal grant) this policy does not define:
        a grant to one would grant nothing."""
        return sorted({r for r in roles if r is not None and r not in self._roles})

    def unknown_entries(self, catalog: Sequence[Operation]) -> list[str]:
        """Role entries that name nothing in the catalog (a typo would grant nothing)."""
        known = {"*", *(f"tier:{tier}" for tier in RISK_TIERS)}
        for operation in catalog:
            known.update((operation.id, operation.scope, operation.scope.split(":", 1)[0] + ":*"))
        return sorted({e for entries in self._roles.values() for e in entries if e not in known})


def undefined_roles_message(roles: Sequence[str]) -> str:
    """The complaint about grants naming roles that policy.roles does not define."""
    return (
        f"grants name roles that policy.roles does not define: {', '.join(roles)}"
        " (a role not defined there grants nothing; define it or grant another role)"
    )
