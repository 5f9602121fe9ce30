"""`dragoman check-config FILE`: a valid file passes; a file with several mistakes lists
every problem with its dotted key in one run, and never echoes a value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SECRET_PASSWORD = "s3cret-db-password"
SECRET_KEY = "hunter2-not-a-master-key"


def several_mistakes(data: dict[str, Any]) -> None:
    data["server"]["bogus_key"] = 1  # unknown key
    data["upstream"]["url"] = "ftp://payments.internal"  # bad URL
    data["tokens"]["ttl"] = "1h"  # longer than 15 minutes
    del data["keys"]["master_key_file"]  # no master key at all
    data["store"]["database_url"] = f"mysql://root:{SECRET_PASSWORD}@db/dragoman"


def problems(stderr: str) -> dict[str, str]:
    """The listed problems: dotted key -> message."""
    found = {}
    for line in stderr.splitlines()[1:]:
        key, _, message = line.strip().partition(": ")
        found[key] = message
    return found


def test_valid_file_passes_with_exit_0(dragoman: Any, write_settings: Any) -> None:
    path = write_settings()
    result = dragoman("check-config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: OK (1 issuer(s), 8 operation(s))\n"


def test_valid_file_with_a_postgresql_store_passes_with_exit_0(
    dragoman: Any, write_settings: Any
) -> None:
    path = write_settings("postgresql+asyncpg://postgres@127.0.0.1:5432/dragoman")
    assert dragoman("check-config", path).returncode == 0


def test_file_with_several_mistakes_exits_nonzero(dragoman: Any, write_settings: Any) -> None:
    result = dragoman("check-config", write_settings(edit=several_mistakes))
    assert result.returncode != 0
    assert result.stdout == ""


def test_file_with_several_mistakes_lists_every_problem_by_dotted_key_in_one_run(
    dragoman: Any, write_settings: Any
) -> None:
    path = write_settings(edit=several_mistakes)
    result = dragoman("check-config", path)
    assert result.stderr.splitlines()[0] == f"{path}: 5 problem(s)"
    listed = problems(result.stderr)
    assert set(listed) == {
        "server.bogus_key",
        "upstream.url",
        "tokens.ttl",
        "keys",
        "store.database_url",
    }
    assert "not permitted" in listed["server.bogus_key"]
    assert "http" in listed["upstream.url"]
    assert "900" in listed["tokens.ttl"]
    assert "master_key" in listed["keys"]
    assert "postgresql+asyncpg://" in listed["store.database_url"]


def test_problems_never_echo_the_offending_values(dragoman: Any, write_settings: Any) -> None:
    def secrets_in_values(data: dict[str, Any]) -> None:
        several_mistakes(data)
        data["keys"]["master_key"] = SECRET_KEY

    result = dragoman("check-config", write_settings(edit=secrets_in_values))
    assert result.returncode != 0
    assert "keys.master_key" in problems(result.stderr)
    output = result.stdout + result.stderr
    assert SECRET_KEY not in output
    assert SECRET_PASSWORD not in output
    assert "ftp://payments.internal" not in output


def test_environment_override_is_checked_with_the_file(dragoman: Any, write_settings: Any) -> None:
    result = dragoman("check-config", write_settings(), env={"DRAGOMAN_TOKENS__TTL": "2h"})
    assert result.returncode != 0
    assert set(problems(result.stderr)) == {"tokens.ttl"}


def test_missing_file_exits_nonzero_naming_it(dragoman: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = dragoman("check-config", missing)
    assert result.returncode != 0
    assert re.search(rf"{re.escape(str(missing))}: settings file not found", result.stderr)


def test_file_that_is_not_toml_exits_nonzero(dragoman: Any, tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 80\n", "utf-8")
    result = dragoman("check-config", path)
    assert result.returncode != 0
    assert "not valid TOML" in result.stderr
