"""Settings tables with defaults (policy.step_up, anomaly.rules) take what the operator
names over the defaults: naming one entry never drops another (that would fail open), and a
default is removed only by saying so (``disabled = true``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from settings_support import load_demo as load
from settings_support import settings_problems


def step_up(**tiers: Any) -> Any:
    return lambda data: data.setdefault("policy", {}).update(step_up=tiers)


def anomaly_rules(**rules: Any) -> Any:
    return lambda data: data.setdefault("anomaly", {}).update(rules=rules)


# -- 1. named entries merge over the defaults --------------------------------------------


def test_a_step_up_tier_in_the_file_keeps_the_default_money_step_up(tmp_path: Path) -> None:
    settings = load(tmp_path, step_up(destroy={"max_age": "10m"}))
    assert settings.policy.step_up["destroy"].max_age == 600
    assert settings.policy.step_up["money"].max_age == 300


def test_a_step_up_tier_from_the_environment_keeps_the_default_money_step_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGOMAN_POLICY__STEP_UP__DESTROY__MAX_AGE", "10m")
    settings = load(tmp_path)
    assert set(settings.policy.step_up) == {"money", "destroy"}
    assert settings.policy.step_up["money"].max_age == 300


def test_naming_the_money_step_up_replaces_that_entry_only(tmp_path: Path) -> None:
    settings = load(tmp_path, step_up(money={"acr_values": ["mfa"]}))
    assert settings.policy.step_up["money"].acr_values == ["mfa"]
    assert settings.policy.step_up["money"].max_age is None


def test_a_disabled_step_up_removes_the_default(tmp_path: Path) -> None:
    assert load(tmp_path, step_up(money={"disabled": True})).policy.step_up == {}


def test_a_default_anomaly_rule_named_with_one_key_keeps_its_kind_and_the_other_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGOMAN_ANOMALY__RULES__CARD_TESTING__ACTION", "alert")
    rules = load(tmp_path).anomaly.rules
    assert set(rules) == {"changes_burst", "changes_above_baseline", "card_testing"}
    assert (rules["card_testing"].kind, rules["card_testing"].action) == ("card_testing", "alert")


def test_a_new_anomaly_rule_in_the_file_keeps_the_default_rules(tmp_path: Path) -> None:
    rules = load(tmp_path, anomaly_rules(burst={"threshold": 5})).anomaly.rules
    assert set(rules) == {"changes_burst", "changes_above_baseline", "card_testing", "burst"}
    assert rules["card_testing"].action == "block"


def test_a_disabled_anomaly_rule_removes_the_default(tmp_path: Path) -> None:
    rules = load(tmp_path, anomaly_rules(card_testing={"disabled": True})).anomaly.rules
    assert set(rules) == {"changes_burst", "changes_above_baseline"}


def test_a_default_rule_left_as_it_is_does_not_refuse_a_catalog_without_its_scopes(
    tmp_path: Path,
) -> None:
    # The default rules name the demo catalog's scopes; naming a rule of one's own must not
    # make them refuse a catalog that lacks those scopes (they are logged, as before).
    def edit(data: dict[str, Any]) -> None:
        data["catalog"]["operations"] = [
            {
                "id": "orders.create",
                "method": "POST",
                "path": "/v1/orders",
                "scope": "orders:create",
            }
        ]
        data["mapping"] = {"registration": {"enabled": False}}
        data.setdefault("anomaly", {})["rules"] = {"orders": {"operations": ["orders:create"]}}

    assert "orders" in load(tmp_path, edit).anomaly.rules


def test_a_default_rule_the_operator_changed_is_checked_against_the_catalog(
    tmp_path: Path,
) -> None:
    edit = anomaly_rules(card_testing={"action": "alert", "adds": ["no_such:scope"]})
    assert list(settings_problems(tmp_path, edit)) == ["anomaly.rules.card_testing"]
