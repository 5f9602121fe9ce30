"""Builds the mapping cipher and store from settings."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.keys.factory import master_key_of
from dragoman.keys.sealing import decode_master_key
from dragoman.mapping.crypto import DERIVED_KEK_ID, MappingCipher, derive
from dragoman.mapping.store import MappingStore
from dragoman.settings import Settings


def open_mapping_cipher(settings: Settings) -> MappingCipher:
    """The configured KEKs, plus the `master` KEK derived from the master key when there is
    one; the index key as configured, or derived (settings validation guarantees one)."""
    encryption = settings.mapping.encryption
    has_master = settings.keys.master_key is not None or settings.keys.master_key_file is not None
    master = master_key_of(settings.keys) if has_master else None
    keks = {k: decode_master_key(v.get_secret_value()) for k, v in encryption.keks.items()}
    if master is not None:
        keks.setdefault(DERIVED_KEK_ID, derive(master, "dragoman/mapping-kek/v1"))
    if encryption.index_key is not None:
        index_key = decode_master_key(encryption.index_key.get_secret_value())
    else:
        assert master is not None  # settings validation
        index_key = derive(master, "dragoman/mapping-index/v1")
    active = encryption.active_kek or DERIVED_KEK_ID
    return MappingCipher(keks, active, index_key)


def open_mapping_store(settings: Settings, engine: AsyncEngine) -> MappingStore:
    return MappingStore(
        engine,
        cipher=open_mapping_cipher(settings),
        query_timeout=settings.store.query_timeout,
        cache_ttl=settings.mapping.cache_ttl,
        pool_size=settings.store.pool_size,
    )
