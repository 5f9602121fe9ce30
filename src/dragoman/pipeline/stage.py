"""The Stage protocol: one step of the request pipeline."""

from __future__ import annotations

from typing import Protocol

from dragoman.pipeline.context import RequestContext


class Stage(Protocol):
    """A pipeline step. It reads and fills the context, or raises a Denial to stop."""

    name: str

    async def __call__(self, ctx: RequestContext) -> None: ...
