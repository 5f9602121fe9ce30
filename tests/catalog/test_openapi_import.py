"""Importing a catalog from OpenAPI 3.x: one operation per path and method, stable names,
tiers, candidate customer bindings, and every path a catalog cannot express listed."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from dragoman.catalog.export import REVIEW, catalog_toml
from dragoman.catalog.openapi import (
    Imported,
    Skipped,
    SpecError,
    import_openapi,
    load_document,
)
from dragoman.demo.platform import PaymentPlatform, catalog_settings, openapi_document
from dragoman.settings import CatalogSettings
from dragoman.tokens.verify import TokenVerifier

SPECS = Path(__file__).parent / "specs"
PAYPAL = SPECS / "paypal_vault_payment_tokens_v3.json"


def spec(paths: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def op(operation_id: str | None = None, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"responses": {"200": {"description": "OK"}}, **fields}
    if operation_id is not None:
        entry["operationId"] = operation_id
    return entry


def rows(imported: Imported) -> list[tuple[str, str, str, str, str]]:
    return [(o.id, o.method, o.path, o.scope, o.effective_tier) for o in imported.operations]


def places(imported: Imported) -> dict[str, list[tuple[str, str, str]]]:
    return {
        o.id: [(b.location, b.name, b.mode) for b in o.customer]
        for o in imported.operations
        if o.customer
    }


# -- ids ---------------------------------------------------------------------------------------


def test_an_operation_id_becomes_lower_snake_case_with_its_dots_kept() -> None:
    imported = import_openapi(spec({"/v1/a": {"post": op("Payment-Methods.createToken")}}))
    assert imported.operations[0].id == "payment_methods.create_token"


def test_an_operation_without_an_operation_id_is_named_by_method_and_path() -> None:
    imported = import_openapi(spec({"/v1/customers/{customer_id}": {"get": op()}}))
    assert imported.operations[0].id == "get_v1_customers_customer_id"


def test_operation_ids_that_normalise_alike_get_numeric_suffixes_in_path_order() -> None:
    imported = import_openapi(
        spec({"/v1/a": {"get": op("items.list")}, "/v1/b": {"get": op("Items.List")}})
    )
    assert [o.id for o in imported.operations] == ["items.list", "items.list_2"]


# -- scopes ------------------------------------------------------------------------------------


def test_the_scope_resource_is_the_first_tag() -> None:
    imported = import_openapi(spec({"/v1/x": {"get": op(tags=["Payment Methods", "other"])}}))
    assert imported.operations[0].scope == "payment_methods:list"


def test_without_tags_the_resource_is_the_first_path_segment_after_the_version() -> None:
    imported = import_openapi(spec({"/v2/billing-accounts/{id}/invoices": {"get": op()}}))
    assert imported.operations[0].scope == "billing_accounts:list"


def test_without_an_operation_id_the_action_follows_the_method() -> None:
    imported = import_openapi(
        spec(
            {
                "/v1/cards": {"get": op(), "post": op()},
                "/v1/cards/{id}": {"get": op(), "put": op(), "patch": op(), "delete": op()},
            }
        )
    )
    assert [(o.method, o.path, o.scope) for o in imported.operations] == [
        ("GET", "/v1/cards", "cards:list"),
        ("POST", "/v1/cards", "cards:create"),
        ("DELETE", "/v1/cards/{id}", "cards:delete"),
        ("GET", "/v1/cards/{id}", "cards:read"),
        ("PATCH", "/v1/cards/{id}", "cards:update"),
        ("PUT", "/v1/cards/{id}", "cards:update_2"),
    ]


def test_the_action_is_the_operation_ids_verb_with_get_read_as_read() -> None:
    imported = import_openapi(
        spec(
            {
                "/v1/a": {"post": op("createPaymentToken", tags=["tokens"])},
                "/v1/b": {"put": op("tokens.set_default", tags=["tokens"])},
                "/v1/c/{id}": {"get": op("tokens.retrieve", tags=["tokens"])},
            }
        )
    )
    assert [o.scope for o in imported.operations] == [
        "tokens:create",
        "tokens:set_default",
        "tokens:read",
    ]


def test_operations_sharing_a_scope_take_their_methods_action() -> None:
    imported = import_openapi(
        spec(
            {
                "/v3/tokens": {"get": op("customer.tokens.get", tags=["tokens"])},
                "/v3/tokens/{id}": {"get": op("tokens.get", tags=["tokens"])},
            }
        )
    )
    assert [o.scope for o in imported.operations] == ["tokens:list", "tokens:read"]


# -- tiers -------------------------------------------------------------------------------------


def test_the_tier_follows_the_method() -> None:
    imported = import_openapi(
        spec({"/v1/x": {"get": op(), "post": op(), "put": op(), "delete": op()}})
    )
    assert [(o.method, o.effective_tier) for o in imported.operations] == [
        ("DELETE", "destroy"),
        ("GET", "read"),
        ("POST", "change"),
        ("PUT", "change"),
    ]


@pytest.mark.parametrize(
    ("path", "operation_id"),
    [
        ("/v1/charges", None),
        ("/v1/payments/{id}/capture", None),
        ("/v1/refunds", "createRefund"),
        ("/v1/x", "payouts.create"),
        ("/v1/transfers", None),
        ("/v1/payment_intents/{id}/confirm", None),
        ("/v1/invoices/{id}/pay", None),
        ("/v1/payments", None),
        ("/v1/x", "createPayment"),
        ("/v1/x", "payments.create"),
        ("/v1/purchases", None),
    ],
)
def test_a_write_named_like_money_movement_is_money(path: str, operation_id: str | None) -> None:
    imported = import_openapi(spec({path: {"post": op(operation_id)}}))
    assert imported.operations[0].effective_tier == "money"


@pytest.mark.parametrize("path", ["/v1/payment_methods", "/v1/payment_intents"])
def test_setting_up_a_payment_is_not_money(path: str) -> None:
    imported = import_openapi(spec({path: {"post": op()}}))
    assert imported.operations[0].effective_tier == "change"


def test_reading_refunds_is_a_read() -> None:
    imported = import_openapi(spec({"/v1/refunds": {"get": op()}}))
    assert imported.operations[0].effective_tier == "read"


def test_a_tier_override_replaces_the_derived_tier() -> None:
    document = spec({"/v1/cards": {"post": op("cards.create")}})
    imported = import_openapi(document, {"cards.create": "money"})
    assert imported.operations[0].effective_tier == "money"


def test_a_tier_override_for_an_unknown_operation_is_refused() -> None:
    document = spec({"/v1/cards": {"post": op("cards.create")}})
    with pytest.raises(SpecError, match=r"no imported operation has the id 'cards\.nope'"):
        import_openapi(document, {"cards.nope": "money"})


# -- candidate customer bindings ----------------------------------------------------------------


def test_customer_like_path_query_and_header_parameters_are_candidates() -> None:
    parameters = [
        {"name": "customerId", "in": "query"},
        {"name": "X-Cust-Id", "in": "header"},
        {"name": "Customer-Id", "in": "header"},
        {"name": "customer_id", "in": "path", "required": True},
    ]
    document = spec({"/v1/customers/{customer_id}": {"get": op("c.get", parameters=parameters)}})
    assert places(import_openapi(document)) == {
        "c.get": [
            ("path", "customer_id", "enforce"),
            ("query", "customerId", "enforce"),
            ("header", "Customer-Id", "enforce"),
        ]
    }


def test_parameters_not_named_like_a_customer_are_not_candidates() -> None:
    parameters = [{"name": n, "in": "query"} for n in ("customer_name", "page", "customers")]
    document = spec({"/v1/x": {"get": op("x.list", parameters=parameters)}})
    assert places(import_openapi(document)) == {}


def test_a_path_parameter_right_after_a_customers_segment_is_a_candidate() -> None:
    document = spec({"/v1/customers/{id}": {"delete": op("customers.delete")}})
    assert places(import_openapi(document)) == {"customers.delete": [("path", "id", "enforce")]}


def test_a_path_parameter_right_after_a_customer_segment_is_a_candidate() -> None:
    document = spec({"/v1/Customer/{ref}/cards": {"get": op("cards.list")}})
    assert places(import_openapi(document)) == {"cards.list": [("path", "ref", "enforce")]}


def test_a_path_parameter_after_another_segment_is_not_a_candidate() -> None:
    document = spec({"/v1/customers/{id}/cards/{card}": {"get": op("cards.get")}})
    assert places(import_openapi(document)) == {"cards.get": [("path", "id", "enforce")]}


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("X-Customer-Id", "header"),
        ("customer_ref", "query"),
        ("customerUuid", "query"),
        ("customer_number", "query"),
        ("billing-customer", "query"),
    ],
)
def test_names_with_customer_as_a_word_before_an_identifier_word_are_candidates(
    name: str, where: str
) -> None:
    parameters = [{"name": name, "in": where}]
    document = spec({"/v1/x": {"get": op("x.list", parameters=parameters)}})
    assert places(import_openapi(document)) == {"x.list": [(where, name, "enforce")]}


def test_customer_words_in_a_body_property_name_are_candidates() -> None:
    properties = {n: {"type": "string"} for n in ("customer_ref", "customerUuid", "note")}
    body = {"content": {"application/json": {"schema": {"properties": properties}}}}
    document = spec({"/v1/orders": {"post": op("orders.create", requestBody=body)}})
    assert places(import_openapi(document)) == {
        "orders.create": [
            ("body", "/customerUuid", "enforce"),
            ("body", "/customer_ref", "enforce"),
        ]
    }


def test_path_item_parameters_and_referenced_parameters_count() -> None:
    document = spec(
        {
            "/v1/x": {
                "parameters": [{"$ref": "#/components/parameters/cust"}],
                "get": op("x.list"),
            }
        },
        components={"parameters": {"cust": {"name": "cust_id", "in": "query"}}},
    )
    assert places(import_openapi(document)) == {"x.list": [("query", "cust_id", "enforce")]}


def test_a_body_property_behind_refs_becomes_a_json_pointer() -> None:
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Req"}}}}
    document = spec(
        {"/v1/x": {"post": op("x.create", requestBody=body)}},
        components={
            "schemas": {
                "Req": {
                    "allOf": [
                        {"properties": {"payment_method": {"$ref": "#/components/schemas/Pm"}}}
                    ]
                },
                "Pm": {"type": "object", "properties": {"customer": {"type": "string"}}},
            }
        },
    )
    assert places(import_openapi(document)) == {
        "x.create": [("body", "/payment_method/customer", "enforce")]
    }


def test_a_customer_object_binds_its_id() -> None:
    schema = {"properties": {"customer": {"type": "object", "properties": {"id": {}}}}}
    body = {"content": {"application/merge-patch+json": {"schema": schema}}}
    document = spec({"/v1/x": {"patch": op("x.update", requestBody=body)}})
    assert places(import_openapi(document)) == {"x.update": [("body", "/customer/id", "enforce")]}


def test_read_only_and_non_json_body_properties_are_not_candidates() -> None:
    body = {
        "content": {
            "application/json": {
                "schema": {"properties": {"customer_id": {"type": "string", "readOnly": True}}}
            },
            "application/x-www-form-urlencoded": {
                "schema": {"properties": {"customer": {"type": "string"}}}
            },
        }
    }
    document = spec({"/v1/x": {"post": op("x.create", requestBody=body)}})
    assert places(import_openapi(document)) == {}


def test_recursive_schemas_are_walked_once() -> None:
    node = {
        "type": "object",
        "properties": {
            "child": {"$ref": "#/components/schemas/Node"},
            "customer_id": {"type": "string"},
        },
    }
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}
    document = spec(
        {"/v1/x": {"post": op("x.create", requestBody=body)}},
        components={"schemas": {"Node": node}},
    )
    assert places(import_openapi(document)) == {"x.create": [("body", "/customer_id", "enforce")]}


# -- paths and order ---------------------------------------------------------------------------


def test_paths_a_template_cannot_express_are_skipped_and_listed() -> None:
    imported = import_openapi(
        spec(
            {
                "/v1/files/{name}.pdf": {"get": op(), "delete": op()},
                "/v1/trailing/": {"get": op()},
                "/v1/customers/{customer-id}": {"get": op()},
                "/v1/ok": {"get": op(), "options": op()},
            }
        )
    )
    assert [(o.method, o.path) for o in imported.operations] == [("GET", "/v1/ok")]
    assert [(s.method, s.path) for s in imported.skipped] == [
        ("GET", "/v1/customers/{customer-id}"),
        ("DELETE", "/v1/files/{name}.pdf"),
        ("GET", "/v1/files/{name}.pdf"),
        ("OPTIONS", "/v1/ok"),
        ("GET", "/v1/trailing/"),
    ]
    assert [s.reason for s in imported.skipped] == [
        "parameter name 'customer-id' is not an identifier",
        "segment '{name}.pdf': a parameter fills a whole segment, like '{id}'",
        "segment '{name}.pdf': a parameter fills a whole segment, like '{id}'",
        "a catalog has no such method",
        "a path template has no empty segments (no '//', no trailing '/')",
    ]


def test_a_path_item_behind_an_external_ref_is_skipped_and_listed() -> None:
    document = spec(
        {
            "/v1/a": {"get": op()},
            "/v1/customers/{customer_id}/charges": {"$ref": "charges.yaml#/ChargesItem"},
        }
    )
    imported = import_openapi(document)
    assert [(o.method, o.path) for o in imported.operations] == [("GET", "/v1/a")]
    assert imported.skipped == (
        Skipped(
            "*",
            "/v1/customers/{customer_id}/charges",
            "path item $ref 'charges.yaml#/ChargesItem' is not local"
            " (only '#/...' refs are followed)",
        ),
    )


def test_a_path_item_whose_local_ref_leads_nowhere_is_skipped_and_listed() -> None:
    imported = import_openapi(spec({"/v1/a": {"$ref": "#/components/pathItems/nope"}}))
    assert imported.skipped == (
        Skipped("*", "/v1/a", "path item $ref '#/components/pathItems/nope' does not lead to"
                " a path item"),
    )  # fmt: skip


def test_a_path_item_behind_a_local_ref_is_imported() -> None:
    document = spec(
        {"/v1/a": {"$ref": "#/components/pathItems/a"}},
        components={"pathItems": {"a": {"get": op("a.list")}}},
    )
    imported = import_openapi(document)
    assert (rows(imported), imported.skipped) == (
        [("a.list", "GET", "/v1/a", "a:list", "read")],
        (),
    )


def test_a_method_key_not_in_lower_case_is_skipped_and_listed() -> None:
    imported = import_openapi(spec({"/v1/refunds": {"POST": op("refunds.create")}}))
    assert (imported.operations, imported.skipped) == (
        (),
        (Skipped("POST", "/v1/refunds", "method key 'POST' is not in lower case"),),
    )


def test_the_toml_lists_skipped_paths_at_its_top() -> None:
    imported = import_openapi(spec({"/v1/{a}-{b}": {"get": op()}}))
    text = catalog_toml(imported, "spec.json")
    assert "#   GET /v1/{a}-{b}: segment '{a}-{b}'" in text


def test_operations_are_sorted_by_path_then_method() -> None:
    imported = import_openapi(
        spec({"/v1/b": {"post": op(), "get": op()}, "/v1/a": {"put": op(), "delete": op()}})
    )
    assert [(o.path, o.method) for o in imported.operations] == [
        ("/v1/a", "DELETE"),
        ("/v1/a", "PUT"),
        ("/v1/b", "GET"),
        ("/v1/b", "POST"),
    ]


# -- reading documents ---------------------------------------------------------------------------


def test_a_yaml_document_imports_like_its_json_twin(tmp_path: Path) -> None:
    document = openapi_document()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document), "utf-8")
    (tmp_path / "spec.json").write_text(json.dumps(document), "utf-8")
    from_yaml = import_openapi(load_document(tmp_path / "spec.yaml"))
    assert from_yaml == import_openapi(load_document(tmp_path / "spec.json"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"swagger": "2.0", "paths": {}}', "Swagger 2.0 is not supported"),
        ('{"openapi": "4.0", "paths": {}}', "not an OpenAPI 3.x document"),
        ('{"openapi": "3.0.0"}', "an OpenAPI document without 'paths'"),
        ("[1, 2]", "the top level is not an object"),
        ('{"openapi": ', "not valid JSON or YAML"),
    ],
)
def test_a_document_that_is_not_openapi_3_is_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text, "utf-8")
    with pytest.raises(SpecError, match=message) as caught:
        load_document(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_a_missing_document_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read it \(No such file or directory\)"):
        load_document(tmp_path / "nope.yaml")


# -- the demo platform's own description ----------------------------------------------------


def test_the_demo_platforms_document_imports_as_its_hand_written_catalog() -> None:
    imported = CatalogSettings(operations=list(import_openapi(openapi_document()).operations))
    written = CatalogSettings.model_validate({"operations": catalog_settings()})

    def key(catalog: CatalogSettings) -> list[tuple[Any, ...]]:
        return sorted(
            (
                o.id,
                o.method,
                o.path,
                o.scope,
                o.effective_tier,
                [b.model_dump() for b in o.bindings],
            )
            for o in catalog.operations
        )

    assert key(imported) == key(written)


async def test_the_demo_platform_serves_its_document_at_openapi_json() -> None:
    verifier = TokenVerifier(
        jwks_url="http://127.0.0.1:9/jwks",
        issuer="https://dragoman.invalid",
        audience="demo",
        origin="http://127.0.0.1:9",
    )
    async with TestClient(TestServer(PaymentPlatform(verifier).app())) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert await response.json() == openapi_document()


# -- a real payment API ------------------------------------------------------------------------


def test_importing_the_paypal_vault_api_twice_gives_identical_toml() -> None:
    first = catalog_toml(import_openapi(load_document(PAYPAL)), PAYPAL.name)
    second = catalog_toml(import_openapi(load_document(PAYPAL)), PAYPAL.name)
    assert first.encode() == second.encode()


def test_the_paypal_vault_catalog_passes_the_settings_validation() -> None:
    text = catalog_toml(import_openapi(load_document(PAYPAL)), PAYPAL.name)
    catalog = CatalogSettings.model_validate(tomllib.loads(text)["catalog"])
    assert len(catalog.operations) == 6


def test_the_paypal_vault_catalog_has_these_operations() -> None:
    assert rows(import_openapi(load_document(PAYPAL))) == [
        ("customer.payment_tokens.get", "GET", "/v3/vault/payment-tokens",
         "payment_tokens:list", "read"),
        ("payment_tokens.create", "POST", "/v3/vault/payment-tokens",
         "payment_tokens:create", "change"),
        ("payment_tokens.delete", "DELETE", "/v3/vault/payment-tokens/{id}",
         "payment_tokens:delete", "destroy"),
        ("payment_tokens.get", "GET", "/v3/vault/payment-tokens/{id}",
         "payment_tokens:read", "read"),
        ("setup_tokens.create", "POST", "/v3/vault/setup-tokens",
         "setup_tokens:create", "change"),
        ("setup_tokens.get", "GET", "/v3/vault/setup-tokens/{id}",
         "setup_tokens:read", "read"),
    ]  # fmt: skip


def test_the_paypal_vault_customer_places_are_flagged_for_review() -> None:
    imported = import_openapi(load_document(PAYPAL))
    assert places(imported) == {
        "customer.payment_tokens.get": [("query", "customer_id", "enforce")],
        "payment_tokens.create": [("body", "/customer/id", "enforce")],
        "setup_tokens.create": [("body", "/customer/id", "enforce")],
    }
    text = catalog_toml(imported, PAYPAL.name)
    assert text.count(f"{REVIEW}\n[[catalog.operations.customer]]") == imported.candidates == 3
