"""The operation catalog: method + path template -> operation -> scope, risk tier and the
places where a request names the customer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dragoman.catalog.template import Segment, parse_template
from dragoman.settings import CatalogSettings, RiskTier

BindingLocation = Literal["path", "query", "body", "header"]


@dataclass(frozen=True, slots=True)
class CustomerBinding:
    """One place where a request names the customer (SEMANTICS §4: the customer comes from
    the mapping, never from the caller)."""

    location: BindingLocation
    name: str
    """Path or query parameter, header name (lower case), or JSON pointer for the body."""
    mode: Literal["enforce", "inject"] = "enforce"
    report_only: bool = False
    """A refusal is recorded (``would_deny``), and the request goes on."""

    def rule(self, operation_id: str) -> str:
        """The binding's name in ``would_deny`` records."""
        return f"catalog.operations.{operation_id}.customer.{self.location}:{self.name}"


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation the upstream serves, and the single scope a token for it carries."""

    id: str
    method: str
    template: str
    scope: str
    customer_param: str | None
    """The path parameter that names the customer (the path binding), if any."""
    segments: tuple[Segment, ...]
    tier: RiskTier = "read"
    bindings: tuple[CustomerBinding, ...] = ()
    """Every place the request names the customer, the path binding included."""
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    """The grant entries that name this operation: ``*``, its id, its scope and its
    resource wildcard. Computed once: every request checks its grants against them."""
    role_names: frozenset[str] = field(init=False, repr=False, compare=False)
    """The role entries that name it: ``tier:<its tier>``, and those of :attr:`names` that
    do not start with ``tier:`` (in a role, such an entry only ever names a tier)."""

    def __post_init__(self) -> None:
        resource = self.scope.split(":", 1)[0]
        names = frozenset(("*", self.id, self.scope, f"{resource}:*"))
        role_names = {name for name in names if not name.startswith("tier:")}
        role_names.add(f"tier:{self.tier}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "role_names", frozenset(role_names))

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD")


def operations_from_settings(settings: CatalogSettings) -> list[Operation]:
    operations = []
    for op in settings.operations:
        bindings = tuple(
            CustomerBinding(
                location=b.location,
                name=b.name.lower() if b.location == "header" else b.name,
                mode=b.mode,
                report_only=b.report_only,
            )
            for b in op.bindings
        )
        path_param = next((b.name for b in bindings if b.location == "path"), None)
        operations.append(
            Operation(
                id=op.id,
                method=op.method,
                template=op.path,
                scope=op.scope,
                customer_param=path_param,
                segments=parse_template(op.path),
                tier=op.effective_tier,
                bindings=bindings,
            )
        )
    return operations
