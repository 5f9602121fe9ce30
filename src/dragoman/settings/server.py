"""Listener, upstream, token and store settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section, check_existing_file, check_http_url

DEFAULT_BODY_TIMEOUT = 10.0
"""``server.body_timeout``'s default, also the default of the readers that take it."""
DEFAULT_HEADER_TIMEOUT = 10.0
"""``server.header_timeout``'s default, also that of the listeners that take it."""
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
"""``server.keepalive_timeout``'s default, also that of the listeners that take it."""
DEFAULT_WRITE_TIMEOUT = 30.0
"""``server.write_timeout``'s default, also the forwarder's."""


class TlsSettings(Section):
    """dragoman terminates TLS itself (TLS 1.2 at least), and may ask for client certificates."""

    cert_file: Path = Field(
        ..., description="PEM certificate chain of the listener (leaf first, then intermediates)."
    )
    key_file: Path = Field(..., description="PEM private key of `cert_file`.")
    client_ca_file: Path | None = Field(
        None,
        description=(
            "PEM bundle of the CAs whose client certificates are accepted; when set the"
            " listener asks every caller for a certificate (`server.tls`: needed by"
            " `identity.mtls`; `decision.tls`: the gateway's). A certificate that does not"
            " verify against it, or is expired, fails the handshake."
        ),
    )
    client_auth: Literal["optional", "required"] = Field(
        "optional",
        description=(
            "With `client_ca_file`: `optional` lets callers without a certificate connect (they"
            " use bearer tokens); `required` refuses them in the handshake (`decision.tls`"
            " takes `required` only)."
        ),
    )

    reload_interval: Duration = Field(
        60.0,
        ge=0,
        le=86400,
        description=(
            "How often the listener looks at `cert_file`, `key_file` and `client_ca_file` and,"
            " when one changed, loads them again (a renewed certificate, a mounted secret):"
            " new connections get the new certificate, open ones keep theirs. Files that do"
            " not load leave the previous certificate serving, with a warning. 0: never (a"
            " restart loads them)."
        ),
    )

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _files_exist(cls, value: Path | None) -> Path | None:
        return check_existing_file(value)

    @model_validator(mode="after")
    def _required_needs_a_bundle(self) -> TlsSettings:
        if self.client_auth == "required" and self.client_ca_file is None:
            raise ValueError("client_auth `required` needs client_ca_file")
        return self


class ServerSettings(Section):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on (0: any free).")
    workers: int = Field(
        1,
        ge=0,
        le=256,
        description="Worker processes sharing the port with SO_REUSEPORT; 0 means one per core.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=0,
        le=1_073_741_824,
        description="Largest request body forwarded upstream; larger bodies get 413.",
    )
    body_timeout: Duration = Field(
        DEFAULT_BODY_TIMEOUT,
        gt=0,
        le=600,
        description=(
            "Longest wait for the next bytes of a request body (then 408 body_timeout). A"
            " caller that stops sending mid-body would otherwise hold an upstream connection"
            " and a place in max_in_flight for good."
        ),
    )
    header_timeout: Duration = Field(
        DEFAULT_HEADER_TIMEOUT,
        gt=0,
        le=300,
        description=(
            "Longest time a caller may take to send a whole request head (request line and"
            " headers), counted from the connection's opening for its first request and"
            " from the first byte of each next one on a kept-alive connection; past it the"
            " connection is closed without an answer. A caller trickling its headers would"
            " otherwise hold a connection, and up to some 4 MB of buffered header lines,"
            " until `keepalive_timeout`. Applies to the proxy's and the decision listener's"
            " connections, and (at its default) the metrics listener's."
        ),
    )
    keepalive_timeout: Duration = Field(
        DEFAULT_KEEPALIVE_TIMEOUT,
        gt=0,
        le=3600,
        description=(
            "Longest time a kept-alive connection may go from the end of an answer to the"
            " whole head of its next request (then it is closed). Keep it longer than a"
            " front proxy's or gateway's idle timeout for its pooled connections, so the"
            " pool closes them first. Applies to the proxy's and the decision listener's"
            " connections, and (at its default) the metrics listener's."
        ),
    )
    write_timeout: Duration = Field(
        DEFAULT_WRITE_TIMEOUT,
        gt=0,
        le=600,
        description=(
            "Longest wait for a caller to take the next part of a forwarded answer (its"
            " head, each chunk of 64 KiB, its end); past it the connection is aborted (the"
            " caller sees an incomplete answer) and the request recorded with stream_error"
            " `client_stalled`. A caller that never reads a large answer would otherwise"
            " hold an upstream connection and a place in max_in_flight for good (the"
            " upstream's read_timeout does not run while the caller holds the stream back)."
        ),
    )
    shutdown_timeout: Duration = Field(
        10.0, gt=0, le=600, description="How long in-flight requests may run on shutdown."
    )
    max_in_flight: int = Field(
        512,
        ge=0,
        description=(
            "Proxied requests and decisions one worker handles at once; past it a request is"
            " refused at once, before any check, with 503 overloaded and Retry-After: 1"
            " (0: no bound). A worker past its capacity otherwise queues every request"
            " behind the others until all of them are late."
        ),
    )
    trust_request_id: bool = Field(
        True,
        description=(
            "Keep a client-sent X-Request-Id when it is 8-64 characters of [A-Za-z0-9._-];"
            " otherwise (or when false) a fresh one is generated."
        ),
    )
    tls: TlsSettings | None = Field(
        None, description="Terminate TLS in dragoman; unset: plain http (TLS ends in front)."
    )


class UpstreamSettings(Section):
    url: str = Field(..., description="Base URL of the upstream; request paths are appended.")
    audience: str = Field(..., min_length=1, description="`aud` of the tokens minted for it.")
    connect_timeout: Duration = Field(3.0, gt=0, le=60, description="Connect timeout (then 502).")
    read_timeout: Duration = Field(
        30.0,
        gt=0,
        le=600,
        description=(
            "Timeout waiting for upstream data, and for the upstream to take the next part"
            " of a streamed request body (then 504)."
        ),
    )
    pool_size: int = Field(
        100,
        ge=1,
        le=10_000,
        description=(
            "Pooled connections per worker: at most this many of its requests are at the"
            " upstream at once; the others wait in order of arrival, up to read_timeout"
            " (then 504)."
        ),
    )
    strip_set_cookie: bool = Field(
        True, description="Drop Set-Cookie from upstream answers (the proxy's origin is not its)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value, require_tls=False).rstrip("/")


class TokenSettings(Section):
    issuer: str = Field("dragoman", min_length=1, description="`iss` of minted tokens.")
    ttl: Duration = Field(
        300.0, ge=10, le=900, description="Lifetime of a minted token (at most 15 minutes)."
    )
    algorithm: Literal["ES256"] = Field("ES256", description="Signing algorithm.")


class StoreSettings(Section):
    """The shared state store: account mappings and the signing key set."""

    database_url: str = Field(
        "sqlite+aiosqlite:///var/dragoman.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://...",
    )
    auto_migrate: bool = Field(True, description="Apply database migrations at start.")
    pool_size: int = Field(5, ge=1, le=200, description="Database connections per worker.")
    query_timeout: Duration = Field(
        2.0, gt=0, le=60, description="Longest wait for a query (then 503)."
    )
    health_interval: Duration = Field(
        1.0,
        gt=0,
        le=60,
        description=(
            "How often each worker pings the database; once a ping (or any query) fails,"
            " cached mappings are refused (503) until it answers again."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _supported_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value
