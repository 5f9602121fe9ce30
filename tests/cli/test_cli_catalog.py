"""`dragoman catalog list | import | diff`, run as the real executable."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from dragoman.catalog.export import catalog_toml
from dragoman.catalog.openapi import import_openapi, load_document
from dragoman.cli import main
from dragoman.demo.platform import openapi_document

PAYPAL = Path(__file__).parents[1] / "catalog" / "specs" / "paypal_vault_payment_tokens_v3.json"


def paypal_toml() -> str:
    return catalog_toml(import_openapi(load_document(PAYPAL)), PAYPAL.name)


def test_list_prints_id_method_path_and_scope(dragoman: Any, write_settings: Any) -> None:
    result = dragoman("catalog", "list", "-c", write_settings())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "customers.get",
        "GET",
        "/v1/customers/{customer_id}",
        "customers:read",
    ]


def test_import_writes_the_catalog_and_prints_a_summary(dragoman: Any, tmp_path: Path) -> None:
    result = dragoman("catalog", "import", PAYPAL, "--out", "catalog.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "catalog.toml: 6 operations, 3 candidate customer bindings to review, 0 skipped\n"
    )
    assert (tmp_path / "catalog.toml").read_text("utf-8") == paypal_toml()


def test_import_refuses_to_overwrite_without_force(dragoman: Any, tmp_path: Path) -> None:
    (tmp_path / "catalog.toml").write_text("# mine\n", "utf-8")
    result = dragoman("catalog", "import", PAYPAL, "--out", "catalog.toml")
    assert (result.returncode, result.stderr) == (
        2,
        "catalog.toml exists; add --force to replace it\n",
    )
    assert (tmp_path / "catalog.toml").read_text("utf-8") == "# mine\n"


def test_import_of_a_file_that_is_not_openapi_exits_2_in_one_line(
    dragoman: Any, tmp_path: Path
) -> None:
    (tmp_path / "spec.json").write_text('{"swagger": "2.0"}', "utf-8")
    result = dragoman("catalog", "import", "spec.json")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "spec.json: Swagger 2.0 is not supported; convert it to OpenAPI 3 first\n"
    )


def test_check_config_accepts_a_settings_file_with_an_imported_catalog(
    dragoman: Any, write_settings: Any
) -> None:
    def no_catalog(data: dict[str, Any]) -> None:
        del data["catalog"]

    path = write_settings(edit=no_catalog)
    path.write_text(path.read_text("utf-8") + "\n" + paypal_toml(), "utf-8")
    result = dragoman("check-config", path)
    assert (result.returncode, result.stdout) == (
        0,
        f"{path}: OK (1 issuer(s), 6 operation(s))\n",
    ), result.stderr


def test_diff_of_a_spec_and_its_imported_catalog_is_empty_with_exit_0(
    dragoman: Any, tmp_path: Path
) -> None:
    (tmp_path / "catalog.toml").write_text(paypal_toml(), "utf-8")
    result = dragoman("catalog", "diff", PAYPAL, "catalog.toml")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_diff_prints_every_difference_and_exits_1(dragoman: Any, tmp_path: Path) -> None:
    old = openapi_document()
    new = openapi_document()
    del new["paths"]["/v1/customers/{customer_id}/billing-address"]["put"]
    new["paths"]["/v1/customers/{customer_id}"]["get"]["tags"] = ["accounts"]
    (tmp_path / "old.json").write_text(json.dumps(old), "utf-8")
    (tmp_path / "new.json").write_text(json.dumps(new), "utf-8")
    result = dragoman("catalog", "diff", "old.json", "new.json")
    assert result.returncode == 1, result.stderr
    assert result.stdout == (
        "removed billing_address.update: PUT /v1/customers/{customer_id}/billing-address"
        " billing_address:update\n"
        "re-scoped customers.get: customers:read -> accounts:read\n"
    )


# In-process (click's runner): the tier options, without the cost of a subprocess each.


def test_tier_options_and_a_tiers_file_override_derived_tiers(tmp_path: Path) -> None:
    tiers = tmp_path / "tiers.toml"
    tiers.write_text('"setup_tokens.create" = "destroy"\n', "utf-8")
    args = ["catalog", "import", str(PAYPAL), "--tiers", str(tiers)]
    result = CliRunner().invoke(main, [*args, "--tier", "payment_tokens.create=money"])
    assert result.exit_code == 0, result.output
    catalog = tomllib.loads(result.stdout)["catalog"]["operations"]
    assert {op["id"]: op["tier"] for op in catalog if op["method"] == "POST"} == {
        "payment_tokens.create": "money",
        "setup_tokens.create": "destroy",
    }


def test_an_unknown_tier_exits_2_in_one_line() -> None:
    args = ["catalog", "import", str(PAYPAL), "--tier", "payment_tokens.create=huge"]
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.stderr) == (
        2,
        "tier of 'payment_tokens.create': 'huge' is not one of read, change, destroy, money\n",
    )
