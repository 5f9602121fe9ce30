"""Step 4 as a pipeline stage: the caller's account must map to an active, fresh customer
link that grants this operation (the customer named in the request is checked next, by
:mod:`dragoman.catalog.binding`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dragoman.identity.principal import Principal
from dragoman.mapping.crypto import MappingCryptoError
from dragoman.mapping.entity import AccountMapping, MappingStatus
from dragoman.mapping.store import MappingStore, StoreUnavailable
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    InternalError,
    MappingInactive,
    MappingMissing,
    MappingStale,
    MappingUnavailable,
    ScopeDenied,
    Unauthenticated,
)
from dragoman.pipeline.report_only import report
from dragoman.policy.roles import RolePolicy

log = logging.getLogger(__name__)


class MappingGate:
    """Finds the caller's mapping and checks that it may be used at all."""

    def __init__(
        self,
        store: MappingStore,
        *,
        stale_after: float,
        clock: Callable[[], float] = time.time,
        observe_age: Callable[[float], None] | None = None,
    ) -> None:
        """``observe_age`` is told the age of every mapping a request uses (seconds since
        its last validation), for the staleness metric."""
        self._store = store
        self._stale_after = stale_after
        self._clock = clock
        self._observe_age = observe_age

    async def usable_mapping(self, principal: Principal) -> AccountMapping:
        mapping = await self.find(principal)
        self.check(mapping)
        return mapping

    async def find(self, principal: Principal) -> AccountMapping:
        """The caller's mapping, whatever its state (refused when there is none)."""
        if principal.cloud_account is None:
            raise Unauthenticated("account_claim_missing", "The credential names no cloud account.")
        try:
            mapping = await self._store.find_by_account(principal.cloud_account)
        except StoreUnavailable:
            raise MappingUnavailable("mapping_store_unavailable") from None
        except MappingCryptoError as exc:
            # A row that does not open (tampered, or sealed under a KEK this instance lacks)
            # is refused, never treated as missing; the operator needs the reason once, not a
            # traceback per request.
            log.error("mapping row of the caller cannot be opened: %s", exc)
            raise InternalError("mapping_unreadable") from None
        if mapping is None:
            raise MappingMissing()
        return mapping

    def check(self, mapping: AccountMapping) -> None:
        """Refuses a mapping that may not be used: suspended, revoked, or stale."""
        if mapping.status in (MappingStatus.SUSPENDED, MappingStatus.REVOKED):
            raise MappingInactive(f"mapping_{mapping.status.value}")
        age = self._clock() - mapping.last_validated_at.timestamp()
        if self._observe_age is not None:
            self._observe_age(max(0.0, age))
        if mapping.status is MappingStatus.STALE or age > self._stale_after:
            raise MappingStale()


class MapAccountStage:
    name = "map_account"

    def __init__(self, gate: MappingGate, policy: RolePolicy) -> None:
        self._gate = gate
        self._policy = policy

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None and ctx.operation is not None  # earlier stages
        mapping = await self._gate.find(ctx.principal)
        # Set before the checks: the request's audit record is the record of this read, and
        # names the mapping also when the mapping refuses the request.
        ctx.mapping = mapping
        self._gate.check(mapping)
        if not mapping.allows(ctx.principal, ctx.operation, self._policy):
            role = self._policy.report_only_role(mapping, ctx.principal, ctx.operation)
            if role is None:
                raise ScopeDenied()
            report(ctx, f"policy.roles.{role}", ScopeDenied("role_definition"))
