"""An imported catalog as TOML: ``[[catalog.operations]]`` tables, ready to paste into a
settings file, each candidate customer binding under a ``# review:`` comment, and each write
without one under another.

Text from the document (its title, a skipped path, a binding name) is attacker-controlled: in a
string it is a TOML basic string, in a comment (or on a terminal) it is written by
:func:`comment_text`, so it can never end the comment or the string it is in."""

from __future__ import annotations

import unicodedata

from dragoman.catalog.openapi import Imported

REVIEW = "# review: candidate customer binding"
NO_BINDING = "# review: no customer binding"
_READS = frozenset({"GET", "HEAD"})

# What a TOML basic string must escape: '"', '\\' and the control characters but tab.
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
# Characters that end a line, reorder or rewrite the text around them on a terminal or in an
# editor: line and paragraph separators and the bidirectional embeddings, overrides, isolates.
_INVISIBLE = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate (no Unicode scalar value) cannot be written
        return "\\uFFFD"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs") or char in _INVISIBLE


def _string(value: str) -> str:
    """``value`` as a TOML basic string: UTF-8 kept, only what TOML refuses escaped."""
    out = []
    for char in value:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif char != "\t" and _unsafe(char):
            out.append(_escape(char))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def comment_text(value: str) -> str:
    """``value`` safe on one comment or terminal line: as it is when it has no control or
    line-breaking character, no quote and no backslash; else as a quoted, escaped string."""
    if any(char in '"\\\t' or _unsafe(char) for char in value):
        return _string(value).replace("\t", "\\t")
    return value


def catalog_toml(imported: Imported, source: str) -> str:
    """The TOML text; the same ``imported`` and ``source`` always give the same bytes."""
    title = f" ({comment_text(imported.title)})" if imported.title else ""
    lines = [
        f"# Operation catalog imported from {comment_text(source)}{title} by"
        " `dragoman catalog import`.",
        "# Check every scope and tier; keep, change or delete every binding marked",
        f'# "{REVIEW}" (found by its name only), and add the bindings that',
        f'# operations marked "{NO_BINDING}" need.',
    ]
    if imported.skipped:
        lines.append("# Skipped, a catalog path cannot express them:")
        lines.extend(
            f"#   {comment_text(s.method)} {comment_text(s.path)}: {comment_text(s.reason)}"
            for s in imported.skipped
        )
    for op in imported.operations:
        lines.append("")
        if not op.customer and op.method not in _READS:
            lines.append(NO_BINDING)
        lines += [
            "[[catalog.operations]]",
            f"id = {_string(op.id)}",
            f"method = {_string(op.method)}",
            f"path = {_string(op.path)}",
            f"scope = {_string(op.scope)}",
            f"tier = {_string(op.effective_tier)}",
        ]
        for binding in op.customer:
            lines += [
                "",
                REVIEW,
                "[[catalog.operations.customer]]",
                f"location = {_string(binding.location)}",
                f"name = {_string(binding.name)}",
                f"mode = {_string(binding.mode)}",
            ]
    return "\n".join(lines) + "\n"
