"""Shared settings building blocks: the env prefix, durations, URL checks, Section."""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict

ENV_PREFIX = "DRAGOMAN_"
CONFIG_ENV = "DRAGOMAN_CONFIG"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


MAX_DURATION = 100 * 365 * 86400.0
"""The longest duration any setting takes (100 years); each setting has its own bound too."""

_DURATION_FORM = "a duration is a number of seconds or a string like '90s', '5m', '36h'"


def parse_duration(value: object) -> object:
    """Turn ``"90s"``, ``"5m"``, ``"36h"`` or a number into seconds (float).

    Infinity, NaN and numbers past :data:`MAX_DURATION` are refused (ValueError, which the
    loader reports under the setting's key): an endless duration would switch a check off.
    """
    if isinstance(value, bool):
        raise ValueError(_DURATION_FORM)
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            match = _DURATION.match(value)
            if match is None:
                raise ValueError(_DURATION_FORM)
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        else:
            return value
    except OverflowError:
        raise ValueError("a duration must be finite and at most 100 years") from None
    if math.isnan(seconds):
        raise ValueError(_DURATION_FORM)
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError("a duration must be finite and at most 100 years")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_url(value: str, *, require_tls: bool, allow_path: bool = True) -> str:
    """An absolute http(s) URL without query, fragment or credentials.

    With ``require_tls`` plain http is accepted only for loopback hosts (tests and the demo).
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or a fragment")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError("must not carry a path")
    if require_tls and parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("must use https (plain http is accepted for loopback hosts only)")
    return value


def check_existing_file(value: Path | None) -> Path | None:
    """A file setting's check at load: unset, or a file that exists."""
    if value is not None and not value.is_file():
        raise ValueError("file not found")
    return value


def check_redis_url(value: str | None) -> str | None:
    """A Redis URL (``redis://`` or ``rediss://`` with a host), or None."""
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("must be a redis:// or rediss:// URL")
    return value


class Section(BaseModel):
    """Base of every settings table: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
