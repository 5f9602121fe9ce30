"""What reconciliation does with one mapping, given the platform's verdict (the policy),
and the alert it raises for a discrepancy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dragoman.alerts.base import Alert
from dragoman.mapping.entity import AccountMapping, MappingStatus
from dragoman.mapping.platform import Drift
from dragoman.mapping.reconcile_records import Finding, Outcome, alert_id_of
from dragoman.settings import ReconcileSettings

SEVERITY = {
    MappingStatus.ACTIVE: 0,
    MappingStatus.STALE: 1,
    MappingStatus.SUSPENDED: 2,
    MappingStatus.REVOKED: 3,
}


@dataclass(frozen=True, slots=True)
class Policy:
    actions: Mapping[Drift, MappingStatus]

    @classmethod
    def of(cls, settings: ReconcileSettings) -> Policy:
        return cls(
            {
                Drift.MISSING: MappingStatus(settings.on_customer_missing),
                Drift.DELETED: MappingStatus(settings.on_customer_deleted),
                Drift.MERGED: MappingStatus(settings.on_customer_merged),
                Drift.REOWNED: MappingStatus(settings.on_account_mismatch),
            }
        )


def decide(
    mapping: AccountMapping, drift: Drift, policy: Policy, previous: Finding | None
) -> Outcome:
    """What reconciliation does to ``mapping`` given the platform's verdict ``drift`` and
    the mapping's latest finding from an earlier run."""
    if drift is Drift.NONE:
        restore = (
            mapping.status is MappingStatus.STALE
            and previous is not None
            and previous.status_after == MappingStatus.STALE.value
        )
        return Outcome(mapping, None, MappingStatus.ACTIVE if restore else mapping.status)
    target = policy.actions[drift]
    new_status = target if SEVERITY[target] > SEVERITY[mapping.status] else mapping.status
    if (
        previous is None
        or previous.kind != drift.value
        or mapping.last_validated_at > previous.found_at
    ):
        return Outcome(mapping, drift.value, new_status)
    # The same discrepancy as the earlier run's (the mapping not validated anew since).
    if (previous.alerted_at is not None or previous.known) and new_status is mapping.status:
        return Outcome(mapping, drift.value, new_status, known=True)
    unconfirmed = previous.alerted_at is None and not previous.known
    if unconfirmed and previous.status_after == new_status.value:
        # Its alert may have arrived after that run stopped waiting: the same id again.
        return Outcome(mapping, drift.value, new_status, alert_id=previous.alert_id)
    return Outcome(mapping, drift.value, new_status)


def drift_alert(run_id: str, finding: Finding | Outcome) -> Alert:
    customer_index: str | None
    if isinstance(finding, Outcome):
        assert finding.drift is not None
        mapping_id, kind = finding.mapping.id, finding.drift
        customer_index = finding.mapping.customer_index
        before, after = finding.mapping.status.value, finding.new_status.value
        alert_id = finding.alert_id or alert_id_of(run_id, mapping_id)
    else:
        mapping_id, kind, customer_index = finding.mapping_id, finding.kind, finding.customer_index
        before, after = finding.status_before, finding.status_after
        alert_id = finding.alert_id
    return Alert(
        kind="mapping_drift",
        id=alert_id,
        severity="critical" if after == MappingStatus.SUSPENDED.value else "warning",
        message=f"a mapping no longer matches the platform's record ({kind}): {before} -> {after}",
        fields={
            "drift": kind,
            "mapping_id": mapping_id,
            "customer_index": customer_index,
            "run_id": run_id,
            "status_before": before,
            "status_after": after,
        },
    )


def contribution(outcomes: Iterable[Outcome]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for o in outcomes:
        counts["checked"] += 1
        if o.drift is None:
            counts["matched"] += 1
            if o.mapping.status is MappingStatus.STALE and o.new_status is MappingStatus.ACTIVE:
                counts["restored"] += 1
        else:
            counts["drifted"] += 1
            counts[o.drift] += 1
            counts["known" if o.known else "alerts"] += 1
    return counts
