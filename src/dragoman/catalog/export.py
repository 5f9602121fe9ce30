"""An imported catalog as TOML: ``[[catalog.operations]]`` tables, ready to paste into a
settings file, each candidate customer binding under a ``# review:`` comment."""

from __future__ import annotations

import json

from dragoman.catalog.openapi import Imported

REVIEW = "# review: candidate customer binding"


def _string(value: str) -> str:
    # A JSON string (ASCII, escaped) is a valid TOML basic string.
    return json.dumps(value)


def catalog_toml(imported: Imported, source: str) -> str:
    """The TOML text; the same ``imported`` and ``source`` always give the same bytes."""
    title = f" ({imported.title})" if imported.title else ""
    lines = [
        f"# Operation catalog imported from {source}{title} by `dragoman catalog import`.",
        "# Check every scope and tier; keep, change or delete every binding marked",
        f'# "{REVIEW}" (found by its name only).',
    ]
    if imported.skipped:
        lines.append("# Skipped, a catalog path cannot express them:")
        lines.extend(f"#   {s.method} {s.path}: {s.reason}" for s in imported.skipped)
    for op in imported.operations:
        lines += [
            "",
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
