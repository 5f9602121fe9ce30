"""Catalog settings: operations, risk tiers and customer bindings."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Section

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


RiskTier = Literal["read", "change", "destroy", "money"]
"""How much harm an operation can do: read < change < destroy < money (moves money)."""
RISK_TIERS: tuple[str, ...] = ("read", "change", "destroy", "money")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_JSON_POINTER = re.compile(r"^(/([^~/]|~[01])*)+$")


def default_tier(method: str) -> RiskTier:
    """The tier of an operation that names none: reads are ``read``, DELETE is ``destroy``,
    every other write is ``change`` (``money`` is never guessed)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "DELETE":
        return "destroy"
    return "change"


class CustomerBindingSettings(Section):
    """Where a request names the customer, and what dragoman does about it."""

    location: Literal["path", "query", "body", "header"] = Field(
        ..., description="Where the customer id appears: path, query, body (JSON) or header."
    )
    name: str = Field(
        ...,
        min_length=1,
        description=(
            "The path parameter, query parameter or header name; for `body`, a JSON pointer"
            " (RFC 6901) such as `/customer` or `/payment_method/customer`."
        ),
    )
    mode: Literal["enforce", "inject"] = Field(
        "enforce",
        description=(
            "`enforce`: the request must name the mapped customer there (absent or another:"
            " refused, `customer_mismatch`). `inject`: dragoman writes the mapped customer"
            " there itself (a different value sent by the caller is still refused)."
        ),
    )
    report_only: bool = Field(
        False,
        description=(
            "Report only: where this binding would refuse a request, its audit record gains a"
            " `would_deny` entry and the request goes on (`dragoman audit report`)."
        ),
    )

    @model_validator(mode="after")
    def _fits_location(self) -> CustomerBindingSettings:
        if self.report_only and self.mode == "inject":
            raise ValueError("an inject binding rewrites the request; only enforce can report")
        if self.location == "path" and self.mode == "inject":
            raise ValueError("a path binding can only be enforced (the path names the customer)")
        if self.location == "body" and not _JSON_POINTER.match(self.name):
            raise ValueError("a body binding's name is a JSON pointer such as '/customer'")
        if self.location == "header" and not _HEADER_NAME.match(self.name):
            raise ValueError("a header binding's name is an HTTP header name")
        return self


PROXY_OWN_PREFIXES = ("/_dragoman/",)
PROXY_OWN_PATHS = frozenset({"/livez", "/readyz", "/.well-known/jwks.json"})
"""Paths the proxy answers itself (health, JWKS, its own endpoints and pages): the one list
of them. No operation's template may be one, and no request for one, whatever its method,
is matched to an operation (:class:`~dragoman.catalog.matcher.RouteMatcher`)."""


def proxy_answers(path: str) -> bool:
    """Whether ``path`` (decoded) is one of the proxy's own paths or under one of its own
    prefixes."""
    return path.startswith(PROXY_OWN_PREFIXES) or path in PROXY_OWN_PATHS


class OperationSettings(Section):
    id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="Operation id.")
    method: HttpMethod = Field(..., description="HTTP method.")
    path: str = Field(
        ..., description="Path template, `{name}` for a whole-segment parameter: /v1/x/{id}."
    )
    scope: str = Field(
        ...,
        pattern=r"^[a-z0-9_.-]+:[a-z0-9_.-]+$",
        description="Scope of the minted token, `resource:action`.",
    )
    tier: RiskTier | None = Field(
        None,
        description=(
            "Risk tier: read, change, destroy or money. Default: read for GET/HEAD, destroy"
            " for DELETE, change otherwise. `policy.step_up` names tiers that need a recent"
            " sign-in."
        ),
    )
    customer_param: str | None = Field(
        None,
        description=(
            "Shorthand for one enforced path binding: the path parameter that names the"
            " customer; it must equal the mapped customer."
        ),
    )
    customer: list[CustomerBindingSettings] = Field(
        default_factory=list,
        description="Every place the request names the customer (path, query, body, header).",
    )

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        # Local import: the catalog depends on settings, not the other way round.
        from dragoman.catalog.template import parse_template

        parse_template(value)
        if proxy_answers(value):
            raise ValueError("the proxy answers this path itself; it cannot be an operation")
        return value

    @model_validator(mode="after")
    def _customer_param_in_template(self) -> OperationSettings:
        from dragoman.catalog.template import parse_template

        params = {s.name for s in parse_template(self.path) if s.is_param}
        if self.customer_param is not None and self.customer_param not in params:
            raise ValueError(f"customer_param {self.customer_param!r} is not in the path")
        for binding in self.customer:
            if binding.location == "path" and binding.name not in params:
                raise ValueError(f"customer path binding {binding.name!r} is not in the path")
        places = [
            (b.location, b.name.lower() if b.location == "header" else b.name)
            for b in self.customer
        ]
        if len(set(places)) != len(places):
            raise ValueError("two customer bindings name the same place")
        return self

    @property
    def effective_tier(self) -> RiskTier:
        return self.tier if self.tier is not None else default_tier(self.method)

    @property
    def bindings(self) -> list[CustomerBindingSettings]:
        """Every binding, ``customer_param`` included (as an enforced path binding)."""
        found = list(self.customer)
        named = {b.name for b in found if b.location == "path"}
        if self.customer_param is not None and self.customer_param not in named:
            found.insert(0, CustomerBindingSettings(location="path", name=self.customer_param))
        return found


class CatalogSettings(Section):
    operations: list[OperationSettings] = Field(
        default_factory=list,
        description="The operations the upstream serves; every other request is refused.",
    )

    @model_validator(mode="after")
    def _unique(self) -> CatalogSettings:
        ids = [o.id for o in self.operations]
        if len(set(ids)) != len(ids):
            raise ValueError("operation ids must be unique")
        routes = [(o.method, o.path) for o in self.operations]
        if len(set(routes)) != len(routes):
            raise ValueError("two operations share one method and path")
        return self
