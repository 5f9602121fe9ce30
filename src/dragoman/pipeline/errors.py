"""Denials: why a request stops, as a stable machine code and an HTTP status.

A stage raises a Denial to end the request; nothing after it runs except the audit record
and the security headers, and nothing reaches the upstream. The tree::

    Denial
    ├── BadRequest                400  bad_request, path_invalid
    │   └── DecisionRequestInvalid     decision_request_invalid (the decision listener's
    │                                  check request itself is unreadable)
    ├── BodyTimeout               408  body_timeout (server.body_timeout; the connection closes)
    ├── PayloadTooLarge           413  body_too_large
    ├── UnsupportedMediaType      415  media_type_unsupported
    ├── Unauthenticated           401  unauthenticated
    ├── StepUpRequired            401  insufficient_user_authentication (reason:
    │                                  auth_time_missing, auth_too_old, acr_insufficient)
    ├── Forbidden                 403
    │   ├── ScopeDenied                scope_denied
    │   ├── MappingMissing             mapping_missing
    │   ├── MappingInactive            mapping_inactive
    │   ├── MappingStale               mapping_stale
    │   ├── CustomerMismatch           customer_mismatch
    │   ├── OriginDenied               origin_denied
    │   ├── CsrfMissing                csrf_missing (reason: missing_cookie, missing_header)
    │   ├── CsrfInvalid                csrf_invalid (reason: mismatch, bad_mac, unknown_session,
    │   │                              other_principal)
    │   ├── CsrfTokenRotated           csrf_token_rotated
    │   ├── AnomalyBlocked             anomaly_blocked (reason: the rule's name; Retry-After)
    │   ├── RegistrationForbidden      registration_forbidden
    │   └── PeerNotAllowed             peer_not_allowed (reason: peer_not_allowed, peer_unknown;
    │                                  the decision listener's, dragoman.decision.peers)
    ├── OperationUnknown          404  operation_unknown
    ├── Conflict                  409  conflict
    │   └── LinkExists                 mapping_exists
    ├── LinkRefused               422  link_refused (reason: customer_missing, customer_deleted,
    │                                  customer_merged, account_mismatch)
    ├── RateLimited               429  rate_limited (reason: the rule's name; Retry-After,
    │                                  RateLimit-Policy, RateLimit)
    ├── DependencyUnavailable     503  identity_unavailable, mapping_unavailable,
    │                                  key_unavailable, audit_unavailable, platform_unavailable,
    │                                  session_unavailable, rate_limit_unavailable,
    │                                  anomaly_unavailable
    ├── Overloaded                503  overloaded (server.max_in_flight reached)
    ├── InternalError             500  internal_error
    ├── UpstreamUnavailable       502  upstream_unavailable
    └── UpstreamTimeout           504  upstream_timeout

``code`` is public and stable: it goes into the problem body and the audit record, and
clients may branch on it. ``reason`` is a finer, equally stable detail for operators (for
example ``token_expired`` under ``unauthenticated``); it is recorded in the audit record and
shown in the problem's ``detail``. Neither ever carries a token, a secret or card data.
A denial whose reason clients branch on adds it to the problem body (``extensions``).
"""

from __future__ import annotations

from typing import ClassVar


class Denial(Exception):
    """A final refusal of the request."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "The request was refused."
    closes_connection: ClassVar[bool] = False
    """Whether the connection is closed after the answer (what arrives next on it is not
    known to be a request)."""

    def __init__(self, reason: str | None = None, detail: str | None = None) -> None:
        self.reason = reason or self.code
        self.detail = detail or self.title
        super().__init__(f"{self.code}: {self.reason}")

    def headers(self) -> dict[str, str]:
        """Extra response headers this denial needs (WWW-Authenticate, Retry-After...)."""
        return {}

    def extensions(self) -> dict[str, str]:
        """Extra members of the problem body (RFC 9457 extension members)."""
        return {}


class BadRequest(Denial):
    status = 400
    code = "bad_request"
    title = "The request is malformed."


class RequestUnreadable(BadRequest):
    """What the HTTP parser refused (a malformed request line or header, a duplicate
    Content-Length): answered without the parser's words, which quote the caller's bytes."""

    title = "The request could not be read as HTTP."


class PathInvalid(BadRequest):
    code = "path_invalid"
    title = "The request path is ambiguous or malformed."


class ExpectationFailed(Denial):
    status = 417
    code = "expectation_failed"
    title = "The request's Expect header asks for something other than 100-continue."


class PayloadTooLarge(Denial):
    status = 413
    code = "body_too_large"
    title = "The request body is larger than allowed."


class BodyTimeout(Denial):
    status = 408
    code = "body_timeout"
    title = "The request body stopped arriving."
    closes_connection = True  # RFC 9110 §15.5.9; the rest of the body may still come


class UnsupportedMediaType(Denial):
    status = 415
    code = "media_type_unsupported"
    title = "The request body must be application/json."


class Unauthenticated(Denial):
    status = 401
    code = "unauthenticated"
    title = "Valid credentials of a known identity provider are required."

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3: error codes only, no token material.
        if self.reason == "credentials_missing":
            return {"WWW-Authenticate": 'Bearer realm="dragoman"'}
        return {"WWW-Authenticate": 'Bearer realm="dragoman", error="invalid_token"'}


class StepUpRequired(Denial):
    """The caller's sign-in is too old or too weak for this operation's risk tier (RFC 9470).

    The challenge names what a new sign-in must satisfy (``max_age`` and/or ``acr_values``,
    the tier's whole requirement, so one new sign-in satisfies it); ``reason`` says what
    failed and the problem body carries it.
    """

    status = 401
    code = "insufficient_user_authentication"
    title = "This operation needs a more recent or stronger sign-in."

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        max_age: int | None = None,
        acr_values: tuple[str, ...] = (),
    ) -> None:
        super().__init__(reason, detail)
        self.max_age = max_age
        self.acr_values = acr_values

    def headers(self) -> dict[str, str]:
        # RFC 9470 §3; the description is one of this module's fixed sentences (no quotes).
        params = [
            'error="insufficient_user_authentication"',
            f'error_description="{self.detail}"',
        ]
        if self.max_age is not None:
            params.append(f'max_age="{self.max_age}"')
        if self.acr_values:
            params.append(f'acr_values="{" ".join(self.acr_values)}"')
        return {"WWW-Authenticate": "Bearer " + ", ".join(params)}

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


class Forbidden(Denial):
    status = 403
    code = "forbidden"
    title = "The caller may not do this."


class ScopeDenied(Forbidden):
    code = "scope_denied"
    title = "The caller is not granted this operation for this account."


class MappingMissing(Forbidden):
    code = "mapping_missing"
    title = "The cloud account is not linked to a payment customer."


class MappingInactive(Forbidden):
    code = "mapping_inactive"
    title = "The account's link to its payment customer is suspended or revoked."


class MappingStale(Forbidden):
    code = "mapping_stale"
    title = "The account's link to its payment customer has not been validated recently."


class CustomerMismatch(Forbidden):
    code = "customer_mismatch"
    title = "The request names a customer other than the caller's."


class OriginDenied(Forbidden):
    code = "origin_denied"
    title = "The request comes from an origin that is not allowed."


class CsrfMissing(Forbidden):
    """The request lacks its CSRF cookie or its ``X-CSRF-Token`` header; ``reason`` says
    which, and the problem body carries it."""

    code = "csrf_missing"
    title = "This request needs the CSRF cookie and the X-CSRF-Token header of its session."

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


class CsrfInvalid(Forbidden):
    """The request's CSRF pair (cookie + ``X-CSRF-Token``) does not hold; ``reason`` says
    which check failed, and the problem body carries it."""

    code = "csrf_invalid"
    title = "A valid CSRF cookie and X-CSRF-Token header of the caller's session are required."

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


class CsrfTokenRotated(Forbidden):
    """The CSRF token was live but has been rotated past its grace: the client performs one
    new handshake (SEMANTICS §5)."""

    code = "csrf_token_rotated"
    title = "The CSRF token has been replaced by a session refresh; perform a new handshake."


class AnomalyBlocked(Forbidden):
    """An anomaly rule blocked the account's sensitive operations for a while; ``reason``
    names the rule (recorded in the audit record). ``retry_after`` is in whole seconds,
    rounded up and at least 1."""

    code = "anomaly_blocked"
    title = "Sensitive operations of this account are blocked for a while after unusual activity."

    def __init__(self, rule: str, *, retry_after: int) -> None:
        super().__init__(rule)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RegistrationForbidden(Forbidden):
    code = "registration_forbidden"
    title = "The caller may not link or unlink its cloud account."


class OperationUnknown(Denial):
    status = 404
    code = "operation_unknown"
    title = "No operation in the catalog matches this method and path."


class Conflict(Denial):
    status = 409
    code = "conflict"
    title = "The request conflicts with a concurrent change; try again."


class LinkExists(Conflict):
    code = "mapping_exists"
    title = "The cloud account is already linked to a payment customer; unlink it first."


class LinkRefused(Denial):
    """The platform's records do not support the link; ``reason`` says why (a
    :class:`dragoman.mapping.platform.Drift` value), and the problem body carries it."""

    status = 422
    code = "link_refused"
    title = "The payment platform's records do not support this link; nothing was linked."

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


class RateLimited(Denial):
    """A rate limit on the caller's verified identity refused the request (nothing was
    counted); ``reason`` names the rule and the problem body carries it.

    ``retry_after`` is in whole seconds, rounded up and at least 1; ``policy`` and ``state``
    are the rule's RateLimit-Policy and RateLimit field values (draft-ietf-httpapi-ratelimit-
    headers), built by :mod:`dragoman.limits.headers`.
    """

    status = 429
    code = "rate_limited"
    title = "Too many requests for this account; retry after the time in Retry-After."

    def __init__(self, rule: str, *, retry_after: int, policy: str, state: str) -> None:
        super().__init__(rule)
        self.retry_after = max(1, retry_after)
        self.policy = policy
        self.state = state

    def headers(self) -> dict[str, str]:
        return {
            "Retry-After": str(self.retry_after),
            "RateLimit-Policy": self.policy,
            "RateLimit": self.state,
        }

    def extensions(self) -> dict[str, str]:
        return {"reason": self.reason}


class DependencyUnavailable(Denial):
    status = 503
    code = "dependency_unavailable"
    title = "A service the proxy needs is unavailable; nothing was forwarded."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class IdentityUnavailable(DependencyUnavailable):
    code = "identity_unavailable"
    title = "The identity provider's keys cannot be obtained; nothing was forwarded."


class MappingUnavailable(DependencyUnavailable):
    code = "mapping_unavailable"
    title = "The account mapping store is unavailable; nothing was forwarded."


class KeyUnavailable(DependencyUnavailable):
    code = "key_unavailable"
    title = "No signing key is usable; nothing was forwarded."


class AuditUnavailable(DependencyUnavailable):
    code = "audit_unavailable"
    title = "The audit trail cannot be written; nothing was forwarded."


class SessionUnavailable(DependencyUnavailable):
    code = "session_unavailable"
    title = "The browser session store is unavailable; nothing was forwarded."


class RateLimitUnavailable(DependencyUnavailable):
    code = "rate_limit_unavailable"
    title = "The shared rate-limit store is unavailable; nothing was forwarded."


class AnomalyUnavailable(DependencyUnavailable):
    code = "anomaly_unavailable"
    title = "The anomaly detection store is unavailable; sensitive operations are refused."


class PlatformRecordsUnavailable(DependencyUnavailable):
    code = "platform_unavailable"
    title = "The payment platform could not be asked to verify the link; nothing was linked."


class Overloaded(Denial):
    """The worker already handles ``server.max_in_flight`` requests: refused before any
    check, so a burst past capacity costs the proxy little and the caller learns at once."""

    status = 503
    code = "overloaded"
    title = "The proxy is handling as many requests as it can; nothing was forwarded."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class InternalError(Denial):
    status = 500
    code = "internal_error"
    title = "The proxy failed unexpectedly; nothing more was forwarded."


class UpstreamUnavailable(Denial):
    status = 502
    code = "upstream_unavailable"
    title = "The upstream service could not be reached."


class UpstreamTimeout(Denial):
    status = 504
    code = "upstream_timeout"
    title = "The upstream service did not answer in time."


def all_denials() -> list[type[Denial]]:
    """Every concrete denial class, for documentation and tests."""
    found: list[type[Denial]] = []
    pending: list[type[Denial]] = [Denial]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
