"""`[identity.aws_sts]` settings: mistakes are reported at load, naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dragoman.settings import AwsStsSettings
from settings_support import settings_problems


def problems_with(tmp_path: Path, table: dict[str, Any]) -> dict[str, str]:
    aws = {"binding_id": "proxy", "regions": ["eu-west-1"], **table}

    def edit(data: dict[str, Any]) -> None:
        data["identity"]["aws_sts"] = {k: v for k, v in aws.items() if v is not None}

    return settings_problems(tmp_path, edit)


def test_region_of_another_partition_names_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"regions": ["eu-west-1", "cn-north-1"]})
    assert "not in partition aws" in problems["identity.aws_sts"]


def test_malformed_region_names_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"regions": ["eu-west-1.evil.com"]})
    assert "identity.aws_sts.regions" in problems


def test_global_endpoint_outside_partition_aws_names_the_key(tmp_path: Path) -> None:
    table = {"partition": "aws-cn", "regions": ["cn-north-1"], "allow_global_endpoint": True}
    problems = problems_with(tmp_path, table)
    assert "global STS endpoint" in problems["identity.aws_sts"]


def test_missing_binding_id_names_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"binding_id": None})
    assert "identity.aws_sts.binding_id" in problems


def test_plain_http_connect_to_off_loopback_names_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"connect_to": "http://sts.internal.example"})
    assert "identity.aws_sts.connect_to" in problems


def test_account_id_of_wrong_shape_names_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"accounts": ["1234"]})
    assert "identity.aws_sts.accounts" in problems


def test_role_pattern_with_inner_wildcard_names_the_key(tmp_path: Path) -> None:
    problems = problems_with(tmp_path, {"roles": {"arn:aws:iam::*:role/x": ["viewer"]}})
    assert "identity.aws_sts.roles" in problems


def test_allowed_hosts_follow_partition_and_regions() -> None:
    china = AwsStsSettings(binding_id="p", partition="aws-cn", regions=["cn-north-1"])
    assert china.allowed_hosts() == {"sts.cn-north-1.amazonaws.com.cn": "cn-north-1"}
    both = AwsStsSettings(binding_id="p", regions=["eu-west-1"], allow_global_endpoint=True)
    assert both.allowed_hosts() == {
        "sts.eu-west-1.amazonaws.com": "eu-west-1",
        "sts.amazonaws.com": "us-east-1",
    }
