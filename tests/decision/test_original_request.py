"""How the gateway's description of the original request is read: exactly one method and one
target, each matched whole (a trailing newline is not "the end")."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from dragoman.decision.original import DecisionRequestInvalid, nginx_original
from dragoman.pipeline.errors import PathInvalid

PM = "/v1/customers/cus_alice/payment-methods"


def check(method: str, target: str) -> CIMultiDict[str]:
    return CIMultiDict({"X-Original-Method": method, "X-Original-URI": target})


def test_a_method_and_origin_form_target_are_read_as_sent() -> None:
    request = make_mocked_request("GET", "/auth_request", headers=check("POST", PM))
    original = nginx_original(request)
    assert (original.method, original.target) == ("POST", PM)


@pytest.mark.parametrize("method", ["GET\n", "GET\r", "get", "GET ", ""])
def test_a_method_with_anything_after_it_is_refused(method: str) -> None:
    request = make_mocked_request("GET", "/auth_request", headers=check(method, PM))
    with pytest.raises(DecisionRequestInvalid):
        nginx_original(request)


@pytest.mark.parametrize("target", [PM + "\n", PM + "\r\n", "\n" + PM])
def test_a_target_with_a_line_break_is_refused(target: str) -> None:
    request = make_mocked_request("GET", "/auth_request", headers=check("GET", target))
    with pytest.raises(PathInvalid):
        nginx_original(request)
