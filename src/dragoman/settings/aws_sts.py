"""The `aws-sts` authenticator: AWS principals prove themselves with a presigned STS
GetCallerIdentity request (docs/identity.md)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section, check_http_url
from dragoman.settings.principals import ROLE_TABLE_DESCRIPTION, RoleTable, check_role_table

AwsPartition = Literal["aws", "aws-cn", "aws-us-gov"]

REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$")


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class AwsStsSettings(Section):
    name: str = Field(
        "aws",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Short name of this authenticator, used in audit records.",
    )
    binding_id: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9._:/-]{1,128}$",
        description=(
            "Value of the `x-dragoman-id` header every presigned request must have signed:"
            " a URL presigned for another service (another value, or no such header) cannot"
            " be replayed here. Give each dragoman deployment its own."
        ),
    )
    partition: AwsPartition = Field("aws", description="The AWS partition callers belong to.")
    regions: list[str] = Field(
        ...,
        min_length=1,
        description=(
            "Regions whose STS endpoint (`sts.REGION.amazonaws.com`, `.com.cn` in aws-cn) a"
            " presigned request may name; each in `partition`."
        ),
    )
    allow_global_endpoint: bool = Field(
        False,
        description=(
            "Also accept the global endpoint `sts.amazonaws.com` (signed for us-east-1;"
            " partition aws only)."
        ),
    )
    accounts: list[str] = Field(
        default_factory=list,
        description=(
            "AWS account ids (12 digits) whose principals are accepted; empty: any account"
            " (the mapping still decides which accounts reach a customer)."
        ),
    )
    roles: RoleTable = Field(default_factory=dict, description=ROLE_TABLE_DESCRIPTION)
    principal_prefix: str = Field("", description="Prepended to the principal (the canonical ARN).")
    account_prefix: str = Field("", description="Prepended to the AWS account id.")
    max_age: Duration = Field(
        900.0,
        ge=10,
        le=900,
        description="Oldest `X-Amz-Date` accepted (STS itself honours at most 15 minutes).",
    )
    leeway: Duration = Field(
        30.0, ge=0, le=120, description="Clock leeway for an `X-Amz-Date` in the future."
    )
    cache_ttl: Duration = Field(
        60.0,
        ge=0,
        le=300,
        description=(
            "How long STS's answer for one presigned request is reused (never past the"
            " request's own expiry); 0: ask STS every time."
        ),
    )
    http_timeout: Duration = Field(5.0, gt=0, le=30, description="Timeout of the call to STS.")
    connect_to: str | None = Field(
        None,
        description=(
            "Send STS calls to this URL instead of the presigned host (the signed `Host`"
            " header is kept): a private endpoint, or a local STS in tests. https unless"
            " loopback."
        ),
    )

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if not REGION.match(region):
                raise ValueError(f"{region!r} is not an AWS region name")
        return value

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, value: list[str]) -> list[str]:
        for account in value:
            if not re.fullmatch(r"[0-9]{12}", account):
                raise ValueError("an AWS account id is 12 digits")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: RoleTable) -> RoleTable:
        return check_role_table(value)

    @field_validator("connect_to")
    @classmethod
    def _connect_to(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_http_url(value, require_tls=True, allow_path=False).rstrip("/")

    @model_validator(mode="after")
    def _regions_in_partition(self) -> AwsStsSettings:
        outside = [r for r in self.regions if partition_of(r) != self.partition]
        if outside:
            raise ValueError(f"regions {outside} are not in partition {self.partition}")
        if self.allow_global_endpoint and self.partition != "aws":
            raise ValueError("the global STS endpoint exists in partition aws only")
        return self

    def allowed_hosts(self) -> dict[str, str]:
        """STS host name -> the region its requests are signed for."""
        suffix = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        hosts = {f"sts.{region}.{suffix}": region for region in self.regions}
        if self.allow_global_endpoint:
            hosts["sts.amazonaws.com"] = "us-east-1"
        return hosts
