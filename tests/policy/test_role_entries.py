"""Which entries of a grant and of a role name an operation: the rules the request path
checks on every call, against sets computed once per operation."""

from __future__ import annotations

from dragoman.catalog.model import Operation
from dragoman.catalog.template import parse_template
from dragoman.identity.principal import Principal
from dragoman.mapping.entity import Grant
from dragoman.policy.roles import RolePolicy, entry_covers
from dragoman.settings import RiskTier


def operation(op_id: str, scope: str, tier: RiskTier = "read") -> Operation:
    template = "/v1/things"
    return Operation(
        id=op_id,
        method="GET",
        template=template,
        scope=scope,
        customer_param=None,
        segments=parse_template(template),
        tier=tier,
    )


LIST = operation("payment_methods.list", "payment_methods:read")
CHARGE = operation("charges.create", "charges:create", tier="money")
CALLER = Principal(
    subject="user:alice",
    cloud_account="acct-1",
    issuer="https://idp",
    authenticator="idp",
    roles=frozenset({"viewer"}),
)


def test_a_grant_entry_names_an_operation_by_id_scope_resource_wildcard_or_star() -> None:
    for entry in ("payment_methods.list", "payment_methods:read", "payment_methods:*", "*"):
        assert Grant(operations=(entry,), role="viewer").covers(LIST), entry


def test_a_grant_entry_for_another_operation_resource_or_tier_names_nothing_here() -> None:
    for entry in ("charges.create", "charges:*", "payment_methods:create", "tier:read"):
        assert not Grant(operations=(entry,), role="viewer").covers(LIST), entry


def test_a_role_entry_names_operations_by_tier_too() -> None:
    assert entry_covers("tier:read", LIST)
    assert not entry_covers("tier:money", LIST)
    assert entry_covers("tier:money", CHARGE)


def test_in_a_role_a_tier_entry_names_the_tier_even_where_a_scope_is_spelled_the_same() -> None:
    # A scope may read "tier:read"; in a role that entry still means the tier only.
    odd = operation("odd.op", "tier:read", tier="money")
    assert not entry_covers("tier:read", odd)
    assert not entry_covers("tier:*", odd)
    assert entry_covers("tier:money", odd)
    assert entry_covers("odd.op", odd)
    # In a grant there are no tier entries: the scope is named as written.
    assert Grant(operations=("tier:read",), role="viewer").covers(odd)


def test_a_role_grant_is_capped_by_the_role_definition() -> None:
    policy = RolePolicy({"viewer": ["tier:read"]})
    grant = Grant(operations=("*",), role="viewer")
    assert policy.grant_allows(grant, CALLER, LIST)
    assert not policy.grant_allows(grant, CALLER, CHARGE)


def test_a_role_the_policy_does_not_define_grants_nothing() -> None:
    policy = RolePolicy({"owner": ["*"]})
    assert not policy.role_covers("viewer", LIST)
    assert not policy.grant_allows(Grant(operations=("*",), role="viewer"), CALLER, LIST)


def test_a_principal_grant_is_not_capped_by_any_role() -> None:
    policy = RolePolicy({})
    grant = Grant(operations=("charges:create",), principal="user:alice")
    assert policy.grant_allows(grant, CALLER, CHARGE)


def test_the_precomputed_entry_sets_stay_out_of_equality_and_repr() -> None:
    assert Grant(operations=("*",), role="viewer") == Grant(operations=("*",), role="viewer")
    assert "_entries" not in repr(Grant(operations=("*",), role="viewer"))
    assert "names" not in repr(LIST)
