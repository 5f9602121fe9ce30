"""Step 1 as a pipeline stage: the first authenticator that applies decides."""

from __future__ import annotations

from collections.abc import Sequence

from dragoman.identity.base import Authenticator, NotMine, bearer_token
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import Unauthenticated


class AuthenticateStage:
    name = "authenticate"

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        if not authenticators:
            raise ValueError("at least one authenticator is needed")
        self._authenticators = tuple(authenticators)

    async def __call__(self, ctx: RequestContext) -> None:
        for authenticator in self._authenticators:
            outcome = await authenticator.authenticate(ctx.request)
            if not isinstance(outcome, NotMine):
                ctx.principal = outcome
                return
        if bearer_token(ctx.request) is not None:
            raise Unauthenticated(
                "issuer_unknown", "The credential is not from a configured identity provider."
            )
        raise Unauthenticated("credentials_missing", "Send your identity token as a bearer token.")
