"""Policy settings: roles and step-up per risk tier."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section
from dragoman.settings.catalog import RISK_TIERS, RiskTier

_ACR_VALUE = re.compile(r'^[^\s"\\]+$')


class StepUpSettings(Section):
    """What a recent enough sign-in is, for the operations of one risk tier (RFC 9470)."""

    disabled: bool = Field(
        False,
        description=(
            "Remove this tier's step-up, default included: `money = { disabled = true }`"
            " (`DRAGOMAN_POLICY__STEP_UP__MONEY__DISABLED=true`) drops the default money"
            " step-up. Other keys of a disabled entry are ignored."
        ),
    )
    max_age: Duration | None = Field(
        None,
        gt=0,
        le=86400,
        description="The identity token's `auth_time` must be at most this old (a day at most).",
    )
    acr_values: list[str] = Field(
        default_factory=list,
        description="The identity token's `acr` must be one of these (empty: not checked).",
    )
    report_only: bool = Field(
        False,
        description=(
            "Report only: where this step-up would refuse a request, its audit record gains a"
            " `would_deny` entry and the request goes on (`dragoman audit report`)."
        ),
    )

    @field_validator("acr_values")
    @classmethod
    def _acr_tokens(cls, value: list[str]) -> list[str]:
        for acr in value:
            if not _ACR_VALUE.match(acr):
                raise ValueError("an acr value is non-empty, without spaces, quotes or '\\'")
        return value

    @model_validator(mode="after")
    def _something(self) -> StepUpSettings:
        if not self.disabled and self.max_age is None and not self.acr_values:
            raise ValueError("a step-up names max_age, acr_values or both")
        return self


def _default_roles() -> dict[str, list[str]]:
    return {
        "viewer": ["tier:read"],
        "billing_admin": ["tier:read", "tier:change", "tier:destroy"],
        "owner": ["*"],
    }


def _default_step_up() -> dict[RiskTier, StepUpSettings]:
    return {"money": StepUpSettings(max_age=300.0)}


class PolicySettings(Section):
    """What each role may ask for, and which risk tiers need a recent sign-in. A mapping
    grants roles (and principals) operations; a role grant never reaches beyond the role's
    definition here, and a role not defined here grants nothing."""

    roles: dict[str, list[str]] = Field(
        default_factory=_default_roles,
        description=(
            "Role -> what it may ask for: operation ids, scopes, `resource:*`, `tier:<tier>`"
            " or `*`. Default: viewer = tier:read; billing_admin = tier:read, tier:change,"
            " tier:destroy; owner = *."
        ),
    )
    step_up: dict[RiskTier, StepUpSettings] = Field(
        default_factory=_default_step_up,
        description=(
            "Risk tier -> the recent sign-in its operations need (otherwise 401"
            " insufficient_user_authentication). Default: money needs auth_time within 5m."
            " The tiers named here are added to the defaults: a tier named here replaces"
            " that tier's entry only (`[policy.step_up.destroy]` keeps the money default);"
            " to remove a default, write `money = { disabled = true }`."
        ),
    )

    report_only_roles: list[str] = Field(
        default_factory=list,
        description=(
            "Roles whose definition is under evaluation: a request a mapping's grant of the"
            " role covers but the role's definition does not goes on, and its audit record"
            " gains a `would_deny` entry (scope_denied). The mapping's grants always apply."
        ),
    )

    @field_validator("step_up", mode="before")
    @classmethod
    def _step_up_over_defaults(cls, value: Any) -> Any:
        # Naming one tier must not drop the default ones (that would fail open).
        if isinstance(value, Mapping):
            return {**_default_step_up(), **value}
        return value

    @field_validator("step_up")
    @classmethod
    def _drop_disabled(
        cls, value: dict[RiskTier, StepUpSettings]
    ) -> dict[RiskTier, StepUpSettings]:
        return {tier: step_up for tier, step_up in value.items() if not step_up.disabled}

    @model_validator(mode="after")
    def _report_only_roles_defined(self) -> PolicySettings:
        undefined = sorted(set(self.report_only_roles) - set(self.roles))
        if undefined:
            raise ValueError(
                f"report_only_roles names roles that roles does not define: {', '.join(undefined)}"
            )
        return self

    @field_validator("roles")
    @classmethod
    def _role_entries(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, entries in value.items():
            if not entries:
                raise ValueError(f"role {role!r} grants nothing; remove it or name entries")
            for entry in entries:
                tier = entry.removeprefix("tier:")
                if entry.startswith("tier:") and tier not in RISK_TIERS:
                    raise ValueError(f"role {role!r}: unknown tier {tier!r}")
        return value
