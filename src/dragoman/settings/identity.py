"""Identity settings: the OIDC issuers whose tokens the proxy accepts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dragoman.jose.strict import normalise_typ
from dragoman.settings.aws_sts import AwsStsSettings
from dragoman.settings.base import Duration, Section, check_http_url
from dragoman.settings.mtls import MtlsSettings

TokenAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


class OidcIssuerSettings(Section):
    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Short name of this issuer, used in audit records and metrics.",
    )
    profile: Literal["google", "entra", "kubernetes", "github-actions"] | None = Field(
        None,
        description=(
            "Provider preset filling in the issuer (where fixed), algorithms, accepted types"
            " and claim names left unset here; see docs/identity.md."
        ),
    )
    tenant: str | None = Field(
        None, description="Entra tenant ID (a GUID) for profile `entra`; it names the issuer."
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
        "sub",
        min_length=1,
        description=(
            "Claim naming the principal: exact name, dotted path, or a JSON pointer"
            " (`/kubernetes.io/namespace`) for nested names containing dots."
        ),
    )
    account_claim: str = Field(
        "cloud_account",
        min_length=1,
        description="Claim naming the cloud account (same forms as `principal_claim`).",
    )
    roles_claim: str | None = Field(
        "roles", description="Claim holding the principal's roles (list or space-separated)."
    )
    client_claim: str | None = Field(
        None,
        min_length=1,
        description=(
            "Claim naming the OAuth client the token was issued to (`azp`, `client_id`,"
            " `appid`); when set, a token without it is refused (401 client_claim_missing)."
            " The entra profile sets `azp`: an ID token of the same app registration, which"
            " has no `azp`, is not taken for an access token."
        ),
    )
    allowed_clients: list[str] = Field(
        [],
        description=(
            "When not empty, the client named by `client_claim` must be one of these"
            " (401 client_not_allowed): only the listed applications may call with a token."
        ),
    )
    principal_prefix: str = Field(
        "", description="Prepended to the principal, to keep issuers' namespaces apart."
    )
    account_prefix: str = Field(
        "", description="Prepended to the cloud account, to keep issuers' namespaces apart."
    )
    leeway: Duration = Field(
        30.0,
        ge=0,
        le=120,
        description=(
            "Clock leeway for a nbf or iat in the future; an exp that has passed gets none"
            " (SEMANTICS §2)."
        ),
    )
    max_token_lifetime: Duration = Field(
        86_400.0,
        gt=0,
        le=31_622_400,
        description=(
            "Longest lifetime (exp - iat) of a token accepted from this issuer (then 401"
            " token_lifetime_too_long): a leaked long-lived token is not good for years."
            " The entra profile sets 30h (its CAE tokens live up to 28 hours)."
        ),
    )
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

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        from dragoman.identity.profiles import apply_profile

        return apply_profile(data)

    @model_validator(mode="after")
    def _clients_need_their_claim(self) -> OidcIssuerSettings:
        if self.allowed_clients and self.client_claim is None:
            raise ValueError("allowed_clients: needs client_claim (the claim naming the client)")
        return self

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
    aws_sts: AwsStsSettings | None = Field(
        None, description="AWS principals by presigned STS GetCallerIdentity requests."
    )
    mtls: MtlsSettings | None = Field(
        None,
        description=(
            "Service callers by the TLS client certificate of dragoman's own handshake"
            " (SPIFFE IDs or subjects); needs `server.tls.client_ca_file`."
        ),
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
