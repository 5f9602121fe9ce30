"""Compare two catalogs, each an OpenAPI document or a TOML catalog (a settings file, or
the output of ``dragoman catalog import``).

Operations are matched by id. The differences come out in a fixed order: removed, added,
then per changed operation (by id) its route, scope, tier and customer bindings::

    removed payment_tokens.delete: DELETE /v3/vault/payment-tokens/{id} payment_tokens:delete
    added payment_tokens.update: PATCH /v3/vault/payment-tokens/{id} payment_tokens:update
    moved payment_tokens.get: GET /v3/vault/payment-tokens/{id} -> GET /v3/tokens/{id}
    re-scoped payment_tokens.get: payment_tokens:read -> vault:read
    re-tiered payment_tokens.create: change -> money
    bindings payment_tokens.create: body /customer/id -> none
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dragoman.catalog.openapi import SpecError, import_openapi, load_document
from dragoman.settings import CatalogSettings, OperationSettings


def load_catalog(path: Path) -> list[OperationSettings]:
    """The operations of ``path``: a TOML catalog (``.toml``) or an OpenAPI document (any
    other name). Raises :class:`SpecError` (one line) when it cannot be read or is invalid."""
    if path.suffix.lower() != ".toml":
        return list(import_openapi(load_document(path)).operations)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"{path}: cannot read it ({reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    section: Any = data.get("catalog", {})
    operations = section.get("operations", []) if isinstance(section, dict) else None
    if not isinstance(operations, list):
        raise SpecError(f"{path}: catalog.operations is not a list of tables")
    try:
        return CatalogSettings.model_validate({"operations": operations}).operations
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in ("catalog", *error["loc"]))
        raise SpecError(f"{path}: {where}: {error['msg']}") from None


def _bindings(op: OperationSettings) -> str:
    places = sorted(
        (b.location, b.name.lower() if b.location == "header" else b.name, b.mode, b.report_only)
        for b in op.bindings
    )
    if not places:
        return "none"
    return ", ".join(
        f"{loc} {name}"
        + (" (inject)" if mode == "inject" else "")
        + (" (report-only)" if report_only else "")
        for loc, name, mode, report_only in places
    )


def _summary(op: OperationSettings) -> str:
    return f"{op.method} {op.path} {op.scope}"


def diff_catalogs(old: Sequence[OperationSettings], new: Sequence[OperationSettings]) -> list[str]:
    """Every difference from ``old`` to ``new``, one line each; empty when they are equal."""
    before = {op.id: op for op in old}
    after = {op.id: op for op in new}
    lines = [f"removed {i}: {_summary(before[i])}" for i in sorted(before.keys() - after.keys())]
    lines += [f"added {i}: {_summary(after[i])}" for i in sorted(after.keys() - before.keys())]
    for i in sorted(before.keys() & after.keys()):
        a, b = before[i], after[i]
        if (a.method, a.path) != (b.method, b.path):
            lines.append(f"moved {i}: {a.method} {a.path} -> {b.method} {b.path}")
        if a.scope != b.scope:
            lines.append(f"re-scoped {i}: {a.scope} -> {b.scope}")
        if a.effective_tier != b.effective_tier:
            lines.append(f"re-tiered {i}: {a.effective_tier} -> {b.effective_tier}")
        if _bindings(a) != _bindings(b):
            lines.append(f"bindings {i}: {_bindings(a)} -> {_bindings(b)}")
    return lines
