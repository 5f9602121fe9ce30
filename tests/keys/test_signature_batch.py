"""ES256 signatures asked for in one turn of the loop are made back to back
(dragoman.keys.batch): each request still gets its own signature, a cancelled request's is
not made, one failure is its own request's alone, and a quiet worker signs at once."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.keys.batch import SignatureBatch

from .support import es256_verifies


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def collecting(batch: SignatureBatch) -> SignatureBatch:
    """``batch`` once a turn of the loop asked it for two signatures."""
    key = p256()
    await asyncio.gather(batch.sign(key, b"one"), batch.sign(key, b"two"))
    assert batch.collecting
    return batch


async def test_signatures_asked_together_are_each_over_their_own_data() -> None:
    batch = SignatureBatch()
    keys = [p256() for _ in range(2)]
    asked = [(keys[i % 2], f"token {i}".encode()) for i in range(10)]
    signatures = await asyncio.gather(*(batch.sign(key, data) for key, data in asked))
    assert len(set(signatures)) == 10
    for (key, data), signature in zip(asked, signatures, strict=True):
        assert es256_verifies(key.public_key(), data, signature)
        assert not es256_verifies(key.public_key(), data + b"!", signature)


async def test_a_quiet_worker_signs_at_once_without_waiting_for_the_loop() -> None:
    batch = SignatureBatch()
    key = p256()
    for n in range(3):
        data = f"alone {n}".encode()
        assert es256_verifies(key.public_key(), data, await batch.sign(key, data))
        await asyncio.sleep(0)  # the next request comes in a later turn
    assert not batch.collecting


async def test_two_signatures_in_one_turn_start_collecting_and_a_batch_of_one_stops_it() -> None:
    batch = await collecting(SignatureBatch())
    key = p256()
    assert es256_verifies(key.public_key(), b"alone", await batch.sign(key, b"alone"))
    assert not batch.collecting


async def test_a_request_cancelled_before_the_batch_gets_no_signature_and_breaks_none() -> None:
    batch = await collecting(SignatureBatch())
    key = p256()
    cancelled = asyncio.create_task(batch.sign(key, b"gone"))
    await asyncio.sleep(0)  # asked: in the batch, not signed yet
    cancelled.cancel()
    assert es256_verifies(key.public_key(), b"kept", await batch.sign(key, b"kept"))
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_a_signature_that_fails_fails_its_own_request_alone() -> None:
    batch = await collecting(SignatureBatch())
    good = p256()
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
