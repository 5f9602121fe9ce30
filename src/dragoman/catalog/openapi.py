"""Import an operation catalog from an OpenAPI 3.0/3.1 document (JSON or YAML).

One operation per path and method, sorted by path then method. Names come from
:mod:`dragoman.catalog.naming`. Parameters and JSON request-body properties named like a
customer id (``customer``, ``customer_id``, ``customerId``, ``X-Customer-Id``, ``cust_id``,
``customer_ref``...), and path parameters right after a ``customer``/``customers`` segment,
become enforced customer bindings, every one of them a *candidate* for a person to review. A
path that a catalog template cannot express (a parameter filling part of a segment, a trailing
``/``...), a path item behind a ``$ref`` that cannot be followed, and a method the catalog has
no place for (OPTIONS, TRACE, a method key not in lower case) are skipped and listed, never
dropped silently. Only local ``$ref``s (``#/...``) are followed, each chain once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import yaml
from pydantic import ValidationError

from dragoman.catalog import naming
from dragoman.catalog.template import Segment, parse_template
from dragoman.settings import CustomerBindingSettings, OperationSettings, RiskTier

_METHODS = ("delete", "get", "head", "options", "patch", "post", "put", "trace")
_UNSUPPORTED = frozenset({"options", "trace"})
_CUSTOMER = re.compile(r"^(customer|cust)(id)?$")
_ID_WORDS = frozenset(
    {"id", "identifier", "ref", "reference", "uuid", "guid", "number", "num", "no", "nr", "key",
     "code"}
)  # fmt: skip
_CUSTOMER_SEGMENTS = frozenset({"customer", "customers"})
_MAX_DEPTH = 16
_BRACED = re.compile(r"\{([^{}/]*)\}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(Exception):
    """The document cannot be read, is not OpenAPI 3.x, or the import was asked for
    something it does not contain; the message is one line."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An operation of the document that the catalog cannot express, and why."""

    method: str
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Imported:
    """The catalog derived from one document; every customer binding is a candidate."""

    title: str
    operations: tuple[OperationSettings, ...]
    skipped: tuple[Skipped, ...]

    @property
    def candidates(self) -> int:
        return sum(len(op.customer) for op in self.operations)


def is_customer_name(name: str) -> bool:
    """``customer``, ``customer_id``, ``customerId``, ``Customer-Id``, ``cust_id``, and the word
    ``customer`` in snake, kebab or camel case, last or followed by one word of an identifier
    (``X-Customer-Id``, ``customer_ref``, ``customerUuid``, ``customer_number``); not
    ``customer_name``, ``customers`` or ``X-Cust-Id``."""
    if _CUSTOMER.match(re.sub(r"[^a-z0-9]", "", name.lower())) is not None:
        return True
    words = naming.snake(name).split("_")
    return any(
        word == "customer"
        and (i == len(words) - 1 or (i == len(words) - 2 and words[-1] in _ID_WORDS))
        for i, word in enumerate(words)
    )


def load_document(path: Path) -> dict[str, Any]:
    """Read an OpenAPI 3.x document: JSON for ``.json`` files, YAML otherwise."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"{path}: cannot read it ({reason})") from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"{path}: not valid JSON or YAML ({first})") from None
    try:
        return check_document(document)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def check_document(document: Any) -> dict[str, Any]:
    """The document, if it is an OpenAPI 3.x object with ``paths``."""
    if not isinstance(document, dict):
        raise SpecError("not an OpenAPI document (the top level is not an object)")
    if "swagger" in document:
        raise SpecError("Swagger 2.0 is not supported; convert it to OpenAPI 3 first")
    version = document.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        raise SpecError("not an OpenAPI 3.x document (no 'openapi: 3.x' field)")
    if not isinstance(document.get("paths"), dict):
        raise SpecError("an OpenAPI document without 'paths'")
    return document


def import_openapi(
    document: Mapping[str, Any], tiers: Mapping[str, RiskTier] | None = None
) -> Imported:
    """The catalog of ``document``; ``tiers`` (operation id -> tier) overrides derived tiers."""
    doc = check_document(document)
    refs = _Refs(doc)
    found: list[_Found] = []
    skipped: list[Skipped] = []
    for path in sorted(doc["paths"]):
        raw = doc["paths"][path]
        item, _ = refs.deref(raw, frozenset())
        if not isinstance(item, dict):
            if raw is not None:
                skipped.append(Skipped("*", path, _unreadable(raw)))
            continue
        methods = [m for m in _METHODS if isinstance(item.get(m), dict)]
        cased = sorted(
            k for k in item if isinstance(k, str) and k.lower() in _METHODS and k not in _METHODS
        )
        skipped.extend(
            Skipped(k.upper(), path, f"method key {k!r} is not in lower case") for k in cased
        )
        try:
            segments = _template(path)
        except ValueError as exc:
            skipped.extend(Skipped(m.upper(), path, str(exc)) for m in methods)
            continue
        for method in methods:
            if method in _UNSUPPORTED:
                skipped.append(Skipped(method.upper(), path, "a catalog has no such method"))
                continue
            found.append(_Found(path, method.upper(), item[method], item, segments))
    operations = _named(found, refs, dict(tiers or {}))
    info = doc.get("info")
    title = str(info.get("title", "")) if isinstance(info, dict) else ""
    return Imported(title, tuple(operations), tuple(skipped))


def _unreadable(raw: Any) -> str:
    """Why the path item ``raw`` gives no operations to import."""
    ref = raw.get("$ref") if isinstance(raw, dict) else None
    if isinstance(ref, str) and not ref.startswith("#"):
        return f"path item $ref {ref!r} is not local (only '#/...' refs are followed)"
    if isinstance(ref, str):
        return f"path item $ref {ref!r} does not lead to a path item"
    return "the path item is not an object"


def _template(path: str) -> tuple[Any, ...]:
    for name in _BRACED.findall(path):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"parameter name {name!r} is not an identifier")
    return parse_template(path)


@dataclass(frozen=True, slots=True)
class _Found:
    path: str
    method: str
    operation: dict[str, Any]
    item: dict[str, Any]
    segments: tuple[Any, ...]

    @property
    def operation_id(self) -> str | None:
        value = self.operation.get("operationId")
        return value if isinstance(value, str) else None

    @property
    def literals(self) -> list[str]:
        return [s.text for s in self.segments if not s.is_param]


def _named(found: list[_Found], refs: _Refs, tiers: dict[str, RiskTier]) -> list[OperationSettings]:
    ids = naming.unique([naming.operation_id(f.operation_id, f.method, f.path) for f in found])
    unknown = sorted(set(tiers) - set(ids))
    if unknown:
        raise SpecError(f"no imported operation has the id {unknown[0]!r} (tier override)")
    resources, actions, fallbacks = [], [], []
    for f in found:
        tags = [t for t in f.operation.get("tags", []) if isinstance(t, str)]
        is_item = bool(f.segments) and f.segments[-1].is_param
        fallback = naming.method_action(f.method, is_item)
        resources.append(naming.resource(tags, f.literals))
        actions.append(naming.id_action(f.operation_id) or fallback)
        fallbacks.append(fallback)
    scopes = naming.scopes(resources, actions, fallbacks)
    operations = []
    for f, op_id, scope in zip(found, ids, scopes, strict=True):
        words = [op_id, f.operation_id or "", *f.literals]
        try:
            operations.append(
                OperationSettings(
                    id=op_id,
                    method=cast(Any, f.method),
                    path=f.path,
                    scope=scope,
                    tier=tiers.get(op_id, naming.tier(f.method, words)),
                    customer=_bindings(f, refs),
                )
            )
        except ValidationError as exc:  # pragma: no cover - names are built to validate
            raise SpecError(f"{f.method} {f.path}: {exc.errors()[0]['msg']}") from None
    return operations


def _bindings(found: _Found, refs: _Refs) -> list[CustomerBindingSettings]:
    places: dict[tuple[str, str], CustomerBindingSettings] = {}

    def add(location: str, name: str) -> None:
        key = (location, name.lower() if location == "header" else name)
        if key not in places:
            places[key] = CustomerBindingSettings(location=cast(Any, location), name=name)

    template_params = [s.text for s in found.segments if s.is_param]
    previous: Segment | None = None
    for segment in found.segments:
        after_customers = (
            previous is not None
            and not previous.is_param
            and previous.text.lower() in _CUSTOMER_SEGMENTS
        )
        if segment.is_param and (after_customers or is_customer_name(segment.text)):
            add("path", segment.text)
        previous = segment
    for param in _parameters(found, refs):
        name, where = param.get("name"), param.get("in")
        if not isinstance(name, str) or not is_customer_name(name):
            continue
        if where == "path" and name in template_params:
            add("path", name)
        elif where in ("query", "header"):
            add(str(where), name)
    body, seen = refs.deref(found.operation.get("requestBody"), frozenset())
    content = body.get("content") if isinstance(body, dict) else None
    if isinstance(content, dict):
        for media in sorted(content):
            entry = content[media]
            if _is_json(media) and isinstance(entry, dict) and "schema" in entry:
                for pointer in _pointers(entry["schema"], refs, "", seen, 0):
                    add("body", pointer)
    return list(places.values())


def _parameters(found: _Found, refs: _Refs) -> list[dict[str, Any]]:
    """Path-item parameters, overridden by the operation's own (same name and place)."""
    merged: dict[tuple[Any, Any], dict[str, Any]] = {}
    for source in (found.item.get("parameters"), found.operation.get("parameters")):
        for raw in source if isinstance(source, list) else []:
            param, _ = refs.deref(raw, frozenset())
            if isinstance(param, dict):
                merged[(param.get("name"), param.get("in"))] = param
    return list(merged.values())


def _is_json(media: str) -> bool:
    kind = media.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _pointers(
    schema: Any, refs: _Refs, prefix: str, seen: frozenset[str], depth: int
) -> Iterator[str]:
    """JSON pointers of the customer-like properties a request body may carry."""
    node, seen = refs.deref(schema, seen)
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return
    for name, (prop, prop_seen) in _properties(node, refs, seen).items():
        pointer = f"{prefix}/{name.replace('~', '~0').replace('/', '~1')}"
        if not is_customer_name(name):
            yield from _pointers(prop, refs, pointer, prop_seen, depth + 1)
        elif not _is_object(prop):
            yield pointer
        elif "id" in _properties(prop, refs, prop_seen):
            yield f"{pointer}/id"


def _properties(
    node: dict[str, Any], refs: _Refs, seen: frozenset[str], depth: int = 0
) -> dict[str, tuple[dict[str, Any], frozenset[str]]]:
    """Writable properties (name -> resolved schema), those of allOf/oneOf/anyOf included,
    in name order."""
    found: dict[str, tuple[dict[str, Any], frozenset[str]]] = {}
    if depth > _MAX_DEPTH:
        return found
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in node.get(key, []) if isinstance(node.get(key), list) else []:
            resolved, sub_seen = refs.deref(sub, seen)
            if isinstance(resolved, dict):
                found.update(_properties(resolved, refs, sub_seen, depth + 1))
    props = node.get("properties")
    for name, raw in props.items() if isinstance(props, dict) else []:
        prop, prop_seen = refs.deref(raw, seen)
        read_only = isinstance(raw, dict) and raw.get("readOnly") is True
        if isinstance(prop, dict) and not read_only and not prop.get("readOnly"):
            found[str(name)] = (prop, prop_seen)
    return dict(sorted(found.items()))


def _is_object(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return (
        kind == "object"
        or (isinstance(kind, list) and "object" in kind)
        or any(k in schema for k in ("properties", "allOf", "oneOf", "anyOf"))
    )


class _Refs:
    """Local ``$ref`` resolution with cycle protection: a chain never follows one ref twice."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def deref(self, node: Any, seen: frozenset[str]) -> tuple[Any, frozenset[str]]:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if not ref.startswith("#") or ref in seen:
                return None, seen
            seen = seen | {ref}
            node = self._lookup(ref)
        return node, seen

    def _lookup(self, ref: str) -> Any:
        node: Any = self.document
        for raw in unquote(ref[1:]).split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        return node
