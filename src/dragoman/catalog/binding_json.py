"""Strict JSON for body bindings: parse without ambiguity, find and place the customer by an
RFC 6901 pointer.

A body the proxy checks must read the same to the upstream. So a document is refused when
two parsers could disagree about it: a member name twice in one object (at any depth, also
when spelled with different escapes or in another case), ``NaN``/``Infinity``, a number
beyond the range of a double or an integer too long to convert, an escaped lone surrogate,
bytes that are not UTF-8 (a byte-order mark included).
"""

from __future__ import annotations

import json
import math
from typing import Any


class AmbiguousJson(ValueError):
    """The document names a member twice in one object."""


class InvalidJson(ValueError):
    """The body is not one strict JSON document."""


class PointerUnplaceable(ValueError):
    """The pointer cannot be written into this document (a parent is not an object)."""


class PointerAmbiguous(ValueError):
    """The document has a member that a reader ignoring case takes for one the pointer
    writes (``Customer`` beside the ``customer`` placed)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    folded: set[str] = set()
    for name, value in pairs:
        fold = name.casefold()
        if fold in folded:
            # "customer" and "Customer" are one member to a reader that ignores case
            # (ASP.NET Core's, Jackson's with that option), the last one winning there.
            raise AmbiguousJson(name)
        folded.add(fold)
        found[name] = value
    return found


def _no_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJson("number out of range")
    return value


def parse_strict(body: bytes) -> Any:
    """The document in ``body``; raise AmbiguousJson or InvalidJson."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("not UTF-8") from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except (AmbiguousJson, InvalidJson):
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJson(exc.msg) from None
    except ValueError:  # an integer too long to convert
        raise InvalidJson("number too long") from None
    except RecursionError:
        raise InvalidJson("nested too deeply") from None
    try:
        serialise(document)
    except UnicodeEncodeError:
        # An escaped lone surrogate: parsers drop, replace or refuse it, so two names may
        # become one elsewhere.
        raise InvalidJson("lone surrogate") from None
    return document


def serialise(document: Any) -> bytes:
    """Compact UTF-8 JSON (what an injected body is forwarded as)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def pointer_tokens(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 pointer (``""`` is the whole document)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON pointer")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(token: str, length: int) -> int | None:
    """The array index a token names (RFC 6901 §4: no leading zeros, no sign), or None."""
    if not token.isascii() or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        return None
    index = int(token)
    return index if index < length else None


_ABSENT = object()


def resolve(document: Any, tokens: list[str]) -> Any:
    """The value the pointer names, or ``ABSENT`` when it names nothing."""
    current = document
    for token in tokens:
        if isinstance(current, dict):
            if token not in current:
                return _ABSENT
            current = current[token]
        elif isinstance(current, list):
            index = _index(token, len(current))
            if index is None:
                return _ABSENT
            current = current[index]
        else:
            return _ABSENT
    return current


ABSENT: Any = _ABSENT
"""What :func:`resolve` returns when the pointer names nothing."""


def place(document: Any, tokens: list[str], value: str) -> Any:
    """``document`` with ``value`` at the pointer, missing objects on the way created.

    Only object members are created; a parent that is an array, a scalar or absent from an
    array is refused (PointerUnplaceable) rather than guessed at."""
    if not tokens:
        return value
    if not isinstance(document, dict):
        raise PointerUnplaceable("a parent of the customer member is not an object")
    parent: dict[str, Any] = document
    for token in tokens[:-1]:
        _refuse_case_variant(parent, token)
        child = parent.setdefault(token, {})
        if not isinstance(child, dict):
            raise PointerUnplaceable("a parent of the customer member is not an object")
        parent = child
    _refuse_case_variant(parent, tokens[-1])
    parent[tokens[-1]] = value
    return document


def _refuse_case_variant(parent: dict[str, Any], token: str) -> None:
    # "Customer" left beside the "customer" placed: a reader that ignores case (ASP.NET
    # Core's, Jackson's with that option) may take the caller's instead of dragoman's.
    folded = token.casefold()
    if any(name != token and name.casefold() == folded for name in parent):
        raise PointerAmbiguous("a member differs from the customer's only in case")
