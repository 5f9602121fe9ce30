"""ES256 signatures asked for in one turn of the loop are made back to back
(dragoman.keys.batch): each request still gets its own signature, a cancelled request's is
not made, and one failure is its own request's alone."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.keys.batch import SignatureBatch

from .support import es256_verifies


async def test_signatures_asked_together_are_each_over_their_own_data() -> None:
    batch = SignatureBatch()
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    asked = [(keys[i % 2], f"token {i}".encode()) for i in range(10)]
    signatures = await asyncio.gather(*(batch.sign(key, data) for key, data in asked))
    assert len(set(signatures)) == 10
    for (key, data), signature in zip(asked, signatures, strict=True):
        assert len(signature) == 64
        assert es256_verifies(key.public_key(), data, signature)
        assert not es256_verifies(key.public_key(), data + b"!", signature)


async def test_signatures_of_later_turns_make_batches_of_their_own() -> None:
    batch = SignatureBatch()
    key = ec.generate_private_key(ec.SECP256R1())
    first = await batch.sign(key, b"one")
    second = await batch.sign(key, b"two")
    assert es256_verifies(key.public_key(), b"one", first)
    assert es256_verifies(key.public_key(), b"two", second)


async def test_a_request_cancelled_before_the_batch_gets_no_signature_and_breaks_none() -> None:
    batch = SignatureBatch()
    key = ec.generate_private_key(ec.SECP256R1())
    cancelled = asyncio.create_task(batch.sign(key, b"gone"))
    await asyncio.sleep(0)  # asked: in the batch, not signed yet
    cancelled.cancel()
    assert es256_verifies(key.public_key(), b"kept", await batch.sign(key, b"kept"))
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_a_signature_that_fails_fails_its_own_request_alone() -> None:
    batch = SignatureBatch()
    good = ec.generate_private_key(ec.SECP256R1())
    wrong_curve = ec.generate_private_key(ec.SECP384R1())  # r and s do not fit ES256's 32 bytes
    answers = await asyncio.gather(
        batch.sign(good, b"a"),
        batch.sign(wrong_curve, b"b"),
        batch.sign(good, b"c"),
        return_exceptions=True,
    )
    assert isinstance(answers[1], OverflowError)
    assert es256_verifies(good.public_key(), b"a", answers[0])  # type: ignore[arg-type]
    assert es256_verifies(good.public_key(), b"c", answers[2])  # type: ignore[arg-type]
