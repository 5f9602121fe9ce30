"""The Stage protocol: one step of the request pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dragoman.pipeline.context import RequestContext


class Stage(Protocol):
    """A pipeline step. It reads and fills the context, or raises a Denial to stop."""

    name: str

    async def __call__(self, ctx: RequestContext) -> None: ...


def guard_stages(stages: Sequence[Stage], expected: tuple[str, ...], who: str) -> tuple[Stage, ...]:
    """The pipeline's own first stages, for an endpoint the proxy answers itself; refuses at
    start a wiring that would skip or reorder one (authentication before anything else)."""
    names = tuple(stage.name for stage in stages)
    if names != expected:
        raise ValueError(f"{who} needs the stages {expected} in order, not {names}")
    return tuple(stages)
