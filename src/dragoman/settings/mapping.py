"""Mapping settings: encryption, platform records, grants and registration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from dragoman.settings.base import Duration, Section


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
    id_field: str = Field(
        "id",
        min_length=1,
        description=(
            "Dotted path, in the customer record, of the customer's own id (a string, or an"
            " integer for numeric ids): an answer whose id is not the customer asked for (a"
            " maintenance page, a gateway's JSON) is the platform unavailable, never a drift."
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
        [],
        description=(
            "Operations granted to the principal who registers a link over HTTP, by name"
            " (empty, the default: none beyond default_grants). Capped when the link is"
            " made: only those its registration roles may ever ask for under"
            " policy.roles, written as operation ids."
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
