"""The audit record of one request (SEMANTICS §8), built from its finished context."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from dragoman.catalog.model import Operation
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    DependencyUnavailable,
    InternalError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

_FAILURES = (DependencyUnavailable, InternalError, UpstreamUnavailable, UpstreamTimeout)


_formatted_second: tuple[int, str] = (0, "1970-01-01T00:00:00")
"""The last second :func:`iso_time` formatted, and its text: one tuple, so a thread reads
a second with its own text."""


def iso_time(epoch: float) -> str:
    """``datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")``, the same
    text to the character (microseconds rounded half to even, then truncated to
    milliseconds), with the date and time of day formatted once per second: every record
    carries one."""
    global _formatted_second
    second = math.floor(epoch)
    micros = round((epoch - second) * 1e6)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    known, text = _formatted_second
    if second != known:
        text = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        _formatted_second = (second, text)
    return f"{text}.{micros // 1000:03d}+00:00"


def audited_path(raw_path: str, operation: Operation | None) -> str:
    """The request path as the record keeps it: the customer named in a path of
    ``operation`` is replaced by its parameter (``/v1/customers/{customer_id}/...``); the
    record names the customer only as stored, by its blind index (SEMANTICS §8)."""
    if operation is None or operation.customer_param is None:
        return raw_path
    raw = raw_path.split("/")[1:]
    if len(raw) != len(operation.segments):
        return operation.template
    return "/" + "/".join(
        "{" + seg.text + "}" if seg.is_param and seg.text == operation.customer_param else value
        for seg, value in zip(operation.segments, raw, strict=True)
    )


UNKNOWN_SEGMENT = "{param}"
"""What a refused path's segment is recorded as when no operation's path has it literally."""


def path_literals(catalog: Sequence[Operation]) -> frozenset[str]:
    """The literal segments of the catalog's paths, as :func:`masked_path` compares them
    (decoded, case-folded)."""
    return frozenset(
        segment.text.casefold()
        for operation in catalog
        for segment in operation.segments
        if not segment.is_param
    )


def masked_path(raw_path: str, catalog: Sequence[Operation], literals: frozenset[str]) -> str:
    """A path no operation matched (another method, more or fewer segments, a trailing
    ``/``, an empty or ``.`` segment, ``;params``), as the record keeps it. A segment
    standing where some operation's path names its customer, after the same literal
    segments, is replaced by that parameter (``{customer_id}``); every other segment that
    is not a literal segment of some operation's path (``literals``: :func:`path_literals`)
    is replaced by :data:`UNKNOWN_SEGMENT`. A customer asked for by a refused path is then
    not written in plain text, however the path is bent (a ``//`` shifts every segment
    after it). Segments compare as an upstream might read them: decoded, in any case."""
    raw = raw_path.split("/")[1:]
    for operation in catalog:
        if operation.customer_param is None:
            continue
        for index, segment in enumerate(operation.segments[: len(raw)]):
            if not segment.is_param:
                if unquote(raw[index]).casefold() != segment.text.casefold():
                    break
            elif segment.text == operation.customer_param:
                raw[index] = "{" + segment.text + "}"
                break
    return "/" + "/".join(
        value
        if value in ("", ".", "..")
        or (value.startswith("{") and value.endswith("}"))
        or unquote(value).casefold() in literals
        else UNKNOWN_SEGMENT
        for value in raw
    )


def outcome_of(ctx: RequestContext) -> str:
    """PCI 10.2.2.4, in the mapping trail's words: ``ok`` (success), ``refused`` (a rule
    said no) or ``failed`` (a dependency, the upstream or the answer's stream broke)."""
    if ctx.denial is None:
        return "failed" if ctx.stream_error else "ok"
    return "failed" if isinstance(ctx.denial, _FAILURES) else "refused"


def request_record(
    ctx: RequestContext,
    *,
    event: str = "request",
    route: Operation | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    """Every field of a request's record; values are redacted by the sink, not here.

    ``route`` is the operation the path matches when the request was refused before it was
    resolved (step 3): only its template is used, to keep the customer out of the path.
    ``path`` is the path to record when the caller has made it already (:func:`masked_path`)."""
    principal, operation, mapping, minted = ctx.principal, ctx.operation, ctx.mapping, ctx.minted
    denial = ctx.denial
    peer = ctx.request.remote
    if path is None:
        path = audited_path(ctx.raw_path, operation or route)
    record: dict[str, Any] = {
        "time": iso_time(ctx.received_at),
        "event": event,
        "audit_id": ctx.audit_id,
        "request_id": ctx.request_id,
        "decision": "deny" if denial is not None else "allow",
        "code": denial.code if denial is not None else None,
        "reason": denial.reason if denial is not None else None,
        "status": denial.status if denial is not None else ctx.upstream_status,
        "method": ctx.method,
        "path": path,
        "operation": operation.id if operation else None,
        "scope": operation.scope if operation else None,
        "principal": principal.subject if principal else None,
        "authenticator": principal.authenticator if principal else None,
        "cloud_account": principal.cloud_account if principal else None,
        "mapping_id": mapping.id if mapping else None,
        "customer": mapping.customer_index if mapping else None,
        "session": ctx.session,
        "jti": minted.jti if minted else None,
        "kid": minted.kid if minted else None,
        "upstream_status": ctx.upstream_status,
        "stream_error": ctx.stream_error,
        "latency_ms": round((time.monotonic() - ctx.started) * 1000, 3),
        "client_ip": peer,
        "origin": ctx.request.headers.get("Origin"),
        # PCI DSS 10.2.2 (dragoman.audit.pci): who, success or failure, from where, on what.
        "user": principal.subject if principal else None,
        "outcome": outcome_of(ctx),
        "source": peer,
        "resource": f"{ctx.method} {path}",
    }
    if ctx.would_deny:  # only then: records of rules all enforcing keep their shape
        record["would_deny"] = [entry.as_record() for entry in ctx.would_deny]
    return record
