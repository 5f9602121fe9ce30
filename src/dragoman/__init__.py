"""dragoman: a trust-translation proxy.

It authenticates every caller with the application's own identity system, maps the cloud
account to the upstream's customer, checks the operation, and forwards the call with a
short-lived JWT scoped to that customer, operation and request.

The public API (pinned by tests/test_public_api.py):
"""

from __future__ import annotations

__version__ = "0.1.0"

from dragoman.settings import Settings, SettingsError, load_settings
from dragoman.tokens.verify import (
    Requirement,
    TokenMiddleware,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    verify_aiohttp,
)

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
