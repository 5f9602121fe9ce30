"""Signing key settings: local, PKCS#11 and AWS KMS."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from dragoman.settings.base import Duration, Section, check_http_url


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

    timeout: Duration = Field(
        2.0,
        gt=0,
        le=30,
        description=(
            "Connect and read timeout of one KMS call. A signature is on the request's path:"
            " keep timeout x attempts well under what a caller waits."
        ),
    )
    attempts: int = Field(
        2, ge=1, le=5, description="Tries of one KMS call (throttling, 5xx, dropped connection)."
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
        description=(
            "How long the previous key keeps verifying after a rotation; at least 3 x"
            " refresh_interval (a worker may sign with the predecessor that long after an"
            " immediate rotation), so never 0."
        ),
    )
    prepublish: Duration = Field(
        600.0,
        ge=0,
        le=86400,
        description=(
            "How long a new key is published before it signs; at least the upstream's"
            " JWKS cache time, at least jwks_max_age and at least 3 x refresh_interval."
            " 0 (with jwks_max_age = 0): every rotation is immediate, as with"
            " `keys rotate --now`."
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
    max_clock_skew: Duration = Field(
        10.0,
        gt=0,
        le=3600,
        description=(
            "How far this instance's clock may be off the key store's (PostgreSQL's, measured"
            " with each refresh); past it the instance signs nothing (503 key_unavailable)"
            " and /readyz fails, since key states and token times follow each instance's"
            " clock."
        ),
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
        # A worker may sign from a view up to three refresh intervals old: after an
        # immediate rotation (`keys rotate --now`, or prepublish = 0) it may sign with the
        # predecessor that long, so the overlap must cover it. prepublish = 0 makes every
        # rotation immediate, so it has no such term of its own.
        if 3 * self.refresh_interval > self.overlap:
            raise ValueError("3 x refresh_interval must not exceed overlap")
        if self.prepublish > 0 and 3 * self.refresh_interval > self.prepublish:
            raise ValueError(
                "3 x refresh_interval must not exceed prepublish (or set prepublish = 0)"
            )
        return self
