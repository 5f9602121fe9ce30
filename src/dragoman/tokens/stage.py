"""Step 6 as a pipeline stage: mint the one token this request is forwarded with."""

from __future__ import annotations

from dragoman.keys.provider import KeyUnavailableError
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import KeyUnavailable
from dragoman.tokens.mint import TokenMinter, TokenRequest


class MintTokenStage:
    name = "mint_token"

    def __init__(self, minter: TokenMinter, upstream_url: str) -> None:
        self._minter = minter
        self._upstream_url = upstream_url

    async def __call__(self, ctx: RequestContext) -> None:
        principal, operation, mapping = ctx.principal, ctx.operation, ctx.mapping
        assert principal is not None and operation is not None and mapping is not None
        assert principal.cloud_account is not None  # the mapping stage checked
        try:
            ctx.minted = await self._minter.mint(
                TokenRequest(
                    customer=mapping.payment_customer,
                    scope=operation.scope,
                    principal=principal.subject,
                    principal_issuer=principal.issuer,
                    cloud_account=principal.cloud_account,
                    method=ctx.method,
                    url=self._upstream_url + ctx.raw_path,
                )
            )
        except KeyUnavailableError:
            raise KeyUnavailable("no_signing_key") from None
