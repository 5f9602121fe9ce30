"""Route matching, compiled once at start.

Requests are matched on their raw path, split into segments and percent-decoded one segment
at a time, so an encoded ``/`` can never move a segment boundary. Paths that a server or the
upstream might read differently from us are refused outright rather than normalised: dot
segments (``..;`` and ``.;`` too, which servlet containers read as dot segments once they
drop the ``;`` parameters), empty segments, encoded slashes or backslashes, NUL, bad
escapes. At each segment a literal beats a parameter, so exact templates win over
parameterised ones.

The proxy's own paths (``/livez``, ``/readyz``, ``/.well-known/jwks.json``, everything under
``/_dragoman/``: :data:`~dragoman.settings.catalog.PROXY_OWN_PATHS`) are no operation, whatever
the method: a template with parameters (``/{name}``, ``/{tenant}/registration``) would
otherwise match them, and a request the proxy does not answer itself there (``POST /readyz``,
``POST /_dragoman/registration`` with registration off) would go upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from dragoman.catalog.model import Operation
from dragoman.settings.catalog import PROXY_OWN_PATHS, PROXY_OWN_PREFIXES, proxy_answers


class InvalidPath(ValueError):
    """The request path is ambiguous or malformed; it is refused, never normalised."""


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    operations: dict[str, Operation] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Match:
    operation: Operation
    params: dict[str, str]


_HEX = frozenset("0123456789abcdefABCDEF")
_FORBIDDEN_DECODED = frozenset({"/", "\\", "\x00"})
# Visible ASCII without '%' and '\\': nothing to decode and nothing to refuse inside a
# segment, so the per-character checks below can be skipped (most requests look like this).
_PLAIN = re.compile(r"/[\x21-\x24\x26-\x5b\x5d-\x7e]*")
# The first segments of the proxy's own paths: only a path starting with one is looked at.
_OWN_FIRST = frozenset(p.split("/")[1] for p in (*PROXY_OWN_PATHS, *PROXY_OWN_PREFIXES))


def split_path(raw_path: str) -> list[str]:
    """Decoded segments of a raw (still percent-encoded) path; raise InvalidPath."""
    if not raw_path.startswith("/"):
        raise InvalidPath("the path must start with '/'")
    if raw_path == "/":
        return []
    if _PLAIN.fullmatch(raw_path):
        plain = raw_path[1:].split("/")
        if "" in plain:
            raise InvalidPath("empty path segment")
        if "." in plain or ".." in plain or (";" in raw_path and any(map(_dotted, plain))):
            raise InvalidPath("dot segment or encoded separator in the path")
        return plain
    return split_decoding(raw_path)


def split_decoding(raw_path: str) -> list[str]:
    """split_path without its fast path: every segment decoded and checked."""
    segments = []
    for raw in raw_path[1:].split("/"):
        if raw == "":
            raise InvalidPath("empty path segment")
        decoded = _decode_segment(raw) if "%" in raw else raw
        if _dotted(decoded) or any(c in _FORBIDDEN_DECODED for c in decoded):
            raise InvalidPath("dot segment or encoded separator in the path")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
            raise InvalidPath("control character in the path")
        segments.append(decoded)
    return segments


def _dotted(segment: str) -> bool:
    """A dot segment, with or without ``;`` parameters (``..;x`` is ``..`` to Tomcat)."""
    return segment.partition(";")[0] in (".", "..")


def _decode_segment(raw: str) -> str:
    index = raw.find("%")
    while index != -1:
        if index + 2 >= len(raw) or raw[index + 1] not in _HEX or raw[index + 2] not in _HEX:
            raise InvalidPath("malformed percent-escape in the path")
        index = raw.find("%", index + 3)
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidPath("percent-escapes that are not UTF-8") from None


class RouteMatcher:
    """Finds the catalog operation of a request; built once from the catalog."""

    def __init__(self, operations: list[Operation]) -> None:
        self._root = _Node()
        for operation in operations:
            node = self._root
            for segment in operation.segments:
                if segment.is_param:
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(segment.text, _Node())
            if operation.method in node.operations:
                raise ValueError(f"two operations for {operation.method} {operation.template}")
            node.operations[operation.method] = operation

    def match(self, method: str, raw_path: str) -> Match | None:
        """The operation for this request, or None (as for one of the proxy's own paths).
        Raises InvalidPath for ambiguous paths."""
        segments = split_path(raw_path)
        if segments and segments[0] in _OWN_FIRST and proxy_answers("/" + "/".join(segments)):
            return None
        operation = self._walk(self._root, segments, 0, method)
        if operation is None:
            return None
        params = {
            seg.text: value
            for seg, value in zip(operation.segments, segments, strict=True)
            if seg.is_param
        }
        return Match(operation, params)

    def _walk(self, node: _Node, segments: list[str], depth: int, method: str) -> Operation | None:
        if depth == len(segments):
            return node.operations.get(method)
        segment = segments[depth]
        literal = node.literals.get(segment)
        if literal is not None:
            found = self._walk(literal, segments, depth + 1, method)
            if found is not None:
                return found
        if node.param is not None:
            return self._walk(node.param, segments, depth + 1, method)
        return None
