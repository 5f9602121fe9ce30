"""Builds the configured key provider and the key ring over the state store."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.keys.provider import KeyProvider
from dragoman.keys.ring import KeyRing
from dragoman.keys.sealing import SealingError, decode_master_key
from dragoman.keys.store import KeySetStore
from dragoman.keys.timeline import Timeline
from dragoman.settings import KeySettings, StoreSettings


class KeyConfigError(Exception):
    """The key provider cannot be set up from the settings (the message names the key)."""


def master_key_of(settings: KeySettings) -> bytes:
    try:
        if settings.master_key is not None:
            return decode_master_key(settings.master_key.get_secret_value())
        if settings.master_key_file is None:
            raise KeyConfigError("keys: the local provider needs master_key or master_key_file")
        try:
            text = settings.master_key_file.read_text("utf-8")
        except OSError as exc:
            raise KeyConfigError(
                f"keys.master_key_file: cannot read {settings.master_key_file} ({exc.strerror})"
            ) from None
        return decode_master_key(text)
    except SealingError as exc:
        raise KeyConfigError(f"keys.master_key: {exc}") from None


def open_provider(settings: KeySettings, engine: AsyncEngine, query_timeout: float) -> KeyProvider:
    if settings.provider == "pkcs11":
        from dragoman.keys.pkcs11 import Pkcs11Provider

        return Pkcs11Provider(
            str(settings.pkcs11.module),
            settings.pkcs11.token_label,
            settings.pkcs11.pin.get_secret_value(),
            label_prefix=settings.pkcs11.label_prefix,
        )
    if settings.provider == "aws-kms":
        from dragoman.keys.aws_kms import AwsKmsProvider

        try:
            return AwsKmsProvider(
                region=settings.aws_kms.region,
                endpoint_url=settings.aws_kms.endpoint_url,
                alias=settings.aws_kms.alias,
                timeout=settings.aws_kms.timeout,
                max_attempts=settings.aws_kms.attempts,
            )
        except RuntimeError as exc:  # boto3 is not installed
            raise KeyConfigError(f"keys.provider: {exc}") from None
    from dragoman.keys.local import LocalProvider

    return LocalProvider(engine, master_key_of(settings), query_timeout=query_timeout)


def timeline_of(settings: KeySettings) -> Timeline:
    return Timeline(
        period=settings.rotation_period, overlap=settings.overlap, prepublish=settings.prepublish
    )


def open_key_ring(
    settings: KeySettings,
    store: StoreSettings,
    engine: AsyncEngine,
    *,
    clock: Callable[[], float] = time.time,
) -> KeyRing:
    return KeyRing(
        KeySetStore(engine, query_timeout=store.query_timeout),
        open_provider(settings, engine, store.query_timeout),
        timeline_of(settings),
        refresh_interval=settings.refresh_interval,
        auto_rotate=settings.auto_rotate,
        max_clock_skew=settings.max_clock_skew,
        clock=clock,
    )
