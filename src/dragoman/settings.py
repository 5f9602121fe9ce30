"""Typed settings: one TOML file plus ``DRAGOMAN_*`` environment overrides.

Everything is validated at load, and every problem is reported at once with the dotted key
that is wrong (``upstream.url: ...``), never with the offending value: a bad value may be a
secret. Environment variables override the file, nested keys joined by ``__``:
``DRAGOMAN_UPSTREAM__URL=https://payments.internal``.

Durations accept seconds (``30``) or a number with a unit (``90s``, ``5m``, ``36h``, ``1d``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dragoman.jose.strict import normalise_typ

ENV_PREFIX = "DRAGOMAN_"
CONFIG_ENV = "DRAGOMAN_CONFIG"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> object:
    """Turn ``"90s"``, ``"5m"``, ``"36h"`` or a number into seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '90s', '5m', '36h'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                "a duration is a number of seconds or a string like '90s', '5m', '36h'"
            )
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


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
    shutdown_timeout: Duration = Field(
        10.0, gt=0, le=600, description="How long in-flight requests may run on shutdown."
    )
    trust_request_id: bool = Field(
        True,
        description=(
            "Keep a client-sent X-Request-Id when it is 8-64 characters of [A-Za-z0-9._-];"
            " otherwise (or when false) a fresh one is generated."
        ),
    )


TokenAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


class OidcIssuerSettings(Section):
    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Short name of this issuer, used in audit records and metrics.",
    )
    issuer: str = Field(
        ..., description="Exact `iss` value; discovery is fetched from it. https unless loopback."
    )
    audiences: list[str] = Field(
        ..., min_length=1, description="Accepted `aud` values; a token must name at least one."
    )
    algorithms: list[TokenAlgorithm] = Field(
        ["RS256", "ES256"],
        min_length=1,
        description="Signature algorithms accepted from this issuer (asymmetric only).",
    )
    jwks_uri: str | None = Field(
        None, description="JWKS URL; when unset it is read from the issuer's discovery document."
    )
    accepted_types: list[str] = Field(
        ["at+jwt"],
        min_length=1,
        description=(
            "Accepted JOSE `typ` header values (case-insensitive, `application/` prefix"
            " ignored). The default accepts access tokens only, so ID tokens are refused."
        ),
    )
    allow_missing_type: bool = Field(
        False, description="Accept tokens without a `typ` header (for issuers that omit it)."
    )
    principal_claim: str = Field(
        "sub", min_length=1, description="Claim naming the principal (dotted path for nesting)."
    )
    account_claim: str = Field(
        "cloud_account", min_length=1, description="Claim naming the cloud account."
    )
    roles_claim: str | None = Field(
        "roles", description="Claim holding the principal's roles (list or space-separated)."
    )
    principal_prefix: str = Field(
        "", description="Prepended to the principal, to keep issuers' namespaces apart."
    )
    account_prefix: str = Field(
        "", description="Prepended to the cloud account, to keep issuers' namespaces apart."
    )
    leeway: Duration = Field(30.0, ge=0, le=120, description="Clock leeway for exp, nbf and iat.")
    jwks_cache_ttl: Duration = Field(
        300.0, ge=1, le=86400, description="How long fetched keys are used before a refresh."
    )
    jwks_max_stale: Duration = Field(
        86400.0,
        ge=0,
        le=7 * 86400,
        description=(
            "How long past their TTL cached keys keep verifying while the provider is"
            " unreachable; after that, requests are refused with 503."
        ),
    )
    jwks_refetch_interval: Duration = Field(
        30.0,
        ge=1,
        le=3600,
        description=(
            "Least time between two fetches caused by an unknown `kid`, so a flood of"
            " random kids cannot make the proxy hammer the provider."
        ),
    )
    http_timeout: Duration = Field(
        5.0, gt=0, le=60, description="Timeout of discovery and JWKS requests."
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        return check_http_url(value, require_tls=True)

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri_is_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, require_tls=True)

    @field_validator("accepted_types")
    @classmethod
    def _normalise_types(cls, value: list[str]) -> list[str]:
        return [normalise_typ(t) for t in value]


class IdentitySettings(Section):
    oidc: list[OidcIssuerSettings] = Field(
        default_factory=list, description="OIDC issuers whose tokens authenticate callers."
    )
    max_token_bytes: int = Field(
        16_384, ge=512, le=65_536, description="Longest bearer token looked at; longer: 401."
    )
    verify_cache_ttl: Duration = Field(
        60.0,
        ge=0,
        le=3600,
        description=(
            "How long a verified bearer token is remembered (keyed on the whole token, never"
            " past its exp, dropped when its key leaves the key set); 0: verify every time."
        ),
    )

    @model_validator(mode="after")
    def _issuers_are_distinct(self) -> IdentitySettings:
        names = [i.name for i in self.oidc]
        issuers = [i.issuer for i in self.oidc]
        if len(set(names)) != len(names):
            raise ValueError("oidc issuer names must be unique")
        if len(set(issuers)) != len(issuers):
            raise ValueError("each issuer URL may be configured only once")
        return self


class UpstreamSettings(Section):
    url: str = Field(..., description="Base URL of the upstream; request paths are appended.")
    audience: str = Field(..., min_length=1, description="`aud` of the tokens minted for it.")
    connect_timeout: Duration = Field(3.0, gt=0, le=60, description="Connect timeout (then 502).")
    read_timeout: Duration = Field(
        30.0, gt=0, le=600, description="Timeout waiting for upstream data (then 504)."
    )
    pool_size: int = Field(100, ge=1, le=10_000, description="Pooled connections per worker.")
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


class Pkcs11Settings(Section):
    module: Path = Field(
        Path("/usr/lib/softhsm/libsofthsm2.so"), description="Path of the PKCS#11 module."
    )
    token_label: str = Field("dragoman", min_length=1, description="Label of the token.")
    pin: SecretStr = Field(
        SecretStr(""), description="User PIN; prefer DRAGOMAN_KEYS__PKCS11__PIN."
    )
    label_prefix: str = Field(
        "dragoman-", min_length=1, description="Prefix of the labels of keys it makes."
    )


class AwsKmsSettings(Section):
    region: str = Field("us-east-1", min_length=1, description="AWS region of the KMS keys.")
    endpoint_url: str | None = Field(
        None, description="KMS endpoint (a VPC endpoint, or a local test server)."
    )
    alias: str = Field(
        "alias/dragoman-signing",
        pattern=r"^alias/[A-Za-z0-9/_-]+$",
        description=(
            "Alias moved to the current signing key at each rotation (not under alias/aws/,"
            " which AWS reserves)."
        ),
    )

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("alias/aws/"):
            raise ValueError("alias/aws/ is reserved by AWS")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, require_tls=True)


class KeySettings(Section):
    """Signing keys and their rotation timeline (docs/keys.md)."""

    provider: Literal["local", "pkcs11", "aws-kms"] = Field(
        "local",
        description=(
            "Who holds the private keys: `local` (sealed with the master key in the state"
            " store), `pkcs11` (an HSM), `aws-kms`."
        ),
    )
    master_key: SecretStr | None = Field(
        None,
        description=(
            "Base64url 32-byte key that seals local private keys at rest; prefer"
            " DRAGOMAN_KEYS__MASTER_KEY or master_key_file over writing it here."
        ),
    )
    master_key_file: Path | None = Field(
        None, description="File holding the master key (base64url, 32 bytes)."
    )
    rotation_period: Duration = Field(
        3600.0, ge=60, le=90 * 86400, description="How long each key is the current key."
    )
    overlap: Duration = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long the previous key keeps verifying after a rotation.",
    )
    prepublish: Duration = Field(
        600.0,
        ge=0,
        le=86400,
        description=(
            "How long a new key is published before it signs; at least the upstream's"
            " JWKS cache time, and at least jwks_max_age."
        ),
    )
    auto_rotate: bool = Field(True, description="Rotate on schedule (off: only `keys rotate`).")
    refresh_interval: Duration = Field(
        2.0,
        gt=0,
        le=60,
        description=(
            "How often each worker re-reads the key set; a worker whose view is older than"
            " three intervals refuses to sign (503 key_unavailable) until it has re-read it."
        ),
    )
    jwks_max_age: Duration = Field(
        300.0, ge=0, le=86400, description="Cache-Control max-age of /.well-known/jwks.json."
    )
    pkcs11: Pkcs11Settings = Field(
        default_factory=lambda: Pkcs11Settings(), description="The pkcs11 provider."
    )
    aws_kms: AwsKmsSettings = Field(
        default_factory=lambda: AwsKmsSettings(), description="The aws-kms provider."
    )

    @field_validator("master_key")
    @classmethod
    def _master_key_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        from dragoman.keys.sealing import SealingError, decode_master_key

        if value is not None:
            try:
                decode_master_key(value.get_secret_value())
            except SealingError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("master_key_file")
    @classmethod
    def _master_key_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KeySettings:
        if self.provider == "local" and (self.master_key is None) == (self.master_key_file is None):
            raise ValueError("the local provider needs exactly one of master_key, master_key_file")
        if self.provider == "pkcs11" and not self.pkcs11.pin.get_secret_value():
            raise ValueError("the pkcs11 provider needs keys.pkcs11.pin")
        if self.jwks_max_age > self.prepublish:
            raise ValueError(
                "jwks_max_age must not exceed prepublish (verifiers would meet unknown kids)"
            )
        if self.prepublish >= self.rotation_period:
            raise ValueError("prepublish must be shorter than rotation_period")
        if 3 * self.refresh_interval > min(self.overlap, self.prepublish):
            # A worker may sign from a view up to three refresh intervals old.
            raise ValueError("3 x refresh_interval must not exceed overlap nor prepublish")
        return self


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


class MappingEncryptionSettings(Section):
    """Envelope encryption of the mappings (docs/mappings.md). Without settings here, one
    key-encryption key (id `master`) and the blind-index key are derived from the local
    provider's master key."""

    keks: dict[str, SecretStr] = Field(
        default_factory=dict,
        description=(
            "Key-encryption keys by id (base64url, 32 bytes each), to wrap each mapping's"
            " data key; prefer DRAGOMAN_MAPPING__ENCRYPTION__KEKS (JSON)."
        ),
    )
    active_kek: str | None = Field(
        None,
        description="Id of the KEK that wraps new data keys (and all of them after a rekey).",
    )
    index_key: SecretStr | None = Field(
        None,
        description=(
            "Key of the blind indexes (base64url, 32 bytes). It cannot change without"
            " re-indexing; derived from the master key when unset."
        ),
    )

    @field_validator("keks")
    @classmethod
    def _keks_decode(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from dragoman.keys.sealing import SealingError, decode_master_key

        for kek_id, secret in value.items():
            if not kek_id or len(kek_id) > 64:
                raise ValueError("KEK ids are 1 to 64 characters")
            try:
                decode_master_key(secret.get_secret_value())
            except SealingError:
                raise ValueError(f"KEK {kek_id!r} is not 32 bytes of base64url") from None
        return value

    @field_validator("index_key")
    @classmethod
    def _index_key_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        from dragoman.keys.sealing import SealingError, decode_master_key

        if value is not None:
            try:
                decode_master_key(value.get_secret_value())
            except SealingError:
                raise ValueError("the index key is not 32 bytes of base64url") from None
        return value


class PlatformRecordSettings(Section):
    """How dragoman reads the upstream's own customer records, to verify a new link and to
    reconcile existing ones."""

    customer_operation: str = Field(
        "customers.get",
        description=(
            "Catalog operation that returns one customer (its path names the customer);"
            " dragoman calls it with a token it mints for that customer."
        ),
    )
    account_field: str = Field(
        "metadata.cloud_account",
        description="Dotted path, in the customer record, of the cloud account that owns it.",
    )
    deleted_field: str = Field(
        "deleted", description="Dotted path of a boolean that marks a deleted customer."
    )
    merged_field: str = Field(
        "merged_into", description="Dotted path of the customer id it was merged into."
    )
    timeout: Duration = Field(5.0, gt=0, le=60, description="Timeout of one lookup.")


class GrantSettings(Section):
    principal: str | None = Field(
        None, min_length=1, description="The principal granted (one of principal, role)."
    )
    role: str | None = Field(
        None, min_length=1, description="The role granted (one of principal, role)."
    )
    operations: list[str] = Field(
        ...,
        min_length=1,
        description="Operation ids, scopes, `resource:*` or `*`; checked against the catalog.",
    )

    @model_validator(mode="after")
    def _one_grantee(self) -> GrantSettings:
        if (self.principal is None) == (self.role is None):
            raise ValueError("a grant names exactly one of principal and role")
        return self


def _default_registration_grants() -> list[GrantSettings]:
    return [
        GrantSettings(role="owner", operations=["*"]),
        GrantSettings(role="billing_admin", operations=["*"]),
    ]


class RegistrationSettings(Section):
    """Linking a cloud account to a payment customer: `POST` / `DELETE
    /_dragoman/registration` (the caller's own account, from its verified credential) and
    `dragoman mappings link`. A link is verified with the payment platform before it is
    written, active; a refused one leaves no mapping. Default `default_grants`: roles
    `owner` and `billing_admin` may do every operation (`*`)."""

    enabled: bool = Field(
        True,
        description=(
            "Serve /_dragoman/registration (off: it is an unknown path; `dragoman mappings"
            " link` still works)."
        ),
    )
    roles: list[str] = Field(
        ["owner", "billing_admin"],
        description=(
            "Roles (from the identity token) that may link and unlink their own cloud"
            " account; empty: nobody may, over HTTP."
        ),
    )
    verifier: Literal["platform-metadata"] = Field(
        "platform-metadata",
        description=(
            "How a link is verified: `platform-metadata` asks the platform's customer"
            " record (mapping.platform) whether it exists, is live and names the account."
        ),
    )
    default_grants: list[GrantSettings] = Field(
        default_factory=_default_registration_grants,
        description="Grants of every new link (registration, and `mappings link` without --grant).",
    )
    registrant_operations: list[str] = Field(
        ["*"],
        description=(
            "Operations granted to the principal who registers a link over HTTP, by name"
            " (empty: none beyond default_grants)."
        ),
    )


class MappingSettings(Section):
    platform: PlatformRecordSettings = Field(
        default_factory=lambda: PlatformRecordSettings(),
        description="The upstream's customer records.",
    )
    encryption: MappingEncryptionSettings = Field(
        default_factory=lambda: MappingEncryptionSettings(),
        description="Encryption at rest of the mappings.",
    )
    registration: RegistrationSettings = Field(
        default_factory=lambda: RegistrationSettings(),
        description="Linking and unlinking accounts (/_dragoman/registration, `mappings link`).",
    )
    stale_after: Duration = Field(
        36 * 3600.0,
        gt=0,
        description="Refuse (mapping_stale) when the last validation is older than this.",
    )
    cache_ttl: Duration = Field(
        5.0,
        ge=0,
        le=300,
        description=(
            "How long a worker reuses a mapping it looked up (0: ask the database every"
            " time). Changes made through another instance or the CLI, a suspension"
            " included, take effect within this time."
        ),
    )


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


RiskTier = Literal["read", "change", "destroy", "money"]
"""How much harm an operation can do: read < change < destroy < money (moves money)."""
RISK_TIERS: tuple[str, ...] = ("read", "change", "destroy", "money")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_JSON_POINTER = re.compile(r"^(/([^~/]|~[01])*)+$")


def default_tier(method: str) -> RiskTier:
    """The tier of an operation that names none: reads are ``read``, DELETE is ``destroy``,
    every other write is ``change`` (``money`` is never guessed)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "DELETE":
        return "destroy"
    return "change"


class CustomerBindingSettings(Section):
    """Where a request names the customer, and what dragoman does about it."""

    location: Literal["path", "query", "body", "header"] = Field(
        ..., description="Where the customer id appears: path, query, body (JSON) or header."
    )
    name: str = Field(
        ...,
        min_length=1,
        description=(
            "The path parameter, query parameter or header name; for `body`, a JSON pointer"
            " (RFC 6901) such as `/customer` or `/payment_method/customer`."
        ),
    )
    mode: Literal["enforce", "inject"] = Field(
        "enforce",
        description=(
            "`enforce`: the request must name the mapped customer there (absent or another:"
            " refused, `customer_mismatch`). `inject`: dragoman writes the mapped customer"
            " there itself (a different value sent by the caller is still refused)."
        ),
    )

    @model_validator(mode="after")
    def _fits_location(self) -> CustomerBindingSettings:
        if self.location == "path" and self.mode == "inject":
            raise ValueError("a path binding can only be enforced (the path names the customer)")
        if self.location == "body" and not _JSON_POINTER.match(self.name):
            raise ValueError("a body binding's name is a JSON pointer such as '/customer'")
        if self.location == "header" and not _HEADER_NAME.match(self.name):
            raise ValueError("a header binding's name is an HTTP header name")
        return self


PROXY_OWN_PREFIXES = ("/_dragoman/",)
PROXY_OWN_PATHS = frozenset({"/livez", "/readyz", "/.well-known/jwks.json"})
"""Paths the proxy answers itself (health, JWKS, its own endpoints and pages)."""


class OperationSettings(Section):
    id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="Operation id.")
    method: HttpMethod = Field(..., description="HTTP method.")
    path: str = Field(
        ..., description="Path template, `{name}` for a whole-segment parameter: /v1/x/{id}."
    )
    scope: str = Field(
        ...,
        pattern=r"^[a-z0-9_.-]+:[a-z0-9_.-]+$",
        description="Scope of the minted token, `resource:action`.",
    )
    tier: RiskTier | None = Field(
        None,
        description=(
            "Risk tier: read, change, destroy or money. Default: read for GET/HEAD, destroy"
            " for DELETE, change otherwise. `policy.step_up` names tiers that need a recent"
            " sign-in."
        ),
    )
    customer_param: str | None = Field(
        None,
        description=(
            "Shorthand for one enforced path binding: the path parameter that names the"
            " customer; it must equal the mapped customer."
        ),
    )
    customer: list[CustomerBindingSettings] = Field(
        default_factory=list,
        description="Every place the request names the customer (path, query, body, header).",
    )

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        # Local import: the catalog depends on settings, not the other way round.
        from dragoman.catalog.template import parse_template

        parse_template(value)
        if value.startswith(PROXY_OWN_PREFIXES) or value in PROXY_OWN_PATHS:
            raise ValueError("the proxy answers this path itself; it cannot be an operation")
        return value

    @model_validator(mode="after")
    def _customer_param_in_template(self) -> OperationSettings:
        from dragoman.catalog.template import parse_template

        params = {s.name for s in parse_template(self.path) if s.is_param}
        if self.customer_param is not None and self.customer_param not in params:
            raise ValueError(f"customer_param {self.customer_param!r} is not in the path")
        for binding in self.customer:
            if binding.location == "path" and binding.name not in params:
                raise ValueError(f"customer path binding {binding.name!r} is not in the path")
        places = [
            (b.location, b.name.lower() if b.location == "header" else b.name)
            for b in self.customer
        ]
        if len(set(places)) != len(places):
            raise ValueError("two customer bindings name the same place")
        return self

    @property
    def effective_tier(self) -> RiskTier:
        return self.tier if self.tier is not None else default_tier(self.method)

    @property
    def bindings(self) -> list[CustomerBindingSettings]:
        """Every binding, ``customer_param`` included (as an enforced path binding)."""
        found = list(self.customer)
        named = {b.name for b in found if b.location == "path"}
        if self.customer_param is not None and self.customer_param not in named:
            found.insert(0, CustomerBindingSettings(location="path", name=self.customer_param))
        return found


class CatalogSettings(Section):
    operations: list[OperationSettings] = Field(
        default_factory=list,
        description="The operations the upstream serves; every other request is refused.",
    )

    @model_validator(mode="after")
    def _unique(self) -> CatalogSettings:
        ids = [o.id for o in self.operations]
        if len(set(ids)) != len(ids):
            raise ValueError("operation ids must be unique")
        routes = [(o.method, o.path) for o in self.operations]
        if len(set(routes)) != len(routes):
            raise ValueError("two operations share one method and path")
        return self


_ACR_VALUE = re.compile(r'^[^\s"\\]+$')


class StepUpSettings(Section):
    """What a recent enough sign-in is, for the operations of one risk tier (RFC 9470)."""

    max_age: Duration | None = Field(
        None,
        gt=0,
        description="The identity token's `auth_time` must be at most this old.",
    )
    acr_values: list[str] = Field(
        default_factory=list,
        description="The identity token's `acr` must be one of these (empty: not checked).",
    )

    @field_validator("acr_values")
    @classmethod
    def _acr_tokens(cls, value: list[str]) -> list[str]:
        for acr in value:
            if not _ACR_VALUE.match(acr):
                raise ValueError("an acr value is non-empty, without spaces, quotes or '\\'")
        return value

    @model_validator(mode="after")
    def _something(self) -> StepUpSettings:
        if self.max_age is None and not self.acr_values:
            raise ValueError("a step-up names max_age, acr_values or both")
        return self


def _default_roles() -> dict[str, list[str]]:
    return {
        "viewer": ["tier:read"],
        "billing_admin": ["tier:read", "tier:change", "tier:destroy"],
        "owner": ["*"],
    }


def _default_step_up() -> dict[RiskTier, StepUpSettings]:
    return {"money": StepUpSettings(max_age=300.0)}


class PolicySettings(Section):
    """What each role may ask for, and which risk tiers need a recent sign-in. A mapping
    grants roles (and principals) operations; a role grant never reaches beyond the role's
    definition here, and a role not defined here grants nothing."""

    roles: dict[str, list[str]] = Field(
        default_factory=_default_roles,
        description=(
            "Role -> what it may ask for: operation ids, scopes, `resource:*`, `tier:<tier>`"
            " or `*`. Default: viewer = tier:read; billing_admin = tier:read, tier:change,"
            " tier:destroy; owner = *."
        ),
    )
    step_up: dict[RiskTier, StepUpSettings] = Field(
        default_factory=_default_step_up,
        description=(
            "Risk tier -> the recent sign-in its operations need (otherwise 401"
            " insufficient_user_authentication). Default: money needs auth_time within 5m."
        ),
    )

    @field_validator("roles")
    @classmethod
    def _role_entries(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, entries in value.items():
            if not entries:
                raise ValueError(f"role {role!r} grants nothing; remove it or name entries")
            for entry in entries:
                tier = entry.removeprefix("tier:")
                if entry.startswith("tier:") and tier not in RISK_TIERS:
                    raise ValueError(f"role {role!r}: unknown tier {tier!r}")
        return value


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_RATE_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(value: str) -> tuple[int, int]:
    """``"600/min"`` -> (600, 60): how many requests per how many seconds."""
    match = _RATE.match(value)
    if match is None or int(match.group(1)) < 1:
        raise ValueError("a rate is a count of at least 1 per unit, like '600/min' or '10/s'")
    return int(match.group(1)), _RATE_PERIODS[match.group(2)[0]]


class RateLimitRuleSettings(Section):
    """One rate limit (a GCRA: `rate` sustained, `burst` at once) on the verified identity."""

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Rule name: the 429's reason, the RateLimit header's policy, the Redis key.",
    )
    per: Literal["account", "customer"] = Field(
        ...,
        description=(
            "What is counted: `account` the verified cloud account (issuer + subject when the"
            " credential names none), `customer` the mapped payment customer."
        ),
    )
    tiers: list[RiskTier] | None = Field(
        None, description="Risk tiers the rule counts (unset: every tier)."
    )
    rate: str = Field(..., description="Sustained rate: `COUNT/UNIT`, unit s, min, h or d.")
    burst: int = Field(..., ge=1, le=1_000_000, description="Requests allowed at once.")

    @field_validator("rate")
    @classmethod
    def _rate_parses(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers_not_empty(cls, value: list[RiskTier] | None) -> list[RiskTier] | None:
        if value is not None and not value:
            raise ValueError("list at least one tier, or leave tiers unset for every tier")
        return value


def _default_rate_limits() -> list[RateLimitRuleSettings]:
    return [
        RateLimitRuleSettings(name="account", per="account", rate="600/min", burst=60),
        RateLimitRuleSettings(
            name="account-writes",
            per="account",
            tiers=["change", "destroy"],
            rate="60/min",
            burst=10,
        ),
        RateLimitRuleSettings(
            name="customer-money", per="customer", tiers=["money"], rate="10/min", burst=3
        ),
    ]


class LimitsSettings(Section):
    """Rate limits keyed on the verified identity, never on an IP or a header the client
    chooses. A request must pass every rule that counts its tier; a
    refusal (429 `rate_limited`, with Retry-After) consumes nothing. The default rules:
    `account` (every tier, 600/min, burst 60) leaves a console or a script room for pages
    of reads while capping scraping at 10 requests a second; `account-writes` (change and
    destroy, 60/min, burst 10) is far above a person editing payment methods and far below
    a script enumerating cards; `customer-money` (money, 10/min, burst 3) bounds what a
    stolen credential can move per payment customer, whichever account asks."""

    enabled: bool = Field(True, description="Apply the rules (off: no request is limited).")
    rules: list[RateLimitRuleSettings] = Field(
        default_factory=_default_rate_limits, description="The rules (defaults above)."
    )
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description=(
            "Where the counters live: `memory` (one process: N instances or workers allow N"
            " times the limits) or `redis` (shared: one decision per request, atomic)."
        ),
    )
    redis_url: str | None = Field(
        None, description="Redis URL of the shared counters (`redis://` or `rediss://`)."
    )
    fallback: Literal["refuse", "local"] = Field(
        "refuse",
        description=(
            "When Redis does not answer, writes are always refused (503"
            " `rate_limit_unavailable`); reads are refused too (`refuse`) or limited by"
            " per-instance counters (`local`)."
        ),
    )
    timeout: Duration = Field(
        0.5, gt=0, le=10, description="How long one Redis decision may take before it fails."
    )
    max_keys: int = Field(
        100_000,
        ge=1,
        description=(
            "Most counters the in-memory limiter holds; idle ones are swept, and when it is"
            " still full a new subject is refused (503) rather than resetting someone's limit."
        ),
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("rules")
    @classmethod
    def _names_unique(cls, value: list[RateLimitRuleSettings]) -> list[RateLimitRuleSettings]:
        names = [rule.name for rule in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _redis_backend_complete(self) -> LimitsSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("the redis backend needs redis_url")
        return self


AnomalyAction = Literal["alert", "step_up", "block"]
AnomalyKind = Literal["threshold", "baseline", "card_testing"]
_RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SENSITIVE_OPERATIONS = [
    "payment_methods:create",
    "payment_methods:delete",
    "payment_methods:set_default",
    "billing_address:update",
]
"""The default sensitive operations, by scope: adding, deleting or choosing a payment
method and changing the billing address (the demo catalog's scopes)."""


class AnomalyRuleSettings(Section):
    """One anomaly rule: what it counts, when it fires, and what happens then."""

    kind: AnomalyKind = Field(
        "threshold",
        description=(
            "`threshold`: fires when the account's changes in the sliding window exceed"
            " `threshold` (at threshold + 1, never at threshold). `baseline`: fires when"
            " they reach `min_count` and exceed `factor` times the EWMA of the account's own"
            " per-window counts (an account without a completed window has no baseline"
            " yet). `card_testing`: fires when `pairs` add/delete pairs (an add"
            " then a delete within `pair_within`) fall in the window."
        ),
    )
    operations: list[str] = Field(
        default_factory=lambda: list(SENSITIVE_OPERATIONS),
        min_length=1,
        description=(
            "The operations it counts (threshold, baseline): operation ids, scopes,"
            " `resource:*`, `tier:<tier>` or `*`, as in policy.roles."
        ),
    )
    window: Duration = Field(
        3600.0, ge=1, le=30 * 86400, description="Length of the sliding window."
    )
    threshold: int = Field(
        20, ge=1, description="threshold: most changes allowed in the window without firing."
    )
    factor: float = Field(
        5.0, gt=1, le=1000, description="baseline: how many times its EWMA a window may reach."
    )
    min_count: int = Field(
        10,
        ge=1,
        description=(
            "baseline: fewest changes in the window that may fire (a new account's first"
            " few changes never do)."
        ),
    )
    smoothing: float = Field(
        0.3,
        gt=0,
        le=1,
        description="baseline: EWMA weight of the newest completed window (0 < alpha <= 1).",
    )
    adds: list[str] = Field(
        default_factory=lambda: ["payment_methods:create"],
        min_length=1,
        description="card_testing: the operations that add a payment method.",
    )
    deletes: list[str] = Field(
        default_factory=lambda: ["payment_methods:delete"],
        min_length=1,
        description="card_testing: the operations that delete one.",
    )
    pair_within: Duration = Field(
        300.0, gt=0, le=86400, description="card_testing: a delete this soon after an add pairs."
    )
    pairs: int = Field(3, ge=1, description="card_testing: pairs in the window that fire.")
    action: AnomalyAction = Field(
        "alert",
        description=(
            "What firing does (an alert is always sent): `alert` lets the request go on;"
            " `step_up` refuses it with 401 insufficient_user_authentication unless the"
            " caller signed in within `step_up_max_age`; `block` refuses it with 403"
            " anomaly_blocked and blocks the account's sensitive operations for `block_for`."
        ),
    )
    block_for: Duration = Field(
        900.0, gt=0, le=30 * 86400, description="block: how long the account stays blocked."
    )
    step_up_max_age: Duration = Field(
        300.0, gt=0, le=86400, description="step_up: how recent the caller's sign-in must be."
    )

    @model_validator(mode="after")
    def _pairs_fit_window(self) -> AnomalyRuleSettings:
        if self.kind == "card_testing" and self.pair_within > self.window:
            raise ValueError("pair_within must not exceed window")
        return self


def _default_anomaly_rules() -> dict[str, AnomalyRuleSettings]:
    return {
        "changes_burst": AnomalyRuleSettings(kind="threshold"),
        "changes_above_baseline": AnomalyRuleSettings(kind="baseline"),
        "card_testing": AnomalyRuleSettings(kind="card_testing", action="block"),
    }


class AnomalySettings(Section):
    """Anomaly detection on sensitive operations, per verified cloud account
    (docs/anomaly.md)."""

    enabled: bool = Field(True, description="Count sensitive operations and apply the rules.")
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description=(
            "Where the counts and blocks live: `memory` (one process) or `redis` (shared by"
            " every instance; while Redis is down sensitive operations are refused with 503"
            " anomaly_unavailable)."
        ),
    )
    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL of the redis backend."
    )
    rules: dict[str, AnomalyRuleSettings] = Field(
        default_factory=_default_anomaly_rules,
        description=(
            "Rule name -> rule. Default: changes_burst (threshold 20 per 1h, alert),"
            " changes_above_baseline (5x the EWMA, at least 10 per 1h, alert), card_testing"
            " (3 add/delete pairs within 5m each in 1h: block for 15m)."
        ),
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, value: dict[str, AnomalyRuleSettings]) -> dict[str, AnomalyRuleSettings]:
        for name in value:
            if not _RULE_NAME.match(name):
                raise ValueError(f"rule name {name!r}: lower-case letters, digits, _ and -")
        return value

    @model_validator(mode="after")
    def _backend_complete(self) -> AnomalySettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("the redis backend needs redis_url")
        return self


class AuditSettings(Section):
    """The audit trail (SEMANTICS §8, docs/audit.md)."""

    sink: Literal["file", "stdout"] = Field("file", description="Where audit records go.")
    path: Path = Field(Path("var/audit.jsonl"), description="JSON-lines file of the file sink.")
    chain: bool = Field(
        True,
        description=(
            "Hash-chain the records (chain, seq, prev; `dragoman audit verify` checks them)."
            " The stdout sink keeps one chain per process."
        ),
    )
    max_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Rotate the file sink's file once it reaches this size (0: never); the chain"
            " continues in the new file."
        ),
    )
    checkpoint_every: int = Field(
        1000,
        ge=0,
        description=(
            "With checkpoint_key_file, a signed checkpoint every this many records (0: only"
            " on rotation and close)."
        ),
    )
    checkpoint_key_file: Path | None = Field(
        None,
        description=(
            "EC P-256 private key (unencrypted PEM) that signs checkpoints; the verifier"
            " takes its public key. Unset: no checkpoints. Needs chain."
        ),
    )
    database_url: str | None = Field(
        None,
        description=(
            "Ship every record of the file sink, in seq order, into the append-only"
            " audit_records table of this database (postgresql+asyncpg://..., connected as a"
            " role with INSERT and SELECT only; sqlite+aiosqlite:// for one process)."
            " Unset: no shipping. Needs sink = file and chain; migrate it with `dragoman db"
            " upgrade`."
        ),
    )
    ship_batch: int = Field(
        500, ge=1, le=10000, description="Records shipped per database transaction."
    )
    ship_interval: Duration = Field(
        1.0, gt=0, le=3600, description="How often the shipper looks for new records."
    )
    ship_drain_timeout: Duration = Field(
        5.0,
        ge=0,
        le=300,
        description=(
            "At shutdown, longest wait for the shipper to ship what is left (the next start"
            " ships the rest)."
        ),
    )

    @field_validator("checkpoint_key_file")
    @classmethod
    def _checkpoint_key_file_readable(cls, value: Path | None) -> Path | None:
        from dragoman.audit.checkpoint import CheckpointKeyError, CheckpointSigner

        if value is not None:
            try:
                CheckpointSigner.from_pem_file(value)
            except CheckpointKeyError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _checkpoints_need_the_chain(self) -> AuditSettings:
        if self.checkpoint_key_file is not None and not self.chain:
            raise ValueError("checkpoint_key_file needs chain = true")
        return self

    @field_validator("database_url")
    @classmethod
    def _shipping_driver(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite+aiosqlite://", "postgresql+asyncpg://")
        ):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _shipping_needs_the_chained_file(self) -> AuditSettings:
        if self.database_url is not None and (self.sink != "file" or not self.chain):
            raise ValueError("database_url needs sink = file and chain = true")
        return self


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
            "When a state-changing request needs a valid CSRF pair (`__Host-dragoman-csrf`"
            " cookie + `X-CSRF-Token` header, SEMANTICS §5): `browser` when it carries the"
            " session cookie, an `Origin` or any `Sec-Fetch-*` header; `required` always;"
            " `off` never (for APIs no browser calls)."
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
        if value is not None and not value.is_file():
            raise ValueError("file not found")
        return value

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


DriftAction = Literal["stale", "suspended"]
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class ReconcileSettings(Section):
    """Reconciliation of the mappings with the payment platform's own records:
    `dragoman reconcile`, and the scheduled run in the proxy (one runner at a time across
    instances). See docs/reconcile.md."""

    schedule: bool = Field(
        True, description="Run reconciliation on a schedule inside the proxy (off: CLI only)."
    )
    interval: Duration = Field(
        86400.0,
        ge=1,
        le=30 * 86400,
        description=(
            "Time between two scheduled runs (keep it under mapping.stale_after). Without"
            " `at`, a run is due `interval` after the previous one started."
        ),
    )
    at: str | None = Field(
        None,
        description=(
            "Time of day (`HH:MM`, UTC) the scheduled runs are anchored at: runs are due at"
            " `at`, `at` + interval, ... A slot missed while no instance was up is run at"
            " the next start."
        ),
    )
    concurrency: int = Field(8, ge=1, le=256, description="Customer records asked for at once.")
    batch_size: int = Field(
        500,
        ge=1,
        le=10_000,
        description=(
            "Checked mappings written (and checkpointed) per transaction; an interrupted run"
            " re-checks at most this many (times the concurrency in flight)."
        ),
    )
    max_consecutive_errors: int = Field(
        25,
        ge=0,
        description=(
            "Stop the run (resumable) after this many lookups in a row failed: the"
            " platform is down. 0: never stop early."
        ),
    )
    resume_within: Duration = Field(
        12 * 3600.0,
        ge=0,
        description=(
            "An unfinished run younger than this is continued; an older one is abandoned"
            " and a fresh run starts (mappings it checked long ago would be left stale)."
        ),
    )
    lease_ttl: Duration = Field(
        60.0,
        ge=3,
        le=3600,
        description=(
            "SQLite: how long the runner lease lasts without renewal (renewed every third"
            " of it); a crashed runner's lease is taken over after it, or at once when the"
            " holder was a process on this host that is gone. PostgreSQL uses an advisory"
            " lock instead."
        ),
    )
    report_path: Path | None = Field(
        None, description="Write each run's JSON summary here (`--report` overrides it)."
    )
    on_customer_missing: DriftAction = Field(
        "suspended", description="Status given to a mapping whose customer does not exist."
    )
    on_customer_deleted: DriftAction = Field(
        "suspended", description="Status given to a mapping whose customer is deleted."
    )
    on_customer_merged: DriftAction = Field(
        "stale", description="Status given to a mapping whose customer was merged into another."
    )
    on_account_mismatch: DriftAction = Field(
        "suspended",
        description="Status given to a mapping whose customer names another (or no) account.",
    )

    @field_validator("at")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None and not _TIME_OF_DAY.match(value):
            raise ValueError("a time of day is HH:MM (UTC), e.g. 03:30")
        return value


class AlertSinkSettings(Section):
    type: Literal["webhook"] = Field(
        "webhook", description="Kind of sink (the log sink is always on, not listed here)."
    )
    url: str = Field(..., description="Where alerts are POSTed as JSON; https unless loopback.")
    timeout: Duration = Field(5.0, gt=0, le=60, description="Timeout of one delivery attempt.")
    retries: int = Field(
        5, ge=0, le=20, description="Further attempts after a failed one (then the alert is lost)."
    )
    backoff: Duration = Field(
        1.0, gt=0, le=600, description="Wait before the first retry; doubles each time (jittered)."
    )
    max_backoff: Duration = Field(
        60.0, gt=0, le=3600, description="Longest wait between attempts (Retry-After included)."
    )
    queue_size: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Alerts waiting for delivery; when full, new alerts are dropped and counted.",
    )
    secret: SecretStr | None = Field(
        None,
        description=(
            "Signs each body (X-Dragoman-Signature: t=..,v1=HMAC-SHA256 of `t.body`);"
            " prefer the environment."
        ),
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value, require_tls=True)


class AlertSettings(Section):
    """Where alerts go (drift found by reconciliation). Every alert is logged (logger
    `dragoman.alerts`); the sinks listed here get it too."""

    sinks: list[AlertSinkSettings] = Field(
        default_factory=list, description="Further alert sinks (webhooks)."
    )


class Settings(BaseSettings):
    """Every setting of dragoman; see docs/settings.md (generated from this model)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = Field(
        default_factory=lambda: ServerSettings(), description="The listening server."
    )
    identity: IdentitySettings = Field(
        default_factory=lambda: IdentitySettings(), description="Caller authentication."
    )
    upstream: UpstreamSettings = Field(..., description="The service behind the proxy.")
    tokens: TokenSettings = Field(
        default_factory=lambda: TokenSettings(), description="Minted upstream tokens."
    )
    keys: KeySettings = Field(..., description="Signing keys and their rotation.")
    store: StoreSettings = Field(
        default_factory=lambda: StoreSettings(), description="The shared state store."
    )
    mapping: MappingSettings = Field(
        default_factory=lambda: MappingSettings(), description="The account mappings."
    )
    catalog: CatalogSettings = Field(
        default_factory=lambda: CatalogSettings(), description="Operations and their scopes."
    )
    policy: PolicySettings = Field(
        default_factory=lambda: PolicySettings(),
        description="Roles and the recent sign-in risky operations need.",
    )
    limits: LimitsSettings = Field(
        default_factory=lambda: LimitsSettings(),
        description="Rate limits on the verified identity.",
    )
    anomaly: AnomalySettings = Field(
        default_factory=lambda: AnomalySettings(),
        description="Anomaly detection on sensitive operations.",
    )
    audit: AuditSettings = Field(
        default_factory=lambda: AuditSettings(), description="The audit trail."
    )
    browser: BrowserSettings = Field(
        default_factory=lambda: BrowserSettings(), description="Browser-facing protections."
    )
    reconcile: ReconcileSettings = Field(
        default_factory=lambda: ReconcileSettings(),
        description="Reconciliation of the mappings with the payment platform.",
    )
    alerts: AlertSettings = Field(
        default_factory=lambda: AlertSettings(), description="Where alerts go."
    )

    @model_validator(mode="after")
    def _has_an_authenticator(self) -> Settings:
        if not self.identity.oidc:
            raise ValueError("identity: configure at least one authenticator (identity.oidc)")
        return self

    @model_validator(mode="after")
    def _policy_fits_grants_and_catalog(self) -> Settings:
        # Local imports: the policy and the catalog depend on settings, not the other way.
        from dragoman.catalog.model import operations_from_settings
        from dragoman.policy.roles import RolePolicy, undefined_roles_message

        policy = RolePolicy.from_settings(self.policy)
        grants = self.mapping.registration.default_grants
        undefined = policy.undefined_roles(g.role for g in grants)
        if undefined:
            raise ValueError(
                "mapping.registration.default_grants: " + undefined_roles_message(undefined)
            )
        catalog = operations_from_settings(self.catalog)
        unknown = policy.unknown_entries(catalog) if catalog else []
        if unknown:
            raise ValueError(
                f"policy.roles: entries name nothing in the catalog: {', '.join(unknown)}"
            )
        return self

    @model_validator(mode="after")
    def _mapping_keys_available(self) -> Settings:
        encryption = self.mapping.encryption
        has_master = self.keys.master_key is not None or self.keys.master_key_file is not None
        known = set(encryption.keks) | ({"master"} if has_master else set())
        active = encryption.active_kek or ("master" if has_master and not encryption.keks else None)
        if active is None or active not in known:
            raise ValueError(
                "mapping.encryption: set active_kek to one of the configured keks"
                " (or configure keys.master_key for the derived `master` KEK)"
            )
        if encryption.index_key is None and not has_master:
            raise ValueError("mapping.encryption: set index_key (no master key to derive it)")
        return self

    @model_validator(mode="after")
    def _shared_state_reaches_every_worker(self) -> Settings:
        # State in memory lives in one process: with several workers, sessions would be
        # unknown to the others, and each worker would allow its own full rate limit and
        # count its own anomalies (N workers, N times the limit).
        if self.server.workers == 1:
            return self
        browser = self.browser
        if browser.csrf != "off" and browser.session_backend == "memory":
            raise ValueError(
                "browser.session_backend: sessions in memory live in one process; with"
                " several server.workers use the redis backend"
            )
        if self.limits.enabled and self.limits.backend == "memory":
            raise ValueError(
                "limits.backend: limits in memory are per process; with several"
                " server.workers use the redis backend (or each worker allows the full limit)"
            )
        if self.anomaly.enabled and self.anomaly.backend == "memory":
            raise ValueError(
                "anomaly.backend: counts in memory are per process; with several"
                " server.workers use the redis backend"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init values; the environment overrides it.
        return (env_settings, init_settings)


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class SettingsError(Exception):
    """Settings could not be loaded; ``problems`` lists every one of them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  {p}" for p in problems))


def _problems_from(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(Problem(key, message))
    return problems


def read_settings_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError([Problem(str(path), "settings file not found")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([Problem(str(path), f"not valid TOML: {exc}")]) from None


def load_settings(
    path: Path | str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate settings from ``path`` (or $DRAGOMAN_CONFIG) and the environment.

    ``overrides`` (a nested mapping) is merged over the file, below the environment.
    Raises :class:`SettingsError` listing every problem.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data: dict[str, Any] = read_settings_file(Path(path)) if path is not None else {}
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise SettingsError(_problems_from(exc)) from None


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
