"""Whether the tests run under CI, and what a missing service means there.

A module of its own (not tests/conftest.py) so that any test, fixture or nested conftest can
import it: ``import conftest`` finds whichever of the several conftest modules took that
name first."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, why: str) -> None:
    """Skip locally; under CI a missing service is a failure, never a silent skip."""
    message = f"{what} is not reachable ({why})"
    if IN_CI:
        pytest.fail(message + "; CI=true requires it", pytrace=False)
    pytest.skip(message)
