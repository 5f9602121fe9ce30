"""Route matching: compiled once, exact templates first, ambiguous paths refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dragoman.catalog.matcher import InvalidPath, RouteMatcher, split_decoding, split_path
from dragoman.catalog.model import Operation
from dragoman.catalog.template import parse_template


def op(op_id: str, method: str, path: str) -> Operation:
    return Operation(op_id, method, path, f"x:{op_id}", None, parse_template(path))


MATCHER = RouteMatcher(
    [
        op("list", "GET", "/v1/customers/{customer_id}/payment-methods"),
        op("get", "GET", "/v1/customers/{customer_id}/payment-methods/{pm}"),
        op("default", "GET", "/v1/customers/{customer_id}/payment-methods/default"),
        op("me", "GET", "/v1/customers/me/payment-methods"),
        op("create", "POST", "/v1/customers/{customer_id}/payment-methods"),
        op("root", "GET", "/"),
    ]
)


def matched(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    found = MATCHER.match(method, path)
    return None if found is None else (found.operation.id, found.params)


def test_a_parameterised_template_matches_and_names_its_parameters() -> None:
    assert matched("GET", "/v1/customers/cus_1/payment-methods/pm_9") == (
        "get",
        {"customer_id": "cus_1", "pm": "pm_9"},
    )


def test_an_exact_template_wins_over_a_parameterised_one() -> None:
    assert matched("GET", "/v1/customers/cus_1/payment-methods/default") == (
        "default",
        {"customer_id": "cus_1"},
    )
    assert matched("GET", "/v1/customers/me/payment-methods") == ("me", {})


def test_the_method_is_part_of_the_operation() -> None:
    assert matched("POST", "/v1/customers/c/payment-methods") == ("create", {"customer_id": "c"})
    assert matched("DELETE", "/v1/customers/c/payment-methods") is None


@pytest.mark.parametrize(
    "path",
    [
        "/v1/customers/c",
        "/v1/customers/c/payment-methods/pm/extra",
        "/V1/customers/c/payment-methods",
        "/v2/customers/c/payment-methods",
    ],
)
def test_anything_outside_the_catalog_does_not_match(path: str) -> None:
    assert matched("GET", path) is None


def test_parameters_are_percent_decoded_one_segment_at_a_time() -> None:
    assert matched("GET", "/v1/customers/cus%5Fa/payment-methods") == (
        "list",
        {"customer_id": "cus_a"},
    )


def test_percent_encoded_literals_match_their_decoded_form() -> None:
    assert matched("GET", "/v1/%63ustomers/c/payment-methods") == ("list", {"customer_id": "c"})


@pytest.mark.parametrize(
    "path",
    [
        "/v1/customers/../customers/c/payment-methods",
        "/v1/customers/./c/payment-methods",
        "/v1/customers/%2e%2e/payment-methods",
        "/v1/customers/%2E/payment-methods",
        "/v1/customers/a%2Fb/payment-methods",
        "/v1/customers/a%2fb/payment-methods",
        "/v1/customers/a%5Cb/payment-methods",
        "/v1/customers/a\\b/payment-methods",
        "/v1//customers/c/payment-methods",
        "/v1/customers/c/payment-methods/",
        "/v1/customers/a%00/payment-methods",
        "/v1/customers/a%0A/payment-methods",
        "/v1/customers/a%zz/payment-methods",
        "/v1/customers/a%4/payment-methods",
        "/v1/customers/%ff/payment-methods",
        "v1/customers/c/payment-methods",
        # Servlet containers drop ";" parameters, then read what is left as a dot segment.
        "/v1/customers/..;/customers/c/payment-methods",
        "/v1/customers/..;x=1/payment-methods",
        "/v1/customers/.;/c/payment-methods",
        "/v1/customers/%2e%2e;/payment-methods",
        "/v1/customers/.%2e;x/payment-methods",
        "/v1/customers/..%3B/payment-methods",
    ],
)
def test_ambiguous_paths_are_refused_not_normalised(path: str) -> None:
    with pytest.raises(InvalidPath):
        MATCHER.match("GET", path)


def test_a_segment_with_parameters_that_is_not_a_dot_segment_still_matches() -> None:
    assert matched("GET", "/v1/customers/c;v=1/payment-methods") == (
        "list",
        {"customer_id": "c;v=1"},
    )


def test_the_root_path_can_be_an_operation() -> None:
    assert matched("GET", "/") == ("root", {})


def test_two_operations_for_one_route_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="two operations"):
        RouteMatcher([op("a", "GET", "/x/{id}"), op("b", "GET", "/x/{other}")])


@pytest.mark.parametrize(
    "template",
    ["x/y", "/x//y", "/x/", "/x/{id}{id2}", "/x/pre{id}", "/x/{id}/{id}", "/x/..", "/x/a b"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each message is specific)
        parse_template(template)


PATHS = [  # "/" is answered before either split (the root operation)
    "/v1/customers/cus_1/payment-methods",
    "/v1/customers/cus_1/payment-methods/",
    "/v1//x",
    "/v1/./x",
    "/v1/../x",
    "/v1/..a/.b",
    "/v1/a b/c",
    "/v1/a\tb",
    "/v1/a\x7fb",
    "/v1/a\\b",
    "/v1/a%20b",
    "/v1/a%2Fb",
    "/v1/~!$&'()*+,;=:@-_.x",
    "/v1/..;/x",
    "/v1/.;a/x",
    "/v1/a;../x",
    "/v1/...;/x",
    "/v1/caf\u00e9",
    "/v1/a?b",
    "/v1/a#b",
    "//",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_fast_path_splits_exactly_as_full_decoding_does(path: str) -> None:
    def outcome(split: Callable[[str], list[str]]) -> list[str] | str:
        try:
            return split(path)
        except InvalidPath:
            return "refused"

    assert outcome(split_path) == outcome(split_decoding)
