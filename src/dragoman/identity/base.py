"""The Authenticator protocol: "not mine" is a typed answer, distinct from "rejected"."""

from __future__ import annotations

from typing import Final, Protocol, final

from aiohttp import web

from dragoman.identity.principal import Principal
from dragoman.pipeline.errors import Unauthenticated


@final
class NotMine:
    """The authenticator does not apply to this request (no credential of its kind)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_MINE"


NOT_MINE: Final = NotMine()


class Authenticator(Protocol):
    """Verifies one kind of credential.

    Returns the Principal when the credential is its kind and valid, NOT_MINE when the
    request carries no credential of its kind, and raises a Denial (Unauthenticated or
    IdentityUnavailable) when the credential is its kind but cannot be accepted.
    """

    name: str

    async def authenticate(self, request: web.Request) -> Principal | NotMine: ...

    async def close(self) -> None: ...


def bearer_token(request: web.Request) -> str | None:
    """The bearer credential of the Authorization header, or None when there is none.

    Several Authorization headers, or a malformed one, are a rejection, not "none": an
    attacker must not make two components read two different credentials.
    """
    values = request.headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("authorization_ambiguous", "Send exactly one Authorization header.")
    scheme, _, credential = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip()
    if not credential or " " in credential:
        raise Unauthenticated("authorization_malformed", "The bearer credential is malformed.")
    return credential
