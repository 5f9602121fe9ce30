"""Typed settings: one TOML file plus ``DRAGOMAN_*`` environment overrides.

Everything is validated at load, and every problem is reported at once with the dotted key
that is wrong (``upstream.url: ...``), never with the offending value: a bad value may be a
secret. Environment variables override the file, nested keys joined by ``__``:
``DRAGOMAN_UPSTREAM__URL=https://payments.internal``.

Durations accept seconds (``30``) or a number with a unit (``90s``, ``5m``, ``36h``, ``1d``).
"""

from dragoman.settings.alerts import AlertSettings, AlertSinkSettings
from dragoman.settings.anomaly import (
    SENSITIVE_OPERATIONS,
    AnomalyAction,
    AnomalyKind,
    AnomalyRuleSettings,
    AnomalySettings,
)
from dragoman.settings.audit import AuditSettings
from dragoman.settings.aws_sts import AwsPartition, AwsStsSettings
from dragoman.settings.base import (
    CONFIG_ENV,
    ENV_PREFIX,
    Duration,
    Section,
    check_http_url,
    check_redis_url,
    is_loopback_host,
    parse_duration,
)
from dragoman.settings.browser import BrowserSettings, CsrfMode, SessionBackend
from dragoman.settings.catalog import (
    PROXY_OWN_PATHS,
    PROXY_OWN_PREFIXES,
    RISK_TIERS,
    CatalogSettings,
    CustomerBindingSettings,
    HttpMethod,
    OperationSettings,
    RiskTier,
    default_tier,
)
from dragoman.settings.decision import DecisionSettings
from dragoman.settings.identity import IdentitySettings, OidcIssuerSettings, TokenAlgorithm
from dragoman.settings.keys import AwsKmsSettings, KeySettings, Pkcs11Settings
from dragoman.settings.limits import LimitsSettings, RateLimitRuleSettings, parse_rate
from dragoman.settings.mapping import (
    GrantSettings,
    MappingEncryptionSettings,
    MappingSettings,
    PlatformRecordSettings,
    RegistrationSettings,
)
from dragoman.settings.metrics import MetricsSettings
from dragoman.settings.model import (
    Problem,
    Settings,
    SettingsError,
    load_settings,
    read_settings_file,
)
from dragoman.settings.mtls import MtlsSettings
from dragoman.settings.policy import PolicySettings, StepUpSettings
from dragoman.settings.reconcile import DriftAction, ReconcileSettings
from dragoman.settings.server import (
    ServerSettings,
    StoreSettings,
    TlsSettings,
    TokenSettings,
    UpstreamSettings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PROXY_OWN_PATHS",
    "PROXY_OWN_PREFIXES",
    "RISK_TIERS",
    "SENSITIVE_OPERATIONS",
    "AlertSettings",
    "AlertSinkSettings",
    "AnomalyAction",
    "AnomalyKind",
    "AnomalyRuleSettings",
    "AnomalySettings",
    "AuditSettings",
    "AwsKmsSettings",
    "AwsPartition",
    "AwsStsSettings",
    "BrowserSettings",
    "CatalogSettings",
    "CsrfMode",
    "CustomerBindingSettings",
    "DecisionSettings",
    "DriftAction",
    "Duration",
    "GrantSettings",
    "HttpMethod",
    "IdentitySettings",
    "KeySettings",
    "LimitsSettings",
    "MappingEncryptionSettings",
    "MappingSettings",
    "MetricsSettings",
    "MtlsSettings",
    "OidcIssuerSettings",
    "OperationSettings",
    "Pkcs11Settings",
    "PlatformRecordSettings",
    "PolicySettings",
    "Problem",
    "RateLimitRuleSettings",
    "ReconcileSettings",
    "RegistrationSettings",
    "RiskTier",
    "Section",
    "ServerSettings",
    "SessionBackend",
    "Settings",
    "SettingsError",
    "StepUpSettings",
    "StoreSettings",
    "TlsSettings",
    "TokenAlgorithm",
    "TokenSettings",
    "UpstreamSettings",
    "check_http_url",
    "check_redis_url",
    "default_tier",
    "is_loopback_host",
    "load_settings",
    "parse_duration",
    "parse_rate",
    "read_settings_file",
]
