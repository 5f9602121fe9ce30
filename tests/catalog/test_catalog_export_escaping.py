"""The imported catalog's TOML and the import's standard error carry text from the document
(title, skipped paths, binding names): it is escaped so it can neither end a comment and add
TOML of its own, nor make the file unparseable, nor break a terminal line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from dragoman.catalog.export import NO_BINDING, catalog_toml
from dragoman.catalog.openapi import import_openapi
from dragoman.cli import main

INJECTED = (
    '\n\n[mapping.registration]\nroles = ["viewer"]\nregistrant_operations = ["*"]\n'
    '\n[[catalog.operations]]\nid = "admin.export"\nmethod = "GET"\n'
    'path = "/v1/admin/{anything}"\nscope = "customers:read"\ntier = "read"\n#'
)
CUSTOMER_GET = {
    "get": {
        "operationId": "customers.get",
        "parameters": [{"name": "customer_id", "in": "path", "required": True}],
        "responses": {"200": {"description": "OK"}},
    }
}


def spec(paths: dict[str, Any], title: str = "t") -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": title, "version": "1"}, "paths": paths}


def body_with(name: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {name: {"type": "string"}}}
    return {"content": {"application/json": {"schema": schema}}}


def parsed(document: dict[str, Any]) -> dict[str, Any]:
    return tomllib.loads(catalog_toml(import_openapi(document), "spec.json"))


def test_a_newline_in_the_title_adds_no_toml_to_the_catalog() -> None:
    document = spec({"/v1/customers/{customer_id}": CUSTOMER_GET}, title="API" + INJECTED)
    data = parsed(document)
    assert list(data) == ["catalog"]
    assert [o["id"] for o in data["catalog"]["operations"]] == ["customers.get"]


def test_a_newline_in_a_skipped_path_adds_no_toml_to_the_catalog() -> None:
    document = spec(
        {
            "/v1/customers/{customer_id}": CUSTOMER_GET,
            "/v1/files/{name}.pdf" + INJECTED: {"get": {"operationId": "files.get"}},
        }
    )
    data = parsed(document)
    assert list(data) == ["catalog"]
    assert [o["id"] for o in data["catalog"]["operations"]] == ["customers.get"]


def test_a_skipped_path_with_control_characters_is_one_escaped_comment_line() -> None:
    path = "/v1/files/{name}.pdf\r\n\x1b[2J\u2028x"
    text = catalog_toml(import_openapi(spec({path: {"get": {}}})), "spec.json")
    assert '#   GET "/v1/files/{name}.pdf\\r\\n\\u001B[2J\\u2028x": ' in text


def test_skipped_lines_on_standard_error_are_one_line_each_and_escaped(tmp_path: Path) -> None:
    document = spec({"/v1/files/{name}.pdf" + INJECTED: {"get": {"operationId": "files.get"}}})
    (tmp_path / "spec.json").write_text(json.dumps(document), "utf-8")
    result = CliRunner().invoke(
        main, ["catalog", "import", str(tmp_path / "spec.json"), "--out", str(tmp_path / "c.toml")]
    )
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(result.stderr.splitlines()) == len(skipped) == 1
    assert skipped[0].startswith('skipped GET "/v1/files/{name}.pdf\\n\\n[mapping.registration]')


def test_an_emoji_in_a_binding_name_round_trips_through_toml() -> None:
    document = spec({"/v1/orders": {"post": {"requestBody": body_with("customer\U0001f600")}}})
    binding = parsed(document)["catalog"]["operations"][0]["customer"][0]
    assert binding["name"] == "/customer\U0001f600"


def test_an_emoji_in_the_title_round_trips_through_toml() -> None:
    document = spec({"/v1/a": {"get": {}}}, title="Pay \U0001f4b8")
    text = catalog_toml(import_openapi(document), "spec.json")
    assert "(Pay \U0001f4b8)" in text
    assert tomllib.loads(text)["catalog"]["operations"][0]["path"] == "/v1/a"


def test_quotes_backslashes_and_control_characters_in_a_name_round_trip() -> None:
    name = 'customer"\\\t\x01\x7f\u0085é'
    document = spec({"/v1/orders": {"post": {"requestBody": body_with(name)}}})
    binding = parsed(document)["catalog"]["operations"][0]["customer"][0]
    assert binding["name"] == f"/{name}"


def test_a_write_without_a_binding_is_marked_for_review() -> None:
    text = catalog_toml(import_openapi(spec({"/v1/cards/{id}": {"delete": {}}})), "spec.json")
    assert f"\n{NO_BINDING}\n[[catalog.operations]]\n" in text


def test_a_read_without_a_binding_is_not_marked_for_review() -> None:
    document = spec({"/v1/cards/{id}": {"get": {}, "head": {}}})
    text = catalog_toml(import_openapi(document), "spec.json")
    assert f"{NO_BINDING}\n[[catalog.operations]]" not in text


def test_a_write_with_a_binding_is_not_marked_as_having_none() -> None:
    document = spec({"/v1/orders": {"post": {"requestBody": body_with("customer_id")}}})
    text = catalog_toml(import_openapi(document), "spec.json")
    assert f"{NO_BINDING}\n[[catalog.operations]]" not in text
