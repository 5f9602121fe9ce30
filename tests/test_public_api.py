"""The public API of the package is pinned: changing it is a deliberate act."""

from __future__ import annotations

import dragoman


def test_exported_members() -> None:
    assert sorted(dragoman.__all__) == [
        "Requirement",
        "Settings",
        "SettingsError",
        "TokenMiddleware",
        "TokenRejected",
        "TokenVerifier",
        "VerifiedToken",
        "__version__",
        "load_settings",
        "verify_aiohttp",
    ]
    for name in dragoman.__all__:
        assert hasattr(dragoman, name)


def test_version_is_a_release_string() -> None:
    major, minor, patch = dragoman.__version__.split(".")
    assert major.isdigit() and minor.isdigit() and patch.isdigit()
