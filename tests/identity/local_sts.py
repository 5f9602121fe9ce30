"""An STS on 127.0.0.1 that answers GetCallerIdentity the way AWS does, for the aws-sts tests.

It checks SigV4 query signatures for real (botocore recomputes them with the caller's secret
key, so a changed header value or parameter fails as it would at AWS), honours
``X-Amz-Expires``, asks for the session token of temporary credentials, and answers JSON
when asked to. Tests can make it throttle, fail or stall, and read what it was asked.

moto's server mode was tried first: it routes a request without an Authorization header to
its S3 backend, and never reads the access key of a presigned query, so it cannot say whose
signature it got.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hmac
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlencode

import boto3
import botocore.auth
from aiohttp import web
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from dragoman.demo.runner import DEMO_GRANTS, DemoStack

BINDING = "x-dragoman-id"


@dataclass(frozen=True)
class AwsCaller:
    """Credentials of one AWS principal, and what STS says of it."""

    access_key_id: str
    secret_access_key: str
    arn: str
    account: str
    user_id: str
    session_token: str | None = None

    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key, self.session_token)


def presign(
    caller: AwsCaller,
    *,
    region: str = "eu-west-1",
    host: str | None = None,
    binding: str | None = "proxy-test",
    binding_header: str = BINDING,
    expires: int = 60,
    signed_in: float = 0.0,
) -> str:
    """A presigned GetCallerIdentity URL, made the way a console's backend makes it with
    boto3 (docs/identity.md shows the same code); ``signed_in`` seconds from now, as a
    caller whose clock is off would sign it."""
    sts = boto3.client(
        "sts",
        region_name=region,
        endpoint_url=f"https://{host or f'sts.{region}.amazonaws.com'}",
        aws_access_key_id=caller.access_key_id,
        aws_secret_access_key=caller.secret_access_key,
        aws_session_token=caller.session_token,
    )
    if binding is not None:

        def bind(request: Any, **_: Any) -> None:
            request.headers[binding_header] = binding

        sts.meta.events.register("before-sign.sts.GetCallerIdentity", bind)
    then = datetime.now(UTC) + timedelta(seconds=signed_in)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=then):
        url: str = sts.generate_presigned_url(
            "get_caller_identity", Params={}, ExpiresIn=expires, HttpMethod="GET"
        )
    return url


async def link_to_alice(stack: DemoStack, account: str) -> None:
    """Link an AWS account to the demo's customer cus_alice, with the demo's grants."""
    assert stack.proxy is not None
    await stack.proxy.store.add(
        cloud_account=account,
        payment_customer="cus_alice",
        created_by="test",
        verification_method="test",
        verification_evidence="test",
        grants=DEMO_GRANTS,
    )


def as_token(url: str) -> str:
    return "dragoman-aws-v1." + base64.urlsafe_b64encode(url.encode()).rstrip(b"=").decode()


@dataclass
class LocalSts:
    callers: dict[str, AwsCaller] = field(default_factory=dict)
    calls: list[dict[str, str]] = field(default_factory=list)
    """Each request: its Host, binding header and raw query."""
    throttle: int = 0
    """How many coming requests to answer 400 Throttling."""
    fail: int = 0
    """How many coming requests to answer 500."""
    stall: float = 0.0
    """Seconds to wait before answering."""
    hold: asyncio.Event | None = None
    """When set: every request waits for this event before it is answered."""
    drop: int = 0
    """How many coming requests to answer by closing the connection (no answer at all)."""

    def add(self, caller: AwsCaller) -> AwsCaller:
        self.callers[caller.access_key_id] = caller
        return caller

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        self.calls.append(
            {
                "host": request.headers.get("Host", ""),
                "binding": request.headers.get(BINDING, ""),
                "query": request.raw_path.partition("?")[2],
                "accept": request.headers.get("Accept", ""),
            }
        )
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.hold is not None:
            await self.hold.wait()
        if self.drop:
            self.drop -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if self.throttle:
            self.throttle -= 1
            return _error(400, "Throttling", "Rate exceeded")
        if self.fail:
            self.fail -= 1
            return _error(500, "InternalFailure", "An internal error occurred")
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        if params.get("Action") != "GetCallerIdentity":
            return _error(400, "InvalidAction", "Could not find operation")
        scope = params.get("X-Amz-Credential", "").split("/")
        caller = self.callers.get(scope[0])
        if caller is None:
            return _error(403, "InvalidClientTokenId", "The security token is not valid.")
        if caller.session_token != params.get("X-Amz-Security-Token"):
            return _error(403, "InvalidClientTokenId", "The security token is not valid.")
        if not _signature_matches(request, params, caller, region=scope[2]):
            return _error(403, "SignatureDoesNotMatch", "The signature does not match.")
        signed = calendar.timegm(time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        if time.time() > signed + int(params["X-Amz-Expires"]):
            return _error(403, "AccessDenied", "Request has expired.")
        result = {"Arn": caller.arn, "Account": caller.account, "UserId": caller.user_id}
        return web.json_response(
            {
                "GetCallerIdentityResponse": {
                    "GetCallerIdentityResult": result,
                    "ResponseMetadata": {"RequestId": "01234567-89ab-cdef-0123-456789abcdef"},
                }
            }
        )


def _signature_matches(
    request: web.Request, params: dict[str, str], caller: AwsCaller, *, region: str
) -> bool:
    unsigned = urlencode([(k, v) for k, v in params.items() if k != "X-Amz-Signature"])
    headers = {
        name: request.headers.get(name, "")
        for name in params["X-Amz-SignedHeaders"].split(";")
        if name != "host"
    }
    again = AWSRequest(
        method="GET", url=f"https://{request.headers['Host']}/?{unsigned}", headers=headers
    )
    again.context["timestamp"] = params["X-Amz-Date"]
    signer = SigV4QueryAuth(caller.credentials(), "sts", region, int(params["X-Amz-Expires"]))
    canonical = signer.canonical_request(again)
    expected = signer.signature(signer.string_to_sign(again, canonical), again)
    return hmac.compare_digest(expected, params.get("X-Amz-Signature", ""))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"Error": {"Code": code, "Message": message, "Type": "Sender"}, "RequestId": "0"},
        status=status,
    )
