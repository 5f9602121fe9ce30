"""Path templates: ``/v1/customers/{customer_id}/payment-methods``.

A parameter always fills one whole segment; literal segments match exactly (case-sensitive,
after percent-decoding). Templates are parsed once, at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")


@dataclass(frozen=True, slots=True)
class Segment:
    """One path segment of a template: a literal, or a named parameter."""

    text: str
    is_param: bool

    @property
    def name(self) -> str:
        return self.text


def parse_template(template: str) -> tuple[Segment, ...]:
    """Split a template into segments; raise ValueError naming what is wrong."""
    if not template.startswith("/"):
        raise ValueError("a path template starts with '/'")
    if template == "/":
        return ()
    body = template[1:]
    segments: list[Segment] = []
    seen: set[str] = set()
    for raw in body.split("/"):
        if raw == "":
            raise ValueError("a path template has no empty segments (no '//', no trailing '/')")
        param = _PARAM.match(raw)
        if param is not None:
            name = param.group(1)
            if name in seen:
                raise ValueError(f"parameter {name!r} appears twice")
            seen.add(name)
            segments.append(Segment(name, True))
        elif "{" in raw or "}" in raw:
            raise ValueError(f"segment {raw!r}: a parameter fills a whole segment, like '{{id}}'")
        elif raw in (".", "..") or _LITERAL.match(raw) is None:
            raise ValueError(f"segment {raw!r} is not a plain path segment")
        else:
            segments.append(Segment(raw, False))
    return tuple(segments)
