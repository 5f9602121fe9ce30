"""The contract every key provider keeps (local, PKCS#11, AWS KMS): one suite, run on each.

Each provider's fixture (``<name>_provider`` in this folder's conftest) yields a
ProviderHarness over a real backend: the state store, SoftHSM2, a KMS-compatible server.
"""

from __future__ import annotations

import hashlib

import pytest

from dragoman.keys.provider import KeyUnavailableError

from ..support import jwk_verifies
from .harness import ProviderHarness

PROVIDERS = ["local", "pkcs11", "aws_kms"]
DATA = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ"


@pytest.fixture(params=PROVIDERS)
def harness(request: pytest.FixtureRequest) -> ProviderHarness:
    found: ProviderHarness = request.getfixturevalue(f"{request.param}_provider")
    return found


async def test_a_new_key_signs_what_its_public_jwk_verifies(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    signature = await harness.provider.sign(key.ref, DATA)
    assert jwk_verifies(key.public_jwk, DATA, signature)
    assert not jwk_verifies(key.public_jwk, DATA + b"x", signature)


async def test_the_public_jwk_is_p256_with_public_members_only(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    assert set(key.public_jwk) == {"kty", "crv", "x", "y"}
    assert (key.public_jwk["kty"], key.public_jwk["crv"]) == ("EC", "P-256")
    assert await harness.provider.public_jwk(key.ref) == key.public_jwk


async def test_every_key_is_a_new_key(harness: ProviderHarness) -> None:
    first = await harness.provider.create_key()
    second = await harness.provider.create_key()
    assert first.ref != second.ref
    assert first.public_jwk != second.public_jwk


async def test_signatures_are_randomised_and_all_verify(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    signatures = {await harness.provider.sign(key.ref, DATA) for _ in range(5)}
    assert len(signatures) == 5
    assert all(jwk_verifies(key.public_jwk, DATA, s) for s in signatures)


async def test_signing_hashes_arbitrary_lengths(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    for data in (b"", b"a", hashlib.sha256(b"x").digest(), b"z" * 10_000):
        assert jwk_verifies(key.public_jwk, data, await harness.provider.sign(key.ref, data))


async def test_created_keys_are_listed(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    assert key.ref in await harness.provider.list_keys()


async def test_a_disabled_key_cannot_sign(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    await harness.provider.disable(key.ref)
    with pytest.raises(KeyUnavailableError):
        await harness.provider.sign(key.ref, DATA)
    await harness.provider.disable(key.ref)  # idempotent


async def test_disabling_one_key_leaves_the_others_signing(harness: ProviderHarness) -> None:
    kept = await harness.provider.create_key()
    dropped = await harness.provider.create_key()
    await harness.provider.disable(dropped.ref)
    assert jwk_verifies(kept.public_jwk, DATA, await harness.provider.sign(kept.ref, DATA))


async def test_an_unknown_key_cannot_sign(harness: ProviderHarness) -> None:
    await harness.provider.create_key()
    with pytest.raises(KeyUnavailableError):
        await harness.provider.sign("no-such-key", DATA)
    with pytest.raises(KeyUnavailableError):
        await harness.provider.public_jwk("no-such-key")


async def test_keys_survive_a_restart(harness: ProviderHarness) -> None:
    key = await harness.provider.create_key()
    await harness.provider.close()
    reopened = await harness.reopen()
    assert key.ref in await reopened.list_keys()
    assert await reopened.public_jwk(key.ref) == key.public_jwk
    assert jwk_verifies(key.public_jwk, DATA, await reopened.sign(key.ref, DATA))
