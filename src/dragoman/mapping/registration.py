"""Linking a cloud account to a payment customer, verified before it is active (issue 4).

::

    Registrar.register(principal, customer)   self-service: POST /_dragoman/registration
    Registrar.unlink(principal)               self-service: DELETE /_dragoman/registration
    Registrar.link(account, customer, ...)    the operator: `dragoman mappings link`

A link is verified first, by a :class:`LinkVerifier`, and written only then, active, with
the verifier's evidence (method and reference) and validated now. A refused or
unverifiable link writes nothing at all, not even a pending row; a verifier that cannot
ask (the platform down) refuses with 503 ``platform_unavailable``, never links unverified.

Self-service callers are principals holding one of ``mapping.registration.roles``, and act
on their own cloud account only: the account comes from the verified credential, never
from the request. Self-service never undoes an operator's work:

- a self-service link records ``created_by`` ``registration:<subject>``, and a
  self-service unlink ``updated_by`` the same (:func:`~dragoman.mapping.store.self_service_actor`);
- unlinking revokes the caller's live link (revoked links stay as history; the account may
  be linked anew) only if self-service made it; a link an operator made (``mappings add``
  or ``link``, with its grants) is refused (403 ``registration_forbidden``,
  ``link_made_by_operator``), and so is a suspended one (a suspension is an operator's or
  reconciliation's decision, which unlinking and linking anew must not lift);
- linking is refused when an operator revoked the account's last link
  (``revoked_by_operator``: "for good" holds until an operator links it again), and when
  another account's active or stale link names the customer (409 ``mapping_exists``,
  ``customer_linked_elsewhere``);
- a customer that does not exist and one whose record names another account get one
  answer, ``account_mismatch`` (the audit record keeps ``customer_missing``), so
  registration tells nobody which customer ids exist.

Every attempt, refused or not, is written to the mapping audit trail
(:mod:`dragoman.mapping.audit`).

The refusals are denials (:mod:`dragoman.pipeline.errors`), so the HTTP endpoint, the
CLI and the audit records share their stable codes: ``registration_forbidden``,
``link_refused`` (reason ``customer_missing``, ``account_mismatch``, ``customer_deleted``,
``customer_merged``), ``mapping_exists``, ``mapping_missing``, ``platform_unavailable``,
``mapping_unavailable``; the self-service refusals carry their reason in the problem body
(``link_made_by_operator``, ``revoked_by_operator``, ``customer_linked_elsewhere``,
``account_mismatch``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from dragoman.audit.record import iso_time
from dragoman.catalog.model import Operation
from dragoman.identity.principal import Principal
from dragoman.mapping.audit import AuditScope, MappingAction, MappingAuditor
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus, unknown_grant_entries
from dragoman.mapping.platform import CustomerRecord, Drift, PlatformClient, PlatformUnavailable
from dragoman.mapping.store import (
    CustomerLinkedElsewhere,
    MappingExists,
    MappingNotFound,
    MappingStore,
    RevokedByOperator,
    StoreUnavailable,
    VersionConflict,
    is_self_service_actor,
    self_service_actor,
)
from dragoman.pipeline.errors import (
    BadRequest,
    Conflict,
    Denial,
    InternalError,
    LinkExists,
    LinkRefused,
    MappingInactive,
    MappingMissing,
    MappingUnavailable,
    PlatformRecordsUnavailable,
    RegistrationForbidden,
    Unauthenticated,
)
from dragoman.policy.roles import RolePolicy
from dragoman.settings import RegistrationSettings, Settings

log = logging.getLogger(__name__)

REGISTRATION_PURPOSE = "registration"
CUSTOMER_ID = re.compile(r"(?=[\x21-\x7e]*[A-Za-z0-9])[\x21-\x7e]{1,255}")
"""A customer id as the platform spells it: 1-255 printable ASCII characters without
spaces, at least one a letter or digit (so never ``.`` or ``..``, which a URL path would
resolve to another resource)."""
UNLINK_ATTEMPTS = 3
"""Re-reads when the caller's link changes while it is being revoked."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """How a link was verified, and when: stored (sealed) with the mapping."""

    method: str
    """The verifier's name, e.g. ``platform-metadata``."""
    reference: str
    """Where to find the proof, e.g. ``platform:customers.get:<time>:<lookup id>``."""
    checked_at: datetime


class LinkVerifier(Protocol):
    """Decides whether ``customer`` belongs to ``cloud_account``.

    Returns the evidence, or raises :class:`LinkRefused` (reason: a :class:`Drift` value)
    when the records say no, or :class:`PlatformRecordsUnavailable` when it cannot tell.
    """

    name: str

    async def verify(self, cloud_account: str, customer: str) -> Evidence: ...


class SelfServiceForbidden(RegistrationForbidden):
    """Self-service may not undo an operator's work; ``reason`` says which (the problem
    body carries it): ``link_made_by_operator`` (unlinking a link an operator made) or
    ``revoked_by_operator`` (linking an account an operator revoked)."""

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


class CustomerLinkedToAnother(LinkExists):
    """Self-service: another account's link names the customer (``reason``
    ``customer_linked_elsewhere``, in the problem body)."""

    title = "The payment customer is linked to another cloud account; nothing was linked."

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


NOT_LINKABLE = "account_mismatch"
"""What a self-service caller is told of a customer that does not exist or whose record
names another account ("not yours or not there"): the two must not be told apart, or
registration would tell anyone which customer ids exist. The mapping audit record keeps
the finer reason."""
NOT_LINKABLE_DETAIL = (
    "The payment platform has no customer with this id that names this cloud account."
)

REFUSAL_DETAIL = {
    Drift.MISSING: "The payment platform has no such customer.",
    Drift.REOWNED: "The customer's record does not name this cloud account.",
    Drift.DELETED: "The customer is deleted.",
    Drift.MERGED: "The customer was merged into another customer.",
}


def link_drift(record: CustomerRecord, cloud_account: str) -> Drift:
    """Whether ``record`` supports a new link from ``cloud_account``.

    Ownership is checked before liveness (unlike :meth:`CustomerRecord.drift_for`): whether
    somebody else's customer is deleted or merged is none of the caller's business.
    """
    if not record.exists:
        return Drift.MISSING
    if record.cloud_account != cloud_account:
        return Drift.REOWNED
    if record.deleted:
        return Drift.DELETED
    if record.merged_into:
        return Drift.MERGED
    return Drift.NONE


class PlatformMetadataVerifier:
    """The default verifier: the payment platform's own customer record, read through the
    catalog's customer operation with a token dragoman mints for that customer. The
    customer must exist, name the cloud account in its metadata, and be neither deleted
    nor merged."""

    name = "platform-metadata"

    def __init__(
        self,
        platform: PlatformClient,
        *,
        operation_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._platform = platform
        self._operation_id = operation_id
        self._clock = clock

    async def verify(self, cloud_account: str, customer: str) -> Evidence:
        asked_at = self._clock()
        lookup = secrets.token_urlsafe(12)
        try:
            record = await self._platform.customer(customer, cloud_account=cloud_account)
        except PlatformUnavailable as exc:
            log.warning("registration: customer lookup %s failed: %s", lookup, exc)
            raise PlatformRecordsUnavailable("customer_lookup_failed") from None
        drift = link_drift(record, cloud_account)
        if drift is not Drift.NONE:
            raise LinkRefused(drift.value, REFUSAL_DETAIL[drift])
        return Evidence(
            method=self.name,
            reference=f"platform:{self._operation_id}:{iso_time(asked_at)}:{lookup}",
            checked_at=datetime.fromtimestamp(asked_at, UTC),
        )


class Registrar:
    """Verifies and writes links, and revokes them; audits every attempt."""

    def __init__(
        self,
        store: MappingStore,
        verifier: LinkVerifier | None,
        auditor: MappingAuditor,
        settings: RegistrationSettings,
        *,
        policy: RolePolicy | None = None,
        catalog: Sequence[Operation] = (),
    ) -> None:
        """``policy`` and ``catalog``: what caps the registrant's own grant (without them,
        the registrant gets no grant of its own)."""
        self._store = store
        self._verifier = verifier
        self._auditor = auditor
        self._roles = frozenset(settings.roles)
        self._default_grants = tuple(
            Grant(operations=tuple(g.operations), principal=g.principal, role=g.role)
            for g in settings.default_grants
        )
        self._registrant_operations = tuple(settings.registrant_operations)
        self._registration_roles = tuple(settings.roles)
        self._policy = policy
        self._catalog = tuple(catalog)

    @property
    def default_grants(self) -> tuple[Grant, ...]:
        return self._default_grants

    def grants_for(self, principal: Principal) -> tuple[Grant, ...]:
        """The grants of a link the principal registers: the defaults, and the principal's
        own (:meth:`registrant_operations`) when it has any."""
        operations = self.registrant_operations(principal)
        if not operations:
            return self._default_grants
        own = Grant(operations=operations, principal=principal.subject)
        return (*self._default_grants, own)

    def registrant_operations(self, principal: Principal) -> tuple[str, ...]:
        """The catalog operations (by id) ``registrant_operations`` names that the roles the
        registrant registers with (its roles among ``registration.roles``) may ever ask
        for under ``policy.roles``. A grant to a principal by name is capped by no role
        later, so it is capped here: a ``billing_admin`` registering a link must not come
        out of it with the ``money`` operations its role never allowed."""
        if not self._registrant_operations or self._policy is None:
            return ()
        policy = self._policy
        wanted = Grant(operations=self._registrant_operations, principal=principal.subject)
        roles = [r for r in self._registration_roles if r in principal.roles]
        return tuple(
            op.id
            for op in self._catalog
            if wanted.covers(op) and any(policy.role_covers(r, op) for r in roles)
        )

    # -- self-service --------------------------------------------------------------------

    def _account_of(self, principal: Principal, action: MappingAction, audit: AuditScope) -> str:
        """The caller's own account, if it may (un)link it; refusals are audited."""
        refusal: Denial | None = None
        if principal.cloud_account is None:
            refusal = Unauthenticated("account_claim_missing", "The credential names no account.")
        elif not self._roles & principal.roles:
            refusal = RegistrationForbidden("role_missing")
        if refusal is not None:
            audit.denied(action, refusal)
            raise refusal
        assert principal.cloud_account is not None
        return principal.cloud_account

    async def register(
        self, principal: Principal, customer: str, *, request: str | None = None
    ) -> AccountMapping:
        """Link the caller's own cloud account to ``customer``, once verified."""
        audit = self._auditor.scope(
            actor=principal.subject,
            purpose=REGISTRATION_PURPOSE,
            request=request,
            customer=customer,
            account=principal.cloud_account,
        )
        account = self._account_of(principal, MappingAction.LINK_ATTEMPT, audit)
        try:
            return await self.link(
                account,
                customer,
                actor=principal.subject,
                grants=self.grants_for(principal),
                purpose=REGISTRATION_PURPOSE,
                request=request,
                self_service=True,
            )
        except LinkRefused as refused:
            if refused.reason not in (Drift.MISSING.value, Drift.REOWNED.value):
                raise
            # Audited with its own reason (by link); the caller is told one for both.
            raise LinkRefused(NOT_LINKABLE, NOT_LINKABLE_DETAIL) from None

    async def unlink(self, principal: Principal, *, request: str | None = None) -> AccountMapping:
        """Revoke the caller's live link (it stays as history)."""
        audit = self._auditor.scope(
            actor=principal.subject,
            purpose=REGISTRATION_PURPOSE,
            request=request,
            account=principal.cloud_account,
        )
        account = self._account_of(principal, MappingAction.REVOKE, audit)
        try:
            audit.started(MappingAction.REVOKE)
            revoked = await self._revoke(account, actor=self_service_actor(principal.subject))
        except Denial as refusal:
            audit.denied(MappingAction.REVOKE, refusal)
            raise
        except StoreUnavailable:
            unavailable = MappingUnavailable("mapping_store_unavailable")
            audit.denied(MappingAction.REVOKE, unavailable)
            raise unavailable from None
        audit.ok(MappingAction.REVOKE, mapping=revoked)
        return revoked

    async def _revoke(self, account: str, *, actor: str) -> AccountMapping:
        for _ in range(UNLINK_ATTEMPTS):
            mapping = await self._store.find_by_account(account)
            if mapping is None or mapping.status is MappingStatus.REVOKED:
                raise MappingMissing("no_live_link")
            if mapping.status is MappingStatus.SUSPENDED:
                # An operator's (or reconciliation's) decision: unlinking and linking anew
                # must not lift it. An operator revokes it.
                raise MappingInactive("mapping_suspended")
            if not is_self_service_actor(mapping.created_by):
                # An operator's link (its grants, its verification): an operator unlinks it.
                raise SelfServiceForbidden(
                    "link_made_by_operator",
                    "The link was made by an operator; only an operator may revoke it.",
                )
            try:
                return await self._store.update(
                    mapping.id,
                    expected_version=mapping.version,
                    actor=actor,
                    status=MappingStatus.REVOKED,
                )
            except VersionConflict:
                continue  # changed meanwhile (or the cache held an older version): re-read
        raise Conflict("mapping_changed")

    # -- the link itself -------------------------------------------------------------------

    async def link(
        self,
        cloud_account: str,
        customer: str,
        *,
        actor: str,
        grants: Sequence[Grant],
        purpose: str,
        request: str | None = None,
        self_service: bool = False,
    ) -> AccountMapping:
        """Verify, then write the active link. Raises a denial (audited) when refused.

        ``self_service``: the account's own principal ``actor`` links it (registration):
        the link records ``created_by`` as :func:`self_service_actor`, and is refused when
        an operator revoked the account's last link (403 ``registration_forbidden``,
        ``revoked_by_operator``) or another account's link names the customer (409
        ``mapping_exists``, ``customer_linked_elsewhere``); both are checked in the
        insert's transaction."""
        audit = self._auditor.scope(
            actor=actor, purpose=purpose, request=request, customer=customer, account=cloud_account
        )
        action = MappingAction.LINK_ATTEMPT
        try:
            if not CUSTOMER_ID.fullmatch(customer):
                raise BadRequest("customer_invalid", "The customer id is not well-formed.")
            if self._verifier is None:
                raise PlatformRecordsUnavailable("verifier_not_configured")
            evidence = await self._verifier.verify(cloud_account, customer)
            audit.started(action)
            mapping = await self._store.add(
                cloud_account=cloud_account,
                payment_customer=customer,
                created_by=self_service_actor(actor) if self_service else actor,
                verification_method=evidence.method,
                verification_evidence=evidence.reference,
                grants=grants,
                status=MappingStatus.ACTIVE,
                validated_at=evidence.checked_at,
                self_service=self_service,
            )
        except Denial as refusal:
            audit.denied(action, refusal)
            raise
        except MappingExists:
            exists = LinkExists("account_linked")
            audit.denied(action, exists, mapping=await self._live_or_none(cloud_account))
            raise exists from None
        except RevokedByOperator:
            revoked = SelfServiceForbidden(
                "revoked_by_operator",
                "An operator revoked this account's link; only an operator may link it again.",
            )
            audit.denied(action, revoked)
            raise revoked from None
        except CustomerLinkedElsewhere as elsewhere:
            taken = CustomerLinkedToAnother(
                "customer_linked_elsewhere",
                "Another cloud account's link names this customer; an operator resolves it.",
            )
            audit.denied(action, taken, mapping=await self._mapping_or_none(elsewhere.mapping_id))
            raise taken from None
        except StoreUnavailable:
            unavailable = MappingUnavailable("mapping_store_unavailable")
            audit.denied(action, unavailable)
            raise unavailable from None
        except Exception:
            audit.denied(action, InternalError())
            raise
        audit.ok(action, mapping=mapping, evidence=evidence.reference)
        return mapping

    async def _mapping_or_none(self, mapping_id: str) -> AccountMapping | None:
        """The mapping in the way of a new link, for the audit record (best effort)."""
        try:
            return await self._store.get(mapping_id)
        except (StoreUnavailable, MappingNotFound):
            return None

    async def _live_or_none(self, cloud_account: str) -> AccountMapping | None:
        """The live link in the way of a new one, for the audit record (best effort)."""
        try:
            found = await self._store.find_by_account(cloud_account)
        except StoreUnavailable:
            return None
        return found if found is not None and found.status is not MappingStatus.REVOKED else None


def open_verifier(
    settings: Settings,
    platform: PlatformClient | None,
    *,
    clock: Callable[[], float] = time.time,
) -> LinkVerifier | None:
    """The verifier named in settings (None when what it needs is not configured: every
    link is then refused with platform_unavailable)."""
    name = settings.mapping.registration.verifier
    if name == "platform-metadata":
        if platform is None:
            return None
        operation = settings.mapping.platform.customer_operation
        return PlatformMetadataVerifier(platform, operation_id=operation, clock=clock)
    raise ValueError(f"unknown link verifier {name!r}")  # pragma: no cover (settings check)


def unknown_grant_operations(settings: RegistrationSettings, catalog: list[Operation]) -> list[str]:
    """Operations the registration grants name that the catalog does not have."""
    grants = [
        Grant(operations=tuple(g.operations), principal=g.principal, role=g.role)
        for g in settings.default_grants
    ]
    if settings.registrant_operations:
        grants.append(
            Grant(operations=tuple(settings.registrant_operations), principal="registrant")
        )
    return unknown_grant_entries(grants, catalog)


def open_registrar(
    settings: Settings,
    *,
    store: MappingStore,
    platform: PlatformClient | None,
    auditor: MappingAuditor,
    catalog: list[Operation],
    clock: Callable[[], float] = time.time,
) -> Registrar:
    """The registrar of the settings. Grants that name nothing in the catalog are refused
    at start (ValueError), as `mappings add` refuses them: a typo would grant nothing."""
    registration = settings.mapping.registration
    unknown = unknown_grant_operations(registration, catalog) if catalog else []
    if unknown:
        raise ValueError(
            "mapping.registration grants name operations that are not in the catalog: "
            + ", ".join(unknown)
        )
    return Registrar(
        store,
        open_verifier(settings, platform, clock=clock),
        auditor,
        registration,
        policy=RolePolicy.from_settings(settings.policy),
        catalog=catalog,
    )
