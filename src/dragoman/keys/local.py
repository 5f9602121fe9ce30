"""The embedded key provider: ES256 keys in the state store, sealed with the master key.

Each private key is stored as PKCS#8 DER sealed with AES-256-GCM under the master key
(:mod:`dragoman.keys.sealing`), bound to its ref (its RFC 7638 thumbprint), so a sealed key
copied under another ref does not open. Opened keys are kept in memory for signing. A
disabled key is refused to every provider that has not opened it yet, and at once to the one
that disabled it; a provider (another instance) that opened it before keeps it in memory.
That instance stops asking for it when its key ring re-reads the key set and finds the key
retired: within 3 x ``keys.refresh_interval`` (:mod:`dragoman.keys.ring`), the same window
as for ``keys rotate --now``.

A new key is sealed only under the master key of the key set (see
:meth:`LocalProvider._check_master_key`), so that every instance can open it once current.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.keys.batch import SignatureBatch
from dragoman.keys.jwk import ec_public_jwk, thumbprint
from dragoman.keys.provider import KeyUnavailableError, ProviderKey
from dragoman.keys.schema import local_signing_keys as t
from dragoman.keys.schema import signing_keys as key_set
from dragoman.keys.sealing import Sealer, SealingError
from dragoman.timeouts import within


class LocalProvider:
    name = "local"

    def __init__(self, engine: AsyncEngine, master_key: bytes, *, query_timeout: float = 2.0):
        self._engine = engine
        self._sealer = Sealer(master_key)
        self._timeout = query_timeout
        self._opened: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._signatures = SignatureBatch()
        self.allow_new_master_key = False
        """Set by `dragoman keys rotate|retire --new-master-key`: the next key may be sealed
        under this master key although it opens no key of the key set, if no local key can
        sign now or next (see :meth:`_check_master_key`). Cleared once a key is made."""

    async def _query(self, statement: Any) -> Any:
        async def go() -> Any:
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)
                return result.all() if statement.is_select else None

        try:
            return await within(self._timeout, go())
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise KeyUnavailableError(f"state store: {type(exc).__name__}") from None

    async def _check_master_key(self) -> None:
        """Refuse to seal a new key under a master key that does not open the keys of the
        key set (``signing_keys``): an instance (or `dragoman keys rotate`) with a wrong
        master key would otherwise add a key that the other instances cannot open once it
        is current, and none of them could sign.

        - If a local key can sign now or next (the newest one that is neither retired nor
          ended: the current key with no successor yet, or its pending successor), the
          master key must open it: the new key takes over from that one.
        - Otherwise (no local key can sign: every one retired or ended, or none made yet),
          the master key must open the newest local key made, retired and disabled ones
          included, unless :attr:`allow_new_master_key` is set: then this master key starts
          the key set anew (a master key replacement, docs/keys.md), once. A store without
          local keys takes any master key.

        Checked at every creation: the key set can move to another master key while this
        instance runs."""
        live = await self._query(
            select(t.c.ref, t.c.sealed)
            .join(key_set, key_set.c.ref == t.c.ref)
            .where(
                key_set.c.provider == self.name,
                key_set.c.retired_at.is_(None),
                key_set.c.deactivates_at.is_(None),
            )
            .order_by(key_set.c.generation.desc())
            .limit(1)
        )
        if live:
            self._must_open(live[0], "the key that signs now or next")
            return
        if self.allow_new_master_key:
            return
        newest = await self._query(
            select(t.c.ref, t.c.sealed).order_by(t.c.created_at.desc()).limit(1)
        )
        if newest:
            self._must_open(
                newest[0],
                "the newest key",
                ". No key can sign now: if you are replacing the master key, give the new one"
                " to every instance, then run `dragoman keys rotate --now --new-master-key`"
                " with it (docs/keys.md)",
            )

    def _must_open(self, row: Any, what: str, hint: str = "") -> None:
        try:
            self._sealer.open(row.sealed, row.ref)
        except SealingError:
            raise KeyUnavailableError(
                f"the master key does not open {what} in the state store (wrong master key?);"
                f" no key was made{hint}"
            ) from None

    async def create_key(self) -> ProviderKey:
        await self._check_master_key()
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ec_public_jwk(private.public_key())
        ref = thumbprint(jwk)
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        await self._query(
            t.insert().values(
                ref=ref,
                sealed=self._sealer.seal(der, ref),
                public_jwk=jwk,
                created_at=time.time(),
                disabled_at=None,
            )
        )
        self.allow_new_master_key = False
        self._opened[ref] = private
        return ProviderKey(ref, jwk)

    async def _row(self, ref: str) -> Any:
        rows = await self._query(select(t).where(t.c.ref == ref))
        if not rows:
            raise KeyUnavailableError(f"no local key {ref}")
        return rows[0]

    async def sign(self, ref: str, data: bytes) -> bytes:
        private = self._opened.get(ref)
        if private is None:
            private = await self._open(ref)
        return await self._signatures.sign(private, data)

    async def _open(self, ref: str) -> ec.EllipticCurvePrivateKey:
        row = await self._row(ref)
        if row.disabled_at is not None:
            raise KeyUnavailableError(f"local key {ref} is disabled")
        try:
            der = self._sealer.open(row.sealed, ref)
        except SealingError as exc:
            raise KeyUnavailableError(str(exc)) from None
        private = serialization.load_der_private_key(der, password=None)
        if (
            not isinstance(private, ec.EllipticCurvePrivateKey)
            or thumbprint(ec_public_jwk(private.public_key())) != ref
        ):
            raise KeyUnavailableError(f"local key {ref} does not match its ref")
        self._opened[ref] = private
        return private

    async def public_jwk(self, ref: str) -> dict[str, Any]:
        return dict((await self._row(ref)).public_jwk)

    async def list_keys(self) -> list[str]:
        rows = await self._query(select(t.c.ref).order_by(t.c.created_at))
        return [row.ref for row in rows]

    async def disable(self, ref: str) -> None:
        self._opened.pop(ref, None)
        await self._query(
            update(t)
            .where(t.c.ref == ref, t.c.disabled_at.is_(None))
            .values(disabled_at=time.time())
        )

    async def mark_current(self, ref: str) -> None:
        return None

    async def close(self) -> None:
        self._opened.clear()
