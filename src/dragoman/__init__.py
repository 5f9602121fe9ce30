"""dragoman: a trust-translation proxy.

It authenticates every caller with the application's own identity system, maps the cloud
account to the upstream's customer, checks the operation, and forwards the call with a
short-lived JWT scoped to that customer, operation and request.

The public API (pinned by tests/test_public_api.py) is imported on first use, so that the
command line and the modules of the package do not pay for the verifier's imports.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dragoman.settings import Settings, SettingsError, load_settings
    from dragoman.tokens.verify import (
        Requirement,
        TokenMiddleware,
        TokenRejected,
        TokenVerifier,
        VerifiedToken,
        verify_aiohttp,
    )

_EXPORTS = {
    "Requirement": "dragoman.tokens.verify",
    "Settings": "dragoman.settings",
    "SettingsError": "dragoman.settings",
    "TokenMiddleware": "dragoman.tokens.verify",
    "TokenRejected": "dragoman.tokens.verify",
    "TokenVerifier": "dragoman.tokens.verify",
    "VerifiedToken": "dragoman.tokens.verify",
    "load_settings": "dragoman.settings",
    "verify_aiohttp": "dragoman.tokens.verify",
}

__all__ = [
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dragoman' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
