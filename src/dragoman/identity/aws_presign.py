"""The checks of a presigned STS GetCallerIdentity URL made before STS is asked anything.

A caller proves its AWS identity by presigning ``GET https://sts.REGION.amazonaws.com/
?Action=GetCallerIdentity`` with its credentials and handing dragoman the URL; dragoman replays
it to STS, which answers with the caller's ARN (the aws-iam-authenticator pattern). The URL
is attacker-controlled, so everything that decides where it goes and what it asks is checked
here first: an allowed STS host, the path ``/``, one action, known parameters only, a short
and current validity window, and a signed ``x-dragoman-id`` header that binds the signature to
this deployment (a URL presigned for another service that uses the same pattern cannot be
replayed here, and one presigned for here cannot be replayed at another service).

The credential travels as ``Authorization: Bearer dragoman-aws-v1.<base64url(URL)>``.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from dragoman.pipeline.errors import Unauthenticated

TOKEN_PREFIX = "dragoman-aws-v1."  # noqa: S105 (a format marker, not a secret)
BINDING_HEADER = "x-dragoman-id"
MAX_EXPIRES = 900
"""STS honours a presigned GetCallerIdentity for at most 15 minutes."""

ACTION = "GetCallerIdentity"
VERSION = "2011-06-15"
ALGORITHM = "AWS4-HMAC-SHA256"
REQUIRED = (
    "Action",
    "Version",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
ALLOWED = frozenset((*REQUIRED, "X-Amz-Security-Token"))
SIGNED_HEADERS = frozenset(("host", BINDING_HEADER))

_CREDENTIAL = re.compile(
    r"^(?P<key>[A-Z0-9]{16,128})/(?P<day>[0-9]{8})/(?P<region>[a-z0-9-]{1,32})"
    r"/(?P<service>[a-z0-9-]{1,32})/aws4_request$"
)
_DATE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_URL_CHARS = re.compile(r"^[!-~]+$")
"""Printable ASCII without spaces: nothing a parser could read two ways."""


def refuse(reason: str, detail: str) -> Unauthenticated:
    return Unauthenticated(reason, detail)


@dataclass(frozen=True, slots=True)
class PresignedCallerIdentity:
    """A presigned GetCallerIdentity URL that passed every check made without STS."""

    url: str
    """The URL exactly as signed (its query is replayed byte for byte)."""
    host: str
    region: str
    access_key_id: str
    signed_at: float
    expires_at: float

    @property
    def raw_query(self) -> str:
        return self.url.partition("?")[2]


def decode_token(token: str) -> str:
    """The URL inside a ``dragoman-aws-v1.`` bearer value."""
    encoded = token[len(TOKEN_PREFIX) :]
    if not encoded or "=" in encoded:
        raise refuse("aws_token_malformed", "The AWS credential is not base64url without padding.")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
        url = raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise refuse(
            "aws_token_malformed", "The AWS credential is not base64url without padding."
        ) from None
    if not _URL_CHARS.match(url):
        raise refuse("aws_token_malformed", "The presigned URL has characters a URL cannot have.")
    return url


def _parameters(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise refuse("aws_token_malformed", "The presigned URL's query is malformed.") from None
    found: dict[str, str] = {}
    seen_folded: set[str] = set()
    for name, value in pairs:
        if name not in ALLOWED:
            raise refuse(
                "aws_parameter_not_allowed",
                "The presigned URL carries a parameter GetCallerIdentity does not use.",
            )
        # Twice, or twice in two spellings: STS and this check might read different ones.
        if name.lower() in seen_folded:
            raise refuse("aws_token_malformed", "A parameter of the presigned URL is repeated.")
        seen_folded.add(name.lower())
        found[name] = value
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise refuse("aws_token_malformed", "The presigned URL lacks a SigV4 query parameter.")
    return found


def _timestamp(amz_date: str) -> float:
    if not _DATE.match(amz_date):
        raise refuse("aws_token_malformed", "X-Amz-Date is not a SigV4 timestamp.")
    try:
        parsed = time.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise refuse("aws_token_malformed", "X-Amz-Date is not a SigV4 timestamp.") from None
    return float(calendar.timegm(parsed))


def check_presigned(
    url: str,
    *,
    hosts: Mapping[str, str],
    now: float,
    max_age: float,
    leeway: float,
) -> PresignedCallerIdentity:
    """Every check of the presigned ``url`` that needs no network. ``hosts`` maps each
    allowed STS host to the region its requests are signed for."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise refuse("aws_sts_endpoint_not_allowed", "The presigned URL must use https.")
    # netloc, not hostname: a port, user info or a differently-cased host is not allowed.
    region = hosts.get(parts.netloc)
    if region is None:
        raise refuse(
            "aws_sts_endpoint_not_allowed", "The presigned URL names an STS endpoint not allowed."
        )
    if parts.path != "/" or parts.fragment or "#" in url:
        raise refuse("aws_token_malformed", "The presigned URL's path must be `/`.")
    params = _parameters(parts.query)
    if params["Action"] != ACTION:
        raise refuse("aws_action_not_allowed", "The presigned request is not GetCallerIdentity.")
    if params["Version"] != VERSION or params["X-Amz-Algorithm"] != ALGORITHM:
        raise refuse(
            "aws_token_malformed", "The presigned request's version or algorithm is wrong."
        )
    credential = _CREDENTIAL.match(params["X-Amz-Credential"])
    if credential is None:
        raise refuse("aws_token_malformed", "X-Amz-Credential is not a SigV4 credential scope.")
    if credential["service"] != "sts" or credential["region"] != region:
        raise refuse(
            "aws_sts_endpoint_not_allowed",
            "The presigned request is signed for another service or region than its host.",
        )
    signed_headers = params["X-Amz-SignedHeaders"].split(";")
    if BINDING_HEADER not in signed_headers:
        raise refuse(
            "aws_binding_missing",
            f"The presigned request must sign the {BINDING_HEADER} header.",
        )
    if set(signed_headers) != SIGNED_HEADERS or len(signed_headers) != len(SIGNED_HEADERS):
        raise refuse(
            "aws_signed_headers_not_allowed",
            f"The presigned request may sign only host and {BINDING_HEADER}.",
        )
    if not _SIGNATURE.match(params["X-Amz-Signature"]):
        raise refuse("aws_token_malformed", "X-Amz-Signature is not a SigV4 signature.")
    expires = params["X-Amz-Expires"]
    if not expires.isdigit() or len(expires) > 4 or int(expires) < 1:
        raise refuse("aws_token_malformed", "X-Amz-Expires is not a number of seconds.")
    if int(expires) > MAX_EXPIRES:
        raise refuse("aws_expires_too_long", "X-Amz-Expires may be at most 900 seconds.")
    amz_date = params["X-Amz-Date"]
    signed_at = _timestamp(amz_date)
    if credential["day"] != amz_date[:8]:
        raise refuse("aws_token_malformed", "The credential scope's day is not X-Amz-Date's.")
    if signed_at > now + leeway:
        raise refuse("aws_presign_not_yet_valid", "The presigned request is dated in the future.")
    expires_at = min(signed_at + int(expires), signed_at + max_age)
    if now >= expires_at:
        raise refuse("aws_presign_expired", "The presigned request has expired.")
    return PresignedCallerIdentity(
        url=url,
        host=parts.netloc,
        region=region,
        access_key_id=credential["key"],
        signed_at=signed_at,
        expires_at=expires_at,
    )
