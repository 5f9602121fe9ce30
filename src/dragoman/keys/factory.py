"""Builds the configured key provider."""

from __future__ import annotations

from dragoman.keys.local import KeyFileError, LocalKeyFile, decode_master_key
from dragoman.settings import KeySettings


def master_key_of(settings: KeySettings) -> bytes:
    if settings.master_key is not None:
        return decode_master_key(settings.master_key.get_secret_value())
    assert settings.master_key_file is not None  # settings guarantee one of the two
    try:
        text = settings.master_key_file.read_text("utf-8")
    except OSError as exc:
        raise KeyFileError(
            f"keys.master_key_file: cannot read {settings.master_key_file} ({exc.strerror})"
        ) from None
    return decode_master_key(text)


def open_key_provider(settings: KeySettings, *, create: bool) -> LocalKeyFile:
    """The local key file, loaded; with ``create``, made first if it does not exist."""
    provider = LocalKeyFile(settings.path, master_key_of(settings))
    provider.load(create=create)
    return provider
