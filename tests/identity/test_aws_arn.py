"""The principal an STS caller ARN stands for: assumed-role sessions become their role."""

from __future__ import annotations

import pytest

from dragoman.identity.aws_arn import canonical_principal
from dragoman.pipeline.errors import Unauthenticated


@pytest.mark.parametrize(
    ("arn", "principal", "session"),
    [
        (
            "arn:aws:sts::111122223333:assumed-role/BillingAdmin/alice@example.com",
            "arn:aws:iam::111122223333:role/BillingAdmin",
            "alice@example.com",
        ),
        (
            "arn:aws-cn:sts::111122223333:assumed-role/ops.role/i-0123456789abcdef0",
            "arn:aws-cn:iam::111122223333:role/ops.role",
            "i-0123456789abcdef0",
        ),
        (
            "arn:aws-us-gov:sts::111122223333:assumed-role/AWSReservedSSO_Admin_0123/bob",
            "arn:aws-us-gov:iam::111122223333:role/AWSReservedSSO_Admin_0123",
            "bob",
        ),
        (
            "arn:aws:iam::111122223333:user/ci/deployer",
            "arn:aws:iam::111122223333:user/ci/deployer",
            None,
        ),
        ("arn:aws:iam::111122223333:root", "arn:aws:iam::111122223333:root", None),
        (
            "arn:aws:sts::111122223333:federated-user/carol",
            "arn:aws:sts::111122223333:federated-user/carol",
            None,
        ),
    ],
)
def test_caller_arn_maps_to_its_canonical_principal(
    arn: str, principal: str, session: str | None
) -> None:
    found = canonical_principal(arn)
    assert (found.arn, found.account, found.session) == (principal, "111122223333", session)


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iam::111122223333:group/admins",
        "arn:aws:sts::111122223333:assumed-role/OnlyRole",
        "arn:aws:sts::111122223333:assumed-role/Role/session/extra",
        "arn:aws:s3:::bucket",
        "arn:aws:iam::1111222233:root",
        "arn:other:iam::111122223333:root",
        "arn:aws:iam::111122223333:user/a b",
        "",
    ],
)
def test_caller_arn_of_no_known_kind_is_refused(arn: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        canonical_principal(arn)
    assert refused.value.reason == "aws_principal_unsupported"
