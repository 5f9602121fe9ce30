"""Strict reading of a query parameter that names the customer.

Query strings have no single grammar: servers differ on ``;`` as a separator, on ``+`` as a
space, on which of two equal names wins, on case, on percent-encoded names, on ``name[]``
array forms, and PHP even turns ``.`` and spaces in names into ``_``. A customer parameter
is accepted only when every reading agrees. Any piece of the query (split on ``&`` and
``;``) whose name could be read as the binding's name is a *candidate*. Its name is
decoded (percent-escapes, ``+``), cut at the first NUL (PHP stops there) and case-folded;
then every character that is not an ASCII letter or digit is left out (PHP reads ``.``,
blanks and an unclosed ``[`` as ``_`` and drops leading blanks, Rack 2 drops leading
``[``/``]`` and a trailing ``]``, qs reads ``[name]`` as ``name``). A name reduced so that
equals the binding's reduced name is a candidate, and so is one whose part before any
``[`` or ``]`` does (``name[]``, ``name[0]``, ``name]x``: an array or nested form of it).
A name of letters and digits only is read as written by every server, so it is a
candidate only when it equals the binding's name in another case (``customerid`` is not
``customer_id``, ``method`` is not ``_method``). The query names the customer
unambiguously only when there is exactly one candidate, spelled exactly as the binding
names it, alone between two ``&``, and its value decodes to the same text whether ``+`` is
a space or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NOT_ALNUM = re.compile(r"[^0-9a-z]")
_BRACKET = re.compile(r"[\[\]]")


def _folded(name: str) -> str:
    """``name`` decoded, cut at its first NUL and case-folded."""
    return unquote_plus(name, errors="replace").partition("\0")[0].casefold()


def _reduced(folded: str) -> str:
    return _NOT_ALNUM.sub("", folded)


def _reads_as(raw_name: str, wanted: str) -> bool:
    """Whether some server could read ``raw_name`` as the parameter whose folded name is
    ``wanted`` (or as an array or nested form of it)."""
    folded = _folded(raw_name)
    if not _NOT_ALNUM.search(folded):
        return folded == wanted
    target = _reduced(wanted)
    cuts = [m.start() for m in _BRACKET.finditer(folded)]
    return any(_reduced(folded[:cut]) == target for cut in (*cuts, len(folded)))


@dataclass(frozen=True, slots=True)
class QueryReading:
    """What the query says about one parameter."""

    value: str | None
    """The decoded value when the parameter appears exactly once, unambiguously."""
    ambiguous: bool = False
    """The parameter appears more than once, or in a form readers may disagree on."""


def read_parameter(query: str, name: str) -> QueryReading:
    """How the raw ``query`` names parameter ``name``."""
    wanted = _folded(name)
    found: list[tuple[str, str, bool]] = []  # (raw name, raw value, alone between &)
    for pair in query.split("&"):
        pieces = pair.split(";")
        for piece in pieces:
            raw_name, equals, raw_value = piece.partition("=")
            if _reads_as(raw_name, wanted):
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
