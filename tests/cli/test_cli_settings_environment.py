"""`dragoman check-config` with a malformed environment value: a settings problem naming
the variable (never its value), exit 2, no traceback."""

from __future__ import annotations

from typing import Any


def test_malformed_json_in_the_environment_exits_2_naming_the_variable(
    dragoman: Any, write_settings: Any
) -> None:
    env = {"DRAGOMAN_MAPPING__ENCRYPTION__KEKS": '{"k1": "secret-kek-value'}
    result = dragoman("check-config", write_settings(), env=env)
    assert result.returncode == 2
    assert "DRAGOMAN_MAPPING__ENCRYPTION__KEKS: not valid JSON" in result.stderr
    assert "secret-kek-value" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
