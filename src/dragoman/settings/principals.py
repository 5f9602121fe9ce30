"""Roles given to principals by name, for authenticators whose credentials carry no roles
(AWS principals, TLS client certificates)."""

from __future__ import annotations

RoleTable = dict[str, list[str]]

ROLE_TABLE_DESCRIPTION = (
    "Roles by principal: an exact principal, or a prefix ending in `*`"
    " (`arn:aws:iam::123456789012:role/billing-*`). A principal gets the roles of every entry"
    " that matches it."
)


def check_role_table(table: RoleTable) -> RoleTable:
    for pattern, roles in table.items():
        if not pattern or pattern == "*":
            raise ValueError("a principal pattern must name something (not empty, not `*`)")
        if "*" in pattern[:-1]:
            raise ValueError(f"`*` may only end a pattern ({pattern!r})")
        if not roles or any(not r for r in roles):
            raise ValueError(f"the roles of {pattern!r} must be non-empty names")
    return table
