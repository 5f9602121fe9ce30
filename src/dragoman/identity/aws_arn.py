"""The principal an STS caller ARN stands for.

GetCallerIdentity names an assumed-role session (``arn:aws:sts::111122223333:assumed-role/
Billing/alice``); sessions come and go with every sign-in, so the principal is the role
(``arn:aws:iam::111122223333:role/Billing``). IAM users, the account root and federated
users are their own principals. Anything else is refused rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dragoman.pipeline.errors import Unauthenticated

_ARN = re.compile(
    r"^arn:(?P<partition>aws|aws-cn|aws-us-gov):(?P<service>iam|sts)::(?P<account>[0-9]{12})"
    r":(?P<resource>[!-~]{1,1600})$"
)
_NAME = r"[\w+=,.@-]{1,128}"
_ROLE_SESSION = re.compile(rf"^assumed-role/(?P<role>{_NAME})/(?P<session>[\w+=,.@:-]{{2,64}})$")
_IAM_RESOURCE = re.compile(rf"^(user|role)(/[\x21-\x7e]{{0,510}})?/{_NAME}$|^root$")
_FEDERATED = re.compile(rf"^federated-user/{_NAME}$")


@dataclass(frozen=True, slots=True)
class AwsPrincipal:
    arn: str
    """The canonical ARN: the role of an assumed-role session, else the caller's ARN."""
    partition: str
    account: str
    session: str | None
    """The role session name of an assumed-role caller."""


def canonical_principal(arn: str) -> AwsPrincipal:
    """The principal ``arn`` (as GetCallerIdentity answered it) stands for."""
    match = _ARN.match(arn)
    if match is None:
        raise Unauthenticated(
            "aws_principal_unsupported", "STS named a principal of no known kind."
        )
    partition, service, account, resource = match.group(
        "partition", "service", "account", "resource"
    )
    if service == "sts":
        session = _ROLE_SESSION.match(resource)
        if session is not None:
            role = session["role"]
            return AwsPrincipal(
                f"arn:{partition}:iam::{account}:role/{role}",
                partition,
                account,
                session["session"],
            )
        if _FEDERATED.match(resource):
            return AwsPrincipal(arn, partition, account, None)
    elif _IAM_RESOURCE.match(resource):
        return AwsPrincipal(arn, partition, account, None)
    raise _unsupported()


def _unsupported() -> Unauthenticated:
    return Unauthenticated("aws_principal_unsupported", "STS named a principal of no known kind.")
