"""What `dragoman serve` would refuse at start is refused when the settings load, so
`dragoman check-config` says it too (it said OK, then `serve` died with a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from settings_support import settings_problems


def test_registration_grants_naming_an_operation_not_in_the_catalog_are_refused(
    tmp_path: Path,
) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["mapping"] = {
            "registration": {"default_grants": [{"role": "owner", "operations": ["nope.get"]}]}
        }

    problems = settings_problems(tmp_path, edit)
    assert "grants name operations that are not in the catalog: nope.get" in " ".join(
        problems.values()
    )


def test_a_platform_customer_operation_that_is_not_a_get_of_a_customer_is_refused(
    tmp_path: Path,
) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["mapping"] = {"platform": {"customer_operation": "payment_methods.create"}}

    problems = settings_problems(tmp_path, edit)
    message = problems["mapping.platform.customer_operation"]
    assert message.startswith("'payment_methods.create' must be a GET")


@pytest.mark.parametrize("key", ["server", "metrics", "decision"])
def test_port_zero_with_several_workers_is_refused(tmp_path: Path, key: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("server", {})["workers"] = 2
        for section, port in (("server", 8080), ("metrics", 9101), ("decision", 9102)):
            table = data.setdefault(section, {})
            table["port"] = 0 if section == key else port
            if section != "server":
                table["enabled"] = True
        # Several workers need state every worker shares.
        data.setdefault("browser", {})["csrf"] = "off"
        data.setdefault("limits", {})["enabled"] = False
        data.setdefault("anomaly", {})["enabled"] = False

    problems = settings_problems(tmp_path, edit)
    assert problems[f"{key}.port"].startswith("0 (any free port) works with one worker only")
