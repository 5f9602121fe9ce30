"""Comparing two catalogs: operations matched by id; removed, added, moved, re-scoped,
re-tiered and re-bound operations, one line each, in a fixed order."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dragoman.catalog.diff import diff_catalogs, load_catalog
from dragoman.catalog.export import catalog_toml
from dragoman.catalog.openapi import SpecError, import_openapi, load_document
from dragoman.demo.runner import write_toml
from dragoman.settings import OperationSettings

PAYPAL = Path(__file__).parent / "specs" / "paypal_vault_payment_tokens_v3.json"


def operation(id: str = "cards.get", **fields: Any) -> OperationSettings:
    data: dict[str, Any] = {
        "id": id,
        "method": "GET",
        "path": "/v1/customers/{customer_id}/cards",
        "scope": "cards:read",
        **fields,
    }
    return OperationSettings.model_validate(data)


def test_equal_catalogs_have_no_differences() -> None:
    assert diff_catalogs([operation()], [operation()]) == []


def test_the_customer_param_shorthand_equals_its_path_binding() -> None:
    shorthand = operation(customer_param="customer_id")
    spelled = operation(customer=[{"location": "path", "name": "customer_id"}])
    assert diff_catalogs([shorthand], [spelled]) == []


def test_a_removed_operation_is_listed() -> None:
    assert diff_catalogs([operation(), operation("cards.list", method="POST")], [operation()]) == [
        "removed cards.list: POST /v1/customers/{customer_id}/cards cards:read"
    ]


def test_an_added_operation_is_listed() -> None:
    assert diff_catalogs([], [operation()]) == [
        "added cards.get: GET /v1/customers/{customer_id}/cards cards:read"
    ]


def test_a_moved_operation_is_listed() -> None:
    assert diff_catalogs(
        [operation()], [operation(method="POST", path="/v2/cards", tier="read")]
    ) == ["moved cards.get: GET /v1/customers/{customer_id}/cards -> POST /v2/cards"]


def test_a_re_scoped_operation_is_listed() -> None:
    assert diff_catalogs([operation()], [operation(scope="wallet:read")]) == [
        "re-scoped cards.get: cards:read -> wallet:read"
    ]


def test_a_re_tiered_operation_is_listed() -> None:
    assert diff_catalogs([operation()], [operation(tier="money")]) == [
        "re-tiered cards.get: read -> money"
    ]


def test_changed_bindings_are_listed() -> None:
    old = operation(customer_param="customer_id")
    new = operation(
        customer=[
            {"location": "header", "name": "X-Customer", "mode": "inject"},
            {"location": "query", "name": "customer"},
        ]
    )
    assert diff_catalogs([old], [new]) == [
        "bindings cards.get: path customer_id -> header x-customer (inject), query customer"
    ]


def test_a_binding_made_report_only_is_listed() -> None:
    # It no longer refuses anything: a reviewer of the diff must see that.
    enforced = operation(customer=[{"location": "path", "name": "customer_id"}])
    reported = operation(
        customer=[{"location": "path", "name": "customer_id", "report_only": True}]
    )
    assert diff_catalogs([enforced], [reported]) == [
        "bindings cards.get: path customer_id -> path customer_id (report-only)"
    ]


def test_differences_come_removed_then_added_then_changed_by_id() -> None:
    old = [operation("b"), operation("a", path="/a"), operation("z", path="/z")]
    new = [
        operation("b", scope="cards:list", tier="change"),
        operation("y", path="/y"),
        operation("c", path="/c"),
    ]
    assert diff_catalogs(old, new) == [
        "removed a: GET /a cards:read",
        "removed z: GET /z cards:read",
        "added c: GET /c cards:read",
        "added y: GET /y cards:read",
        "re-scoped b: cards:read -> cards:list",
        "re-tiered b: read -> change",
    ]


def test_a_spec_and_the_toml_imported_from_it_are_equal(tmp_path: Path) -> None:
    toml = tmp_path / "catalog.toml"
    toml.write_text(catalog_toml(import_openapi(load_document(PAYPAL)), PAYPAL.name), "utf-8")
    assert diff_catalogs(load_catalog(PAYPAL), load_catalog(toml)) == []


def test_a_settings_file_is_read_as_a_catalog(tmp_path: Path) -> None:
    path = tmp_path / "dragoman.toml"
    write_toml(
        {
            "server": {"port": 8080},
            "catalog": {"operations": [operation().model_dump(exclude_none=True)]},
        },
        path,
    )
    assert load_catalog(path) == [operation()]


def test_two_versions_of_the_paypal_vault_api(tmp_path: Path) -> None:
    document = json.loads(PAYPAL.read_text("utf-8"))
    changed = copy.deepcopy(document)
    paths = changed["paths"]
    del paths["/v3/vault/payment-tokens/{id}"]["delete"]
    paths["/v3/vault/setup-tokens/{id}"]["get"]["tags"] = ["vault"]
    paths["/v3/vault/customers/{customer_id}"] = {
        "get": {"operationId": "customers.get", "tags": ["customers"], "responses": {}}
    }
    new = tmp_path / "vault_v3_next.json"
    new.write_text(json.dumps(changed), "utf-8")
    assert diff_catalogs(load_catalog(PAYPAL), load_catalog(new)) == [
        "removed payment_tokens.delete: DELETE /v3/vault/payment-tokens/{id} payment_tokens:delete",
        "added customers.get: GET /v3/vault/customers/{customer_id} customers:read",
        "re-scoped setup_tokens.get: setup_tokens:read -> vault:read",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[catalog", "not valid TOML"),
        ("catalog = 1", "catalog.operations is not a list of tables"),
        ('[[catalog.operations]]\nid = "a"', "catalog.operations.0.method: Field required"),
    ],
)
def test_an_unusable_toml_catalog_is_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(SpecError, match=message) as caught:
        load_catalog(path)
    assert "\n" not in str(caught.value)
