"""Settings: typed, validated at load, every problem reported at once with its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dragoman.demo.runner import demo_settings, write_toml
from dragoman.settings import Settings, SettingsError, load_settings
from dragoman.settings_doc import render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def valid(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "master.key").write_text("A" * 43)
    return demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "dragoman.toml"
    write_toml(data, path)
    return path


def problems_of(path: Path, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, **kwargs)
    return {p.key: p.message for p in caught.value.problems}


def test_a_valid_file_loads_into_typed_settings(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, valid(tmp_path)))
    assert isinstance(settings, Settings)
    assert settings.mapping.stale_after == 36 * 3600
    assert settings.tokens.ttl == 300
    assert settings.identity.oidc[0].accepted_types == ["at+jwt"]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGOMAN_UPSTREAM__URL", "https://payments.internal/api/")
    monkeypatch.setenv("DRAGOMAN_TOKENS__TTL", "2m")
    settings = load_settings(write(tmp_path, valid(tmp_path)))
    assert settings.upstream.url == "https://payments.internal/api"
    assert settings.tokens.ttl == 120


def test_decision_peers_default_to_loopback(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, valid(tmp_path)))
    assert settings.decision.allowed_peers == ["127.0.0.0/8", "::1/128"]


def test_decision_peers_load_in_canonical_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGOMAN_DECISION__ALLOWED_PEERS", '["10.1.2.3", "FD00::/8"]')
    settings = load_settings(write(tmp_path, valid(tmp_path)))
    assert settings.decision.allowed_peers == ["10.1.2.3/32", "fd00::/8"]


def test_config_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGOMAN_CONFIG", str(write(tmp_path, valid(tmp_path))))
    assert load_settings().upstream.audience == "payments-demo"


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["upstream"]["url"] = "ftp://payments"
    data["tokens"]["ttl"] = "1h"
    data["server"]["prot"] = 8080
    data["mapping"] = {"stale_after": "soon"}
    data["identity"]["oidc"][0]["issuer"] = "http://idp.example.com"
    problems = problems_of(write(tmp_path, data))
    assert set(problems) == {
        "upstream.url",
        "tokens.ttl",
        "server.prot",
        "mapping.stale_after",
        "identity.oidc.0.issuer",
    }
    assert "https" in problems["identity.oidc.0.issuer"]


def test_an_unknown_environment_key_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGOMAN_UPSTREAM__TIMEOUT", "5")
    assert "upstream.timeout" in problems_of(write(tmp_path, valid(tmp_path)))


def test_a_bad_secret_is_reported_without_its_value(tmp_path: Path) -> None:
    data = valid(tmp_path)
    del data["keys"]["master_key_file"]
    data["keys"]["master_key"] = "not-a-real-key-but-secret-looking-value"
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, data))
    assert [p.key for p in caught.value.problems] == ["keys.master_key"]
    assert "secret-looking" not in str(caught.value)


def test_a_master_key_is_required(tmp_path: Path) -> None:
    data = valid(tmp_path)
    del data["keys"]["master_key_file"]
    assert "keys" in problems_of(write(tmp_path, data))


def test_durations_take_units(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, valid(tmp_path)),
        overrides={"mapping": {"stale_after": "1d"}, "tokens": {"ttl": 90}},
    )
    assert settings.mapping.stale_after == 86400
    assert settings.tokens.ttl == 90


@pytest.mark.parametrize("ttl", ["16m", 901, "5s"])
def test_token_lifetime_is_bounded(tmp_path: Path, ttl: object) -> None:
    assert "tokens.ttl" in problems_of(
        write(tmp_path, valid(tmp_path)), overrides={"tokens": {"ttl": ttl}}
    )


def test_hmac_algorithms_are_not_accepted_from_an_issuer(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["identity"]["oidc"][0]["algorithms"] = ["HS256"]
    assert "identity.oidc.0.algorithms.0" in problems_of(write(tmp_path, data))


def test_wildcard_origins_are_refused(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["browser"]["allowed_origins"] = ["*"]
    assert "browser.allowed_origins" in problems_of(write(tmp_path, data))


def test_a_session_rate_limit_counted_per_customer_is_refused(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["limits"] = {
        "rules": [{"name": "s", "per": "customer", "tiers": ["session"], "rate": "1/s", "burst": 1}]
    }
    problems = problems_of(write(tmp_path, data))
    assert "session" in problems["limits.rules.0"]


def test_catalog_problems_name_the_operation(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["catalog"]["operations"][0]["path"] = "/v1/customers/{customer_id}/../x"
    data["catalog"]["operations"][1]["customer_param"] = "account"
    problems = problems_of(write(tmp_path, data))
    assert set(problems) == {"catalog.operations.0.path", "catalog.operations.1"}


def test_duplicate_operation_ids_are_refused(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["catalog"]["operations"][1]["id"] = data["catalog"]["operations"][0]["id"]
    assert "operation ids must be unique" in problems_of(write(tmp_path, data))["catalog"]


def test_at_least_one_authenticator_is_required(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["identity"]["oidc"] = []
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, data))
    assert "at least one authenticator" in str(caught.value)


def test_a_file_that_is_not_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    assert str(path) in problems_of(path)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    assert "settings file not found" in problems_of(tmp_path / "nope.toml").values()


def test_settings_reference_matches_the_model() -> None:
    assert DOCS.read_text("utf-8") == render(), "run `make docs` to regenerate docs/settings.md"


def test_a_master_key_file_that_does_not_exist_is_reported(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["keys"]["master_key_file"] = str(tmp_path / "missing.key")
    assert "keys.master_key_file" in problems_of(write(tmp_path, data))


def test_the_pkcs11_provider_needs_a_pin(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["keys"] = {"provider": "pkcs11", "pkcs11": {"token_label": "dragoman"}}
    assert "keys" in problems_of(write(tmp_path, data))


def test_an_aws_reserved_kms_alias_is_refused(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["keys"]["provider"] = "aws-kms"
    data["keys"]["aws_kms"] = {"alias": "alias/aws/dragoman"}
    assert "keys.aws_kms.alias" in problems_of(write(tmp_path, data))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"jwks_max_age": "20m", "prepublish": "10m"}, "jwks_max_age"),
        ({"prepublish": "2h", "jwks_max_age": "5m", "rotation_period": "1h"}, "prepublish"),
    ],
)
def test_key_timeline_settings_must_be_consistent(
    tmp_path: Path, keys: dict[str, str], message: str
) -> None:
    data = valid(tmp_path)
    data["keys"].update(keys)
    assert message in problems_of(write(tmp_path, data))["keys"]


def test_a_missing_pages_directory_is_named(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["browser"]["pages_dir"] = str(tmp_path / "nowhere")
    assert problems_of(write(tmp_path, data)) == {"browser.pages_dir": "directory not found"}


@pytest.mark.parametrize(
    "path", ["/_dragoman/session", "/_dragoman/pages/{name}", "/livez", "/.well-known/jwks.json"]
)
def test_an_operation_cannot_take_a_path_the_proxy_answers_itself(
    tmp_path: Path, path: str
) -> None:
    data = valid(tmp_path)
    data["catalog"]["operations"][0]["path"] = path
    data["catalog"]["operations"][0].pop("customer", None)
    problems = problems_of(write(tmp_path, data))
    assert list(problems) == ["catalog.operations.0.path"]
    assert "the proxy answers this path itself" in problems["catalog.operations.0.path"]


@pytest.mark.parametrize(
    ("section", "key"),
    [("limits", "limits.backend"), ("anomaly", "anomaly.backend")],
)
def test_state_in_memory_is_refused_with_several_workers(
    tmp_path: Path, section: str, key: str
) -> None:
    data = valid(tmp_path)
    data["server"]["workers"] = 2
    data["browser"]["csrf"] = "off"
    for other in {"limits", "anomaly"} - {section}:
        data[other] = {"enabled": False}
    problems = problems_of(write(tmp_path, data))
    assert list(problems) == [key]
    assert "redis" in problems[key]
