"""Rows of the mapping table <-> AccountMapping entities, through the mapping cipher.

Plaintext never reaches a row: the account, the customer and the verification evidence are
sealed under the mapping's data key, and the account and customer are findable by their
blind indexes only.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dragoman.mapping.crypto import MappingCipher, MappingCryptoError
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus

ACCOUNT = "cloud_account"
CUSTOMER = "payment_customer"
EVIDENCE = "verification_evidence"


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_utc(value: datetime) -> datetime:
    """SQLite keeps the wall time and drops the offset: convert before writing (naive values
    are taken as UTC, as PostgreSQL and the reading side do)."""
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


class RowCodec:
    def __init__(self, cipher: MappingCipher) -> None:
        self.cipher = cipher
        # Blind indexes are keyed hashes that every request needs (rate-limit and anomaly
        # keys, lookups): each is computed once per worker for the accounts seen most.
        self.account_index: Callable[[str], str] = functools.lru_cache(maxsize=65_536)(
            functools.partial(cipher.index, ACCOUNT)
        )
        self.customer_index: Callable[[str], str] = functools.lru_cache(maxsize=65_536)(
            functools.partial(cipher.index, CUSTOMER)
        )

    def sealed_values(
        self,
        mapping_id: str,
        *,
        cloud_account: str,
        payment_customer: str,
        verification_evidence: str | None,
    ) -> dict[str, Any]:
        """The columns that hold a mapping's secrets, for a new data key."""
        fields = {ACCOUNT: cloud_account, CUSTOMER: payment_customer}
        if verification_evidence is not None:
            fields[EVIDENCE] = verification_evidence
        sealed = self.cipher.seal(mapping_id, fields)
        return {
            "cloud_account": None,
            "payment_customer": None,
            "verification_evidence": None,
            "cloud_account_index": self.account_index(cloud_account),
            "payment_customer_index": self.customer_index(payment_customer),
            "cloud_account_ciphertext": sealed.fields[ACCOUNT],
            "payment_customer_ciphertext": sealed.fields[CUSTOMER],
            "verification_evidence_ciphertext": sealed.fields.get(EVIDENCE),
            "data_key_wrapped": sealed.data_key_wrapped,
            "data_key_kek": sealed.data_key_kek,
        }

    def reseal_evidence(self, row: Any, evidence: str | None) -> bytes | None:
        """New evidence sealed under the row's existing data key."""
        if evidence is None:
            return None
        dek = self.cipher.open_data_key(row.id, row.data_key_wrapped, row.data_key_kek)
        return self.cipher.seal_field(row.id, dek, EVIDENCE, evidence)

    def entity(self, row: Any) -> AccountMapping:
        if (
            row.data_key_wrapped is None
            or row.data_key_kek is None
            or row.cloud_account_ciphertext is None
            or row.payment_customer_ciphertext is None
        ):
            # Written before revision 0003 and not sealed yet (or emptied by hand): refuse
            # clearly rather than fail on a missing value.
            raise MappingCryptoError(
                f"mapping {row.id} is not sealed (written before revision 0003):"
                " `dragoman mappings rekey` seals it"
            )
        dek = self.cipher.open_data_key(row.id, row.data_key_wrapped, row.data_key_kek)

        def field(name: str, sealed: bytes | None) -> str | None:
            return None if sealed is None else self.cipher.open_field(row.id, dek, name, sealed)

        cloud_account = field(ACCOUNT, row.cloud_account_ciphertext)
        payment_customer = field(CUSTOMER, row.payment_customer_ciphertext)
        assert cloud_account is not None and payment_customer is not None
        # The blind indexes are plain columns: one copied from another row would make a
        # lookup of one account find the other's mapping (and customer). They must be the
        # indexes of what this row's sealed fields say.
        if not hmac.compare_digest(
            str(row.cloud_account_index), self.account_index(cloud_account)
        ) or not hmac.compare_digest(
            str(row.payment_customer_index), self.customer_index(payment_customer)
        ):
            raise MappingCryptoError(
                f"mapping {row.id}: a blind index does not match its sealed field (altered row)"
            )
        return AccountMapping(
            id=row.id,
            cloud_account=cloud_account,
            payment_customer=payment_customer,
            customer_index=row.payment_customer_index,
            status=MappingStatus(row.status),
            created_at=utc(row.created_at),
            created_by=row.created_by,
            verification_method=row.verification_method,
            verification_evidence=field(EVIDENCE, row.verification_evidence_ciphertext),
            last_validated_at=utc(row.last_validated_at),
            version=row.version,
            grants=tuple(Grant.from_json(g) for g in row.grants),
            updated_by=row.updated_by,
        )
