"""Sealed account_mappings rows for the benchmarks that fill a store in bulk (inserting
through the store one by one would take minutes for a million rows)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from dragoman.mapping.rows import RowCodec

GRANTS = [{"role": "billing_admin", "operations": ["*"]}]


def sealed_row(codec: RowCodec, *, account: str, customer: str, now: datetime) -> dict[str, Any]:
    """An active, validated mapping of ``account`` to ``customer``, granting billing_admin
    everything, sealed as the store seals it."""
    mapping_id = str(uuid.uuid4())
    return {
        "id": mapping_id,
        **codec.sealed_values(
            mapping_id,
            cloud_account=account,
            payment_customer=customer,
            verification_evidence=None,
        ),
        "status": "active",
        "created_at": now,
        "created_by": "bench",
        "verification_method": "bench",
        "last_validated_at": now,
        "updated_at": now,
        "updated_by": "bench",
        "version": 1,
        "grants": GRANTS,
    }
