"""Browser settings: origins, CSRF, sessions and pages."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from dragoman.settings.base import (
    Duration,
    Section,
    check_existing_file,
    check_http_url,
    check_redis_url,
)

CsrfMode = Literal["off", "browser", "required"]
SessionBackend = Literal["memory", "redis"]


class BrowserSettings(Section):
    """Browser-facing protections: CORS, security headers, sessions and CSRF (SEMANTICS §5)."""

    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the proxy from a browser (CORS); never a wildcard.",
    )
    frame_ancestors: list[str] = Field(
        default_factory=list,
        description="Origins that may frame pages the proxy serves (CSP frame-ancestors).",
    )
    pages_dir: Path | None = Field(
        None,
        description=(
            "Directory of pages the proxy serves at /_dragoman/pages/NAME (a widget, say):"
            " .html, .js, .css, .svg and .png files, read at start. In HTML, {{csp-nonce}}"
            " becomes the answer's CSP nonce; only scripts carrying it run. Pages may be"
            " framed by frame_ancestors only."
        ),
    )
    hsts_max_age: int = Field(
        31_536_000, ge=0, description="Strict-Transport-Security max-age in seconds."
    )
    csrf: CsrfMode = Field(
        "browser",
        description=(
            "When an API request (reads included) needs a valid CSRF pair"
            " (`__Host-dragoman-csrf` cookie + `X-CSRF-Token` header, SEMANTICS §5):"
            " `browser` when it carries the session cookie, an `Origin` or any `Sec-Fetch-*`"
            " header; `required` always; `off` never (for APIs no browser calls)."
        ),
    )
    csrf_key: SecretStr | None = Field(
        None,
        description=(
            "Server key MAC'ing the CSRF tokens (base64url, 32 bytes); prefer"
            " DRAGOMAN_BROWSER__CSRF_KEY or csrf_key_file. Instances sharing sessions share"
            " it. Unset with in-memory sessions: a random key per start."
        ),
    )
    csrf_key_file: Path | None = Field(
        None, description="File holding the CSRF key (base64url, 32 bytes)."
    )
    csrf_grace: Duration = Field(
        10.0,
        ge=0,
        le=300,
        description="How long the previous CSRF token stays live after a session refresh.",
    )
    session_lifetime: Duration = Field(
        28_800.0,
        ge=60,
        le=7 * 86400,
        description=(
            "Lifetime of a browser session from its handshake (refreshes rotate the token,"
            " they do not extend it)."
        ),
    )
    session_backend: SessionBackend = Field(
        "memory",
        description=(
            "Where sessions live: `memory` (one process) or `redis` (shared by instances)."
        ),
    )
    session_redis_url: str | None = Field(
        None, description="Redis URL of the session store (`redis://` or `rediss://`)."
    )
    max_sessions: int = Field(
        100_000,
        ge=1,
        description=(
            "Most live sessions the in-memory store holds; at the cap, expired sessions are"
            " swept and a new handshake is refused with 503 session_unavailable rather than"
            " evicting someone's session. Redis sessions expire by TTL."
        ),
    )

    @field_validator("allowed_origins", "frame_ancestors")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or "*" in origin:
                raise ValueError("wildcards are not allowed; list each origin")
            check_http_url(origin, require_tls=True, allow_path=False)
        return [o.rstrip("/") for o in value]

    @field_validator("csrf_key")
    @classmethod
    def _csrf_key_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        from dragoman.keys.sealing import SealingError, decode_master_key

        if value is not None:
            try:
                decode_master_key(value.get_secret_value())
            except SealingError:
                raise ValueError("the CSRF key is not 32 bytes of base64url") from None
        return value

    @field_validator("pages_dir")
    @classmethod
    def _pages_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError("directory not found")
        return value

    @field_validator("csrf_key_file")
    @classmethod
    def _csrf_key_file_readable(cls, value: Path | None) -> Path | None:
        return check_existing_file(value)

    @field_validator("session_redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @model_validator(mode="after")
    def _session_backend_complete(self) -> BrowserSettings:
        if self.csrf_key is not None and self.csrf_key_file is not None:
            raise ValueError("set at most one of csrf_key, csrf_key_file")
        if self.session_backend == "redis":
            if self.session_redis_url is None:
                raise ValueError("the redis session backend needs session_redis_url")
            if self.csrf_key is None and self.csrf_key_file is None:
                raise ValueError("sessions shared in Redis need a shared csrf_key or csrf_key_file")
        return self
