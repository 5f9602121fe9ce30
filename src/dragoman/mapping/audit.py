"""The mapping's audit trail (SEMANTICS §4, §8): who read or wrote which mapping, why, and
what came of it.

One record per access, ``event: "mapping"``, written to the same sink as the request
records (redacted, appended)::

    time, event, audit_id, action, actor, purpose, request, mapping_id, customer,
    account_index, mapping_status, version, outcome, code, reason, evidence

- ``action``: read, list, create, link_attempt, suspend, revoke, reconcile
  (:class:`MappingAction`; reconcile: one record per mapping a reconciliation run checked
  and wrote, its ``code`` the drift found, its ``reason`` the status change; each is also
  recorded ``started`` before its batch commits).
- ``actor``: who asked: the verified principal (registration over HTTP) or the operator
  named by ``--by`` (the CLI; reads without ``--by`` name the operating-system user).
- ``purpose``: why: ``registration``, ``cli mappings show``...; ``request`` is the audit id
  of the request record that caused the access (HTTP), so the two records join.
- ``mapping_id``: the mapping read or written; for a refused link, the live mapping that
  stood in the way (if any).
- ``customer`` / ``account_index``: the blind indexes of the customer and the cloud account
  the action is about (the mapping's, or the ones asked for when nothing was written). A
  record never holds a plaintext customer id or cloud account.
- ``outcome``: ``ok``, ``refused`` (a rule said no) or ``failed`` (a dependency was down);
  ``code`` and ``reason`` are the stable denial code and its finer reason. A change (create,
  link, suspend, revoke) is recorded ``started`` before it is tried, so a change the store
  committed has a record whatever happens to its outcome's; if that record cannot be
  written, nothing is tried.
- ``evidence``: the verification reference of a new link (how and when it was verified).

Reads by the request pipeline (step 4, and ``/_dragoman/whoami``) are not recorded here:
the request's own record is the record of that read. It carries ``mapping_id``, the
``customer`` blind index, the principal and the decision (and the denial code when the
mapping refused the request; see :func:`dragoman.audit.record.request_record`), once per
request, which is exactly what a second per-read record would repeat on the hot path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dragoman.audit.record import iso_time
from dragoman.mapping.entity import AccountMapping
from dragoman.mapping.rows import RowCodec
from dragoman.pipeline.errors import (
    AuditUnavailable,
    Denial,
    DependencyUnavailable,
    InternalError,
)

EVENT = "mapping"

RECORDS_PER_WRITE = 64
"""Records of one piece of work written in one call to the trail (~1 ms of the event loop:
redaction, chaining and hashing cost ~16 µs a record)."""


class MappingAction(StrEnum):
    READ = "read"
    LIST = "list"
    CREATE = "create"
    LINK_ATTEMPT = "link_attempt"
    SUSPEND = "suspend"
    REVOKE = "revoke"
    RECONCILE = "reconcile"


class Outcome(StrEnum):
    STARTED = "started"
    """Written before a change is tried (:meth:`AuditScope.started`); its outcome follows."""
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"


def outcome_of(denial: Denial) -> Outcome:
    """A dependency that was down (or a bug) failed; anything else was a refusal."""
    if isinstance(denial, DependencyUnavailable | InternalError):
        return Outcome.FAILED
    return Outcome.REFUSED


class MappingAuditor:
    """Builds and writes mapping records. ``write`` is the audit trail's (the proxy's, which
    marks itself broken on failure) or a sink's (the CLI's, which raises OSError);
    ``write_many``, when given, writes a list of records in one call of the same kind (a
    reconciliation batch's hundreds of records: one lock and one ``write(2)`` instead of
    one each, so the proxy's event loop is held once per batch, not once per record)."""

    def __init__(
        self,
        write: Callable[[dict[str, Any]], object],
        codec: RowCodec,
        *,
        write_many: Callable[[list[dict[str, Any]]], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._write = write
        self._write_many = write_many
        self._codec = codec
        self._clock = clock

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one record made by :meth:`build` and return it. A ``started`` record that
        the proxy's trail could not write raises :class:`AuditUnavailable`, so the change
        it announces is not tried."""
        written = self._write(record)
        if record["outcome"] == Outcome.STARTED and written is False:
            # The proxy's trail says so; the CLI's writer raises by itself.
            raise AuditUnavailable("audit_write_failed")
        return record

    async def record_all(self, records: list[dict[str, Any]]) -> None:
        """Write records made by :meth:`build`, every one required: raises
        :class:`AuditUnavailable` when the proxy's trail could not write them. They go
        out :data:`RECORDS_PER_WRITE` at a time, with a turn of the event loop between two
        writes, so the requests a proxy serves meanwhile wait for one write at most."""
        for start in range(0, len(records), RECORDS_PER_WRITE):
            if start:
                await asyncio.sleep(0)
            chunk = records[start : start + RECORDS_PER_WRITE]
            if self._write_many is not None:
                if self._write_many(chunk) is False:
                    raise AuditUnavailable("audit_write_failed")
                continue
            for record in chunk:
                if self._write(record) is False:
                    raise AuditUnavailable("audit_write_failed")

    def build(
        self,
        action: MappingAction,
        *,
        actor: str,
        purpose: str,
        mapping: AccountMapping | None = None,
        customer: str | None = None,
        account: str | None = None,
        request: str | None = None,
        outcome: Outcome = Outcome.OK,
        code: str | None = None,
        reason: str | None = None,
        evidence: str | None = None,
    ) -> dict[str, Any]:
        """One record, not written yet. ``customer`` and ``account`` are the plaintext
        values asked for (when no mapping says them); only their blind indexes are
        written."""
        # What was asked for wins over the mapping: a refused link names the customer asked
        # for, and the mapping that stood in the way links another.
        customer_index: str | None = None
        account_index: str | None = None
        if customer is not None:
            customer_index = self._codec.customer_index(customer)
        elif mapping is not None:
            customer_index = mapping.customer_index
        if account is not None:
            account_index = self._codec.account_index(account)
        elif mapping is not None:
            account_index = self._codec.account_index(mapping.cloud_account)
        record: dict[str, Any] = {
            "time": iso_time(self._clock()),
            "event": EVENT,
            "audit_id": str(uuid.uuid4()),
            "action": action.value,
            "actor": actor,
            "purpose": purpose,
            "request": request,
            "mapping_id": mapping.id if mapping is not None else None,
            "customer": customer_index,
            "account_index": account_index,
            "mapping_status": mapping.status.value if mapping is not None else None,
            "version": mapping.version if mapping is not None else None,
            "outcome": outcome.value,
            "code": code,
            "reason": reason,
            "evidence": evidence,
        }
        return record

    def scope(
        self,
        *,
        actor: str,
        purpose: str,
        request: str | None = None,
        customer: str | None = None,
        account: str | None = None,
    ) -> AuditScope:
        """Records of one piece of work: who, why, and what it is about."""
        return AuditScope(self, actor, purpose, request, customer, account)


@dataclass(frozen=True, slots=True)
class AuditScope:
    auditor: MappingAuditor
    actor: str
    purpose: str
    request: str | None = None
    customer: str | None = None
    account: str | None = None

    def started(self, action: MappingAction, *, mapping: AccountMapping | None = None) -> None:
        """The record of a change about to be tried, before it is: a change the store
        commits is then recorded even if its outcome's record cannot be written (a full
        disk, a crash). Raises when it cannot be written (the proxy's trail:
        :class:`AuditUnavailable`; the CLI's writer: AuditTrailFailed), so nothing is
        tried unrecorded."""
        self._record(action, mapping, outcome=Outcome.STARTED)

    def ok(
        self,
        action: MappingAction,
        *,
        mapping: AccountMapping | None = None,
        evidence: str | None = None,
    ) -> dict[str, Any]:
        return self._record(action, mapping, evidence=evidence)

    def denied(
        self, action: MappingAction, denial: Denial, *, mapping: AccountMapping | None = None
    ) -> dict[str, Any]:
        return self.refused(
            action, denial.code, denial.reason, mapping=mapping, outcome=outcome_of(denial)
        )

    def refused(
        self,
        action: MappingAction,
        code: str,
        reason: str | None = None,
        *,
        mapping: AccountMapping | None = None,
        outcome: Outcome = Outcome.REFUSED,
    ) -> dict[str, Any]:
        return self._record(action, mapping, outcome=outcome, code=code, reason=reason)

    def _record(
        self,
        action: MappingAction,
        mapping: AccountMapping | None,
        *,
        outcome: Outcome = Outcome.OK,
        code: str | None = None,
        reason: str | None = None,
        evidence: str | None = None,
    ) -> dict[str, Any]:
        auditor = self.auditor
        record = auditor.build(
            action,
            actor=self.actor,
            purpose=self.purpose,
            request=self.request,
            customer=self.customer,
            account=self.account,
            mapping=mapping,
            outcome=outcome,
            code=code,
            reason=reason,
            evidence=evidence,
        )
        return auditor.record(record)
