"""Settings mistakes, as the loader reports them: the demo's settings file with one change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dragoman.demo.runner import demo_settings, write_toml
from dragoman.settings import Settings, SettingsError, load_settings

Edit = Callable[[dict[str, Any]], None]


def demo_settings_file(tmp_path: Path, edit: Edit = lambda _: None) -> Path:
    """The demo's settings file (and its master key) in ``tmp_path``, after ``edit``."""
    (tmp_path / "master.key").write_text("A" * 43)
    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )
    edit(data)
    path = tmp_path / "dragoman.toml"
    write_toml(data, path)
    return path


def load_demo(tmp_path: Path, edit: Edit = lambda _: None, **kwargs: Any) -> Settings:
    """The demo's settings after ``edit``; loading must succeed."""
    return load_settings(demo_settings_file(tmp_path, edit), **kwargs)


def settings_problems(
    tmp_path: Path,
    edit: Callable[[dict[str, Any]], None] = lambda _: None,
    *,
    overrides: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The problems (dotted key -> message) of the demo's settings after ``edit`` changed
    them (and ``overrides`` were applied at load); loading must fail."""
    path = demo_settings_file(tmp_path, edit)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, overrides=overrides)
    return {p.key: p.message for p in caught.value.problems}
