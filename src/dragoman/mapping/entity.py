"""The account mapping entity (SEMANTICS §4): not a pair, a record with a history.

A mapping links one cloud account to one payment customer and says who may act for it:
each grant names a principal or a role and the operations it may ask for. A role grant is
capped by the role's definition in ``policy.roles`` (:mod:`dragoman.policy.roles`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dragoman.catalog.model import Operation
from dragoman.identity.principal import Principal
from dragoman.policy.roles import RolePolicy


class MappingStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    STALE = "stale"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Grant:
    """Who (a principal or a role) may ask for which operations.

    An operation entry is an operation id, a scope (``payment_methods:create``), a
    resource wildcard (``payment_methods:*``), or ``*`` for every operation.
    """

    operations: tuple[str, ...]
    principal: str | None = None
    role: str | None = None
    _entries: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.principal is None) == (self.role is None):
            raise ValueError("a grant names exactly one of principal and role")
        if not self.operations:
            raise ValueError("a grant names at least one operation")
        object.__setattr__(self, "_entries", frozenset(self.operations))

    def applies_to(self, principal: Principal) -> bool:
        if self.principal is not None:
            return self.principal == principal.subject
        return self.role in principal.roles

    def covers(self, operation: Operation) -> bool:
        return not self._entries.isdisjoint(operation.names)

    def to_json(self) -> dict[str, Any]:
        who = {"principal": self.principal} if self.principal is not None else {"role": self.role}
        return {**who, "operations": list(self.operations)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grant:
        return cls(
            operations=tuple(data["operations"]),
            principal=data.get("principal"),
            role=data.get("role"),
        )


def unknown_grant_entries(
    grants: tuple[Grant, ...] | list[Grant], catalog: list[Operation]
) -> list[str]:
    """Grant entries that name nothing in the catalog (a typo grants nothing, silently)."""
    known = {"*"}
    for operation in catalog:
        known.update((operation.id, operation.scope, operation.scope.split(":", 1)[0] + ":*"))
    return sorted({entry for grant in grants for entry in grant.operations if entry not in known})


@dataclass(frozen=True, slots=True)
class AccountMapping:
    id: str
    cloud_account: str = field(repr=False)
    payment_customer: str = field(repr=False)
    customer_index: str
    """The customer's blind index: how audit records name the customer."""
    status: MappingStatus
    created_at: datetime
    created_by: str
    verification_method: str
    verification_evidence: str | None
    last_validated_at: datetime
    version: int
    grants: tuple[Grant, ...]
    updated_by: str = ""

    def allows(self, principal: Principal, operation: Operation, policy: RolePolicy) -> bool:
        """Deny by default: some grant must apply to the principal and cover the operation,
        and a role grant never reaches beyond the role's definition in ``policy``."""
        return policy.allows(self, principal, operation)

    def allowed_operations(
        self, principal: Principal, catalog: list[Operation], policy: RolePolicy
    ) -> list[str]:
        return policy.allowed_operations(self, principal, catalog)
