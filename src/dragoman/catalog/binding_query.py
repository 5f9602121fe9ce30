"""Strict reading of a query parameter that names the customer.

Query strings have no single grammar: servers differ on ``;`` as a separator, on ``+`` as a
space, on which of two equal names wins, on case, on percent-encoded names, on ``name[]``
array forms, and PHP even turns ``.`` and spaces in names into ``_``. A customer parameter
is accepted only when every reading agrees. Any piece of the query (split on ``&`` and
``;``) whose name could be read as the binding's name is a *candidate*: its name decoded
(percent-escapes, ``+``), case-folded, leading blanks dropped, ``.`` and blanks as ``_``,
and cut at the first ``[``. The query names the customer unambiguously only when there is
exactly one candidate, spelled exactly as the binding names it, alone between two ``&``,
and its value decodes to the same text whether ``+`` is a space or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _canonical(name: str) -> str:
    decoded = unquote_plus(name, errors="replace").lstrip(" ").casefold()
    return decoded.partition("[")[0].replace(".", "_").replace(" ", "_")


@dataclass(frozen=True, slots=True)
class QueryReading:
    """What the query says about one parameter."""

    value: str | None
    """The decoded value when the parameter appears exactly once, unambiguously."""
    ambiguous: bool = False
    """The parameter appears more than once, or in a form readers may disagree on."""


def read_parameter(query: str, name: str) -> QueryReading:
    """How the raw ``query`` names parameter ``name``."""
    wanted = _canonical(name)
    found: list[tuple[str, str, bool]] = []  # (raw name, raw value, alone between &)
    for pair in query.split("&"):
        pieces = pair.split(";")
        for piece in pieces:
            raw_name, equals, raw_value = piece.partition("=")
            if _canonical(raw_name) == wanted:
                found.append((raw_name, raw_value if equals else "", len(pieces) == 1))
    if not found:
        return QueryReading(None)
    if len(found) > 1:
        return QueryReading(None, ambiguous=True)
    raw_name, raw_value, alone = found[0]
    if raw_name != name or not alone or _ESCAPE.search(raw_value):
        return QueryReading(None, ambiguous=True)
    try:
        as_form = unquote_plus(raw_value, errors="strict")
        as_uri = unquote(raw_value, errors="strict")
    except UnicodeDecodeError:
        return QueryReading(None, ambiguous=True)
    if as_form != as_uri:
        return QueryReading(None, ambiguous=True)
    return QueryReading(as_uri)


def with_parameter(query: str, name: str, value: str) -> str:
    """``query`` with ``name=value`` appended (the parameter is known to be absent)."""
    pair = f"{quote(name, safe='')}={quote(value, safe='')}"
    return f"{query}&{pair}" if query else pair
