"""The top-level Settings model and loading it from a file and the environment."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from dragoman.settings.alerts import AlertSettings
from dragoman.settings.anomaly import AnomalySettings
from dragoman.settings.audit import AuditSettings
from dragoman.settings.base import CONFIG_ENV, ENV_PREFIX
from dragoman.settings.browser import BrowserSettings
from dragoman.settings.catalog import CatalogSettings
from dragoman.settings.decision import DecisionSettings
from dragoman.settings.identity import IdentitySettings
from dragoman.settings.keys import KeySettings
from dragoman.settings.limits import LimitsSettings
from dragoman.settings.mapping import MappingSettings
from dragoman.settings.metrics import MetricsSettings
from dragoman.settings.policy import PolicySettings
from dragoman.settings.reconcile import ReconcileSettings
from dragoman.settings.server import ServerSettings, StoreSettings, TokenSettings, UpstreamSettings


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
    metrics: MetricsSettings = Field(
        default_factory=lambda: MetricsSettings(),
        description="The Prometheus metrics endpoint (its own listener).",
    )
    decision: DecisionSettings = Field(
        default_factory=lambda: DecisionSettings(),
        description="The decision API for nginx auth_request and Envoy ext_authz.",
    )

    @model_validator(mode="after")
    def _has_an_authenticator(self) -> Settings:
        identity = self.identity
        if not (identity.oidc or identity.aws_sts or identity.mtls):
            raise ValueError(
                "identity: configure at least one authenticator"
                " (identity.oidc, identity.aws_sts, identity.mtls)"
            )
        return self

    @model_validator(mode="after")
    def _decision_can_authenticate(self) -> Settings:
        # The decision listener sees the gateway's connection, never the caller's: a client
        # certificate there would be the gateway's own.
        identity = self.identity
        if self.decision.enabled and not (identity.oidc or identity.aws_sts):
            raise ValueError(
                "decision: needs identity.oidc or identity.aws_sts (the decision listener"
                " sees the gateway's connection, so it never reads a client certificate)"
            )
        return self

    @model_validator(mode="after")
    def _mtls_has_a_handshake(self) -> Settings:
        # The certificate is read from dragoman's own TLS handshake, never from a header.
        tls = self.server.tls
        if self.identity.mtls is not None and (tls is None or tls.client_ca_file is None):
            raise ValueError(
                "identity.mtls: needs server.tls with client_ca_file (client certificates are"
                " read from dragoman's own TLS handshake only)"
            )
        mtls = self.identity.mtls
        if (
            mtls is not None
            and mtls.crl_file is not None
            and tls is not None
            and tls.client_ca_file
        ):
            # Local import: identity depends on settings, not the other way.
            from dragoman.identity.revocation import load_revocation_lists

            try:
                load_revocation_lists(mtls.crl_file, tls.client_ca_file)
            except (OSError, ValueError) as exc:
                raise ValueError(f"identity.mtls.crl_file: {exc}") from None
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
        if catalog:
            # What `serve` refuses at start, said by check-config too.
            from dragoman.mapping.registration import unknown_grant_operations

            unknown_grants = unknown_grant_operations(self.mapping.registration, catalog)
            if unknown_grants:
                raise ValueError(
                    "mapping.registration: grants name operations that are not in the"
                    f" catalog: {', '.join(unknown_grants)}"
                )
            wanted = self.mapping.platform.customer_operation
            platform_op = next((op for op in catalog if op.id == wanted), None)
            if platform_op is not None and (
                platform_op.method != "GET" or platform_op.customer_param is None
            ):
                raise ValueError(
                    f"mapping.platform.customer_operation: {wanted!r} must be a GET whose"
                    " path names the customer (customer_param)"
                )
        from dragoman.anomaly.rules import unknown_rule_entries

        naming_nothing = unknown_rule_entries(self.anomaly, catalog)
        if naming_nothing:
            raise ValueError(
                "; ".join(
                    f"anomaly.rules.{name}: names nothing in the catalog: {what}"
                    for name, what in naming_nothing.items()
                )
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
        for key, enabled, port in (
            ("server.port", True, self.server.port),
            ("metrics.port", self.metrics.enabled, self.metrics.port),
            ("decision.port", self.decision.enabled, self.decision.port),
        ):
            if enabled and port == 0:
                raise ValueError(
                    f"{key}: 0 (any free port) works with one worker only (server.workers)"
                )
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

    @model_validator(mode="after")
    def _listeners_on_their_own_ports(self) -> Settings:
        # Two listeners on one port: the second fails to bind, or (SO_REUSEPORT) the kernel
        # shares connections between them, so the metrics or the decision API (which
        # answers with minted tokens) would be reachable on the proxy's port.
        listeners = [("server", self.server.host, self.server.port)]
        for name, section in (("metrics", self.metrics), ("decision", self.decision)):
            if section.enabled:
                listeners.append((name, section.host, section.port))
        for index, (name, host, port) in enumerate(listeners):
            for other, other_host, other_port in listeners[:index]:
                if port != 0 and port == other_port and _hosts_overlap(host, other_host):
                    raise ValueError(
                        f"{name}.port: the same port as {other}.port on an overlapping"
                        " address; each listener needs a port of its own"
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


_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - compared, never bound


def _hosts_overlap(first: str, second: str) -> bool:
    """Whether listeners on ``first`` and ``second`` would share a port: the same address,
    or either is the any-address (0.0.0.0 and :: take every address)."""
    if first in _ANY_ADDRESS or second in _ANY_ADDRESS:
        return True
    return _canonical_host(first) == _canonical_host(second)


def _canonical_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host.lower().rstrip(".")


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


_DOTTED_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")


def _problems_from(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not key:
            # A check across tables names its key first ("identity.mtls: needs ...").
            named, sep, rest = message.partition(": ")
            if sep and _DOTTED_KEY.fullmatch(named):
                key, message = named, rest
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
    except SourceError:
        # pydantic-settings could not read an environment value (malformed JSON for a
        # table or a list): name the variable, never its value (it may be a secret).
        raise SettingsError(_environment_problems()) from None


def _environment_problems() -> list[Problem]:
    problems = []
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        if not value.strip().startswith(("{", "[", '"')):
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            where = (
                f" (line {exc.lineno}, column {exc.colno})"
                if isinstance(exc, json.JSONDecodeError)
                else ""
            )
            problems.append(Problem(name, f"not valid JSON{where}"))
    return problems or [
        Problem(
            "environment",
            f"a {ENV_PREFIX}* variable could not be read (a table or a list is written as JSON)",
        )
    ]


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
