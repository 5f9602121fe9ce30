"""Settings: durations and listener ports are bounded, zero key timings follow
docs/keys.md, and a malformed environment value is reported under its variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dragoman.settings import SettingsError
from settings_support import load_demo as load
from settings_support import settings_problems


def step_up(**tiers: Any) -> Any:
    return lambda data: data.setdefault("policy", {}).update(step_up=tiers)


def listener(section: str, **values: Any) -> Any:
    return lambda data: data.setdefault(section, {}).update(values)


# -- 2. durations are finite and bounded ---------------------------------------------------


def test_an_infinite_duration_in_the_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    problems = settings_problems(tmp_path, step_up(money={"max_age": float("inf")}))
    assert list(problems) == ["policy.step_up.money.max_age"]
    assert "finite" in problems["policy.step_up.money.max_age"]


def test_a_duration_string_too_large_for_a_float_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    edit = step_up(money={"max_age": "9" * 400 + "d"})
    assert list(settings_problems(tmp_path, edit)) == ["policy.step_up.money.max_age"]


def test_a_huge_integer_duration_is_refused_naming_the_key(tmp_path: Path) -> None:
    edit = listener("reconcile", resume_within=10**400)
    assert list(settings_problems(tmp_path, edit)) == ["reconcile.resume_within"]


def test_a_step_up_max_age_over_a_day_is_refused(tmp_path: Path) -> None:
    problems = settings_problems(tmp_path, step_up(money={"max_age": "3650d"}))
    assert list(problems) == ["policy.step_up.money.max_age"]


def test_reconcile_resume_within_over_seven_days_is_refused(tmp_path: Path) -> None:
    problems = settings_problems(tmp_path, listener("reconcile", resume_within="8d"))
    assert list(problems) == ["reconcile.resume_within"]


# -- 3. every listener has a port of its own -------------------------------------------------


def test_metrics_on_the_server_port_is_refused(tmp_path: Path) -> None:
    problems = settings_problems(tmp_path, listener("metrics", enabled=True, port=8080))
    assert list(problems) == ["metrics.port"]
    assert "server.port" in problems["metrics.port"]


def test_decision_on_the_server_port_on_the_any_address_is_refused(tmp_path: Path) -> None:
    edit = listener("decision", enabled=True, host="::", port=8080)
    problems = settings_problems(tmp_path, edit)
    assert list(problems) == ["decision.port"]
    assert "server.port" in problems["decision.port"]


def test_decision_on_the_metrics_port_is_refused(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        listener("metrics", enabled=True, host="0.0.0.0", port=9000)(data)
        listener("decision", enabled=True, port=9000)(data)

    problems = settings_problems(tmp_path, edit)
    assert list(problems) == ["decision.port"]
    assert "metrics.port" in problems["decision.port"]


def test_listeners_on_different_addresses_may_share_a_port(tmp_path: Path) -> None:
    settings = load(tmp_path, listener("metrics", enabled=True, host="127.0.0.2", port=8080))
    assert settings.metrics.port == settings.server.port


def test_a_disabled_listener_may_keep_the_server_port(tmp_path: Path) -> None:
    assert load(tmp_path, listener("decision", enabled=False, port=8080)).decision.port == 8080


# -- 4. zero key timings -------------------------------------------------------------------


def test_prepublish_zero_makes_rotations_immediate_and_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, listener("keys", prepublish=0, jwks_max_age=0))
    assert settings.keys.prepublish == 0


def test_overlap_zero_is_refused_since_a_worker_may_sign_with_the_predecessor(
    tmp_path: Path,
) -> None:
    problems = settings_problems(tmp_path, listener("keys", overlap=0))
    assert problems == {"keys": "3 x refresh_interval must not exceed overlap"}


# -- 5. environment values pydantic-settings cannot read -------------------------------------


def test_malformed_json_in_the_environment_names_the_variable_without_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAGOMAN_MAPPING__ENCRYPTION__KEKS", '{"k1": "secret-kek-value')
    with pytest.raises(SettingsError) as caught:
        load(tmp_path)
    assert [p.key for p in caught.value.problems] == ["DRAGOMAN_MAPPING__ENCRYPTION__KEKS"]
    assert "not valid JSON" in str(caught.value)
    assert "secret-kek-value" not in str(caught.value)
