"""The operation catalog: method + path template -> operation -> scope."""

from __future__ import annotations

from dataclasses import dataclass

from dragoman.catalog.template import Segment, parse_template
from dragoman.settings import CatalogSettings


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation the upstream serves, and the single scope a token for it carries."""

    id: str
    method: str
    template: str
    scope: str
    customer_param: str | None
    segments: tuple[Segment, ...]

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD")


def operations_from_settings(settings: CatalogSettings) -> list[Operation]:
    return [
        Operation(
            id=op.id,
            method=op.method,
            template=op.path,
            scope=op.scope,
            customer_param=op.customer_param,
            segments=parse_template(op.path),
        )
        for op in settings.operations
    ]
