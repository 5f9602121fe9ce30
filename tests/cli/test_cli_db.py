"""`dragoman db upgrade | current`, run as the real executable against SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dragoman.state import migrate


def test_current_of_a_fresh_database_is_empty(dragoman: Any, config: Path) -> None:
    result = dragoman("db", "current", "-c", config)
    assert (result.returncode, result.stdout) == (0, "(empty)\n"), result.stderr


def test_upgrade_reports_the_head_revision(dragoman: Any, config: Path) -> None:
    result = dragoman("db", "upgrade", "-c", config)
    assert (result.returncode, result.stdout) == (0, f"at revision {migrate.head_revision()}\n"), (
        result.stderr
    )


def test_current_after_upgrade_is_the_head_revision(dragoman: Any, config: Path) -> None:
    dragoman("db", "upgrade", "-c", config)
    result = dragoman("db", "current", "-c", config)
    assert (result.returncode, result.stdout) == (0, f"{migrate.head_revision()}\n"), result.stderr


def test_upgrade_twice_is_a_noop_that_keeps_the_mappings(dragoman: Any, config: Path) -> None:
    assert dragoman("db", "upgrade", "-c", config).returncode == 0
    added = dragoman(
        "mappings", "add", "-c", config,
        "--account", "acct-1001", "--customer", "cus_alice", "--by", "ops",
        "--grant", "role:billing_admin=*",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    again = dragoman("db", "upgrade", "-c", config)
    assert (again.returncode, again.stdout) == (0, f"at revision {migrate.head_revision()}\n"), (
        again.stderr
    )
    listed = dragoman("mappings", "list", "-c", config)
    assert len(listed.stdout.splitlines()) == 1


def test_mappings_command_migrates_a_fresh_database_when_auto_migrate_is_on(
    dragoman: Any, config: Path
) -> None:
    assert dragoman("mappings", "list", "-c", config).returncode == 0
    assert dragoman("db", "current", "-c", config).stdout == f"{migrate.head_revision()}\n"


def test_mappings_command_leaves_the_schema_alone_when_auto_migrate_is_off(
    dragoman: Any, write_settings: Any, database_url: str
) -> None:
    def no_auto_migrate(data: dict[str, Any]) -> None:
        data["store"]["auto_migrate"] = False

    config = write_settings(database_url, edit=no_auto_migrate)
    result = dragoman("mappings", "list", "-c", config)
    # No table: the store cannot answer, and the schema is not created behind the operator.
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert dragoman("db", "current", "-c", config).stdout == "(empty)\n"


def test_upgrade_on_an_unreachable_store_exits_3_with_a_message(
    dragoman: Any, write_settings: Any, unreachable_url: str
) -> None:
    result = dragoman("db", "upgrade", "-c", write_settings(unreachable_url))
    assert result.returncode == 3
    assert "the state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_current_on_an_unreachable_store_exits_3_with_a_message(
    dragoman: Any, write_settings: Any, unreachable_url: str
) -> None:
    result = dragoman("db", "current", "-c", write_settings(unreachable_url))
    assert result.returncode == 3
    assert "the state store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_command_with_an_invalid_settings_file_exits_2(
    dragoman: Any, write_settings: Any
) -> None:
    def bad_url(data: dict[str, Any]) -> None:
        data["store"]["database_url"] = "mysql://root@127.0.0.1/dragoman"

    result = dragoman("db", "upgrade", "-c", write_settings(edit=bad_url))
    assert result.returncode == 2
    assert "store.database_url" in result.stderr
