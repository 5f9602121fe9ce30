"""Reading the upstream's own customer records, for registration and reconciliation.

dragoman asks the upstream as it asks for anything: through the catalog operation that
returns one customer, with a token it mints for that operation and that customer (the
principal is dragoman itself). What comes back is reduced to what a link depends on: does
the customer exist, is it deleted or merged, which cloud account owns it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import aiohttp

from dragoman.catalog.model import Operation
from dragoman.identity.oidc import claim
from dragoman.keys.provider import KeyUnavailableError
from dragoman.settings import PlatformRecordSettings
from dragoman.tokens.mint import TokenMinter, TokenRequest

SERVICE_PRINCIPAL = "dragoman"
MAX_RECORD_BYTES = 256 * 1024
PROBLEM_TYPE = "application/problem+json"
"""A 404 or 410 means "no such customer" only when it is the platform's own problem answer
(RFC 9457); any other (a gateway's or proxy's no-route page) is the platform unavailable."""


class PlatformUnavailable(Exception):
    """The upstream could not be asked (down, slow, an unexpected answer, no signing key)."""


class Drift(StrEnum):
    """How a mapping differs from the platform's record of its customer."""

    NONE = "none"
    MISSING = "customer_missing"
    DELETED = "customer_deleted"
    MERGED = "customer_merged"
    REOWNED = "account_mismatch"


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer: str
    exists: bool
    deleted: bool = False
    merged_into: str | None = None
    cloud_account: str | None = None

    def drift_for(self, cloud_account: str) -> Drift:
        """Whether this record still supports a link from ``cloud_account``."""
        if not self.exists:
            return Drift.MISSING
        if self.deleted:
            return Drift.DELETED
        if self.merged_into:
            return Drift.MERGED
        if self.cloud_account != cloud_account:
            return Drift.REOWNED
        return Drift.NONE


class PlatformClient:
    def __init__(
        self,
        settings: PlatformRecordSettings,
        operation: Operation,
        *,
        upstream_url: str,
        minter: TokenMinter,
        issuer: str,
    ) -> None:
        if operation.customer_param is None or operation.method != "GET":
            raise ValueError(
                f"mapping.platform.customer_operation {operation.id!r} must be a GET whose"
                " path names the customer (customer_param)"
            )
        self._settings = settings
        self._operation = operation
        self._upstream = upstream_url
        self._minter = minter
        self._issuer = issuer
        self._session: aiohttp.ClientSession | None = None

    def _path(self, customer: str) -> str:
        parts = []
        for segment in self._operation.segments:
            if not segment.is_param:
                parts.append(segment.text)
            elif segment.name == self._operation.customer_param:
                parts.append(quote(customer, safe=""))
            else:
                raise ValueError("the customer operation may have no other path parameter")
        return "/" + "/".join(parts)

    async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord:
        """The platform's record of ``customer``, asked on behalf of ``cloud_account``."""
        path = self._path(customer)
        try:
            minted = await self._minter.mint(
                TokenRequest(
                    customer=customer,
                    scope=self._operation.scope,
                    principal=SERVICE_PRINCIPAL,
                    principal_issuer=self._issuer,
                    cloud_account=cloud_account,
                    method="GET",
                    url=self._upstream + path,
                )
            )
        except KeyUnavailableError as exc:
            raise PlatformUnavailable(f"no signing key: {exc}") from None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout)
            )
        try:
            async with self._session.get(
                self._upstream + path,
                headers={"Authorization": f"Bearer {minted.value}", "Accept": "application/json"},
                allow_redirects=False,
            ) as response:
                if response.status in (404, 410):
                    if response.content_type != PROBLEM_TYPE:
                        raise PlatformUnavailable(
                            f"the platform answered {response.status} without a problem"
                            f" document ({response.content_type or 'no content type'})"
                        )
                    return CustomerRecord(customer, exists=False)
                if response.status != 200:
                    raise PlatformUnavailable(f"the platform answered {response.status}")
                body = await _read_capped(response.content, MAX_RECORD_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PlatformUnavailable(type(exc).__name__) from None
        try:
            record = json.loads(body)
        except (ValueError, RecursionError):
            # RecursionError: nested too deeply for the parser (a broken or hostile answer).
            raise PlatformUnavailable("the customer record is not JSON") from None
        if not isinstance(record, Mapping):
            raise PlatformUnavailable("the customer record is not a JSON object")
        # An answer whose id is not the customer asked for is not that customer's record
        # (a maintenance page, a proxy's own JSON): the platform is unavailable, no drift.
        id_field = self._settings.id_field
        if not _names(claim(record, id_field), customer):
            raise PlatformUnavailable(
                f"the answer is not the customer's record (its {id_field!r} is not the"
                " customer asked for)"
            )
        return self._reduce(customer, record)

    def _reduce(self, customer: str, record: Mapping[str, Any]) -> CustomerRecord:
        account = claim(record, self._settings.account_field)
        merged = claim(record, self._settings.merged_field)
        return CustomerRecord(
            customer=customer,
            exists=True,
            deleted=claim(record, self._settings.deleted_field) is True,
            merged_into=merged if isinstance(merged, str) and merged else None,
            cloud_account=account if isinstance(account, str) and account else None,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, however many pieces it comes in; PlatformUnavailable as soon as it
    grows past ``limit`` bytes."""
    body = bytearray()
    while chunk := await content.read(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise PlatformUnavailable("the customer record is too large")
    return bytes(body)


def _names(found: Any, customer: str) -> bool:
    """Whether a record's id is ``customer``: the same string, or the integer a platform
    with numeric ids writes for it (``3003`` for ``"3003"``; never a boolean)."""
    if isinstance(found, str):
        return found == customer
    return isinstance(found, int) and not isinstance(found, bool) and str(found) == customer
