"""Encryption at rest of the account mappings (SEMANTICS §4): envelope encryption and
keyed blind indexes.

- Each mapping has its own data key (DEK, 32 random bytes). Its sensitive fields (the cloud
  account, the payment customer, the verification evidence) are sealed with AES-256-GCM
  under the DEK, each bound to the mapping id and the field name.
- The DEK is stored wrapped (AES-256-GCM) by a key-encryption key (KEK), named by id, bound
  to the mapping id and the KEK id. Several KEKs may be configured; new DEKs are wrapped by
  the active one, and `dragoman mappings rekey` re-wraps old ones without touching fields.
- Lookups go through blind indexes: HMAC-SHA256 under a separate index key of a field's
  kind and value. The database never sees a plaintext account or customer id.

Without configured KEKs, one KEK (id ``master``) and the index key are derived from the
signing master key with HKDF, under distinct labels.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dragoman.keys.sealing import Sealer, SealingError

DERIVED_KEK_ID = "master"


class MappingCryptoError(Exception):
    """A wrapped key or sealed field does not open (wrong KEK, altered row), or the KEK
    that wrapped it is not configured."""


def derive(master_key: bytes, label: str) -> bytes:
    """A 32-byte key for one purpose, derived from the master key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode()).derive(
        master_key
    )


@dataclass(frozen=True, slots=True)
class SealedMapping:
    """What is stored for one mapping's secrets."""

    data_key_wrapped: bytes
    data_key_kek: str
    fields: dict[str, bytes]


class MappingCipher:
    def __init__(self, keks: dict[str, bytes], active_kek: str, index_key: bytes) -> None:
        if active_kek not in keks:
            raise ValueError(f"the active KEK {active_kek!r} is not configured")
        self._keks = {kek_id: Sealer(key) for kek_id, key in keks.items()}
        self.active_kek = active_kek
        self._index_key = index_key

    @classmethod
    def from_master_key(cls, master_key: bytes) -> MappingCipher:
        """The cipher dragoman derives when no KEKs are configured (tests use it too)."""
        return cls(
            {DERIVED_KEK_ID: derive(master_key, "dragoman/mapping-kek/v1")},
            DERIVED_KEK_ID,
            derive(master_key, "dragoman/mapping-index/v1"),
        )

    @property
    def kek_ids(self) -> frozenset[str]:
        """The ids of the configured KEKs (never the keys)."""
        return frozenset(self._keks)

    # -- blind indexes -------------------------------------------------------------------

    def index(self, kind: str, value: str) -> str:
        digest = hmac.new(self._index_key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode("ascii").rstrip("=")

    # -- envelope --------------------------------------------------------------------------

    def _kek(self, kek_id: str) -> Sealer:
        found = self._keks.get(kek_id)
        if found is None:
            raise MappingCryptoError(f"KEK {kek_id!r} is not configured")
        return found

    def seal(self, mapping_id: str, fields: dict[str, str]) -> SealedMapping:
        """A new data key for ``mapping_id``, wrapped by the active KEK, and its fields."""
        dek = secrets.token_bytes(32)
        wrapped = self._kek(self.active_kek).seal(dek, _dek_name(mapping_id, self.active_kek))
        sealer = Sealer(dek)
        return SealedMapping(
            wrapped,
            self.active_kek,
            {
                name: sealer.seal(value.encode(), _field_name(mapping_id, name))
                for name, value in fields.items()
            },
        )

    def open_data_key(self, mapping_id: str, wrapped: bytes | None, kek_id: str | None) -> bytes:
        if not wrapped or not kek_id:
            raise MappingCryptoError(f"mapping {mapping_id} has no wrapped data key (not sealed)")
        if kek_id not in self._keks:
            raise MappingCryptoError(
                f"mapping {mapping_id}: its data key is wrapped by KEK {kek_id!r},"
                " which is not configured"
            )
        try:
            return self._kek(kek_id).open(wrapped, _dek_name(mapping_id, kek_id))
        except SealingError as exc:
            raise MappingCryptoError(str(exc)) from None

    def seal_field(self, mapping_id: str, dek: bytes, name: str, value: str) -> bytes:
        return Sealer(dek).seal(value.encode(), _field_name(mapping_id, name))

    def open_field(self, mapping_id: str, dek: bytes, name: str, sealed: bytes) -> str:
        try:
            return Sealer(dek).open(sealed, _field_name(mapping_id, name)).decode()
        except SealingError as exc:
            raise MappingCryptoError(str(exc)) from None

    def rewrap(
        self, mapping_id: str, wrapped: bytes | None, kek_id: str | None
    ) -> tuple[bytes, str]:
        """The data key wrapped again by the active KEK (fields are untouched)."""
        dek = self.open_data_key(mapping_id, wrapped, kek_id)
        active = self.active_kek
        return self._kek(active).seal(dek, _dek_name(mapping_id, active)), active


def _dek_name(mapping_id: str, kek_id: str) -> str:
    return f"mapping:{mapping_id}:dek:{kek_id}"


def _field_name(mapping_id: str, field: str) -> str:
    return f"mapping:{mapping_id}:{field}"
