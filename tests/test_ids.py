"""Request, record and token ids: well-formed, unique, and never repeated by a forked child."""

from __future__ import annotations

import os
import uuid

from dragoman.ids import random_bytes, random_hex, random_uuid


def test_random_uuid_is_a_version_4_uuid() -> None:
    for _ in range(1000):
        value = random_uuid()
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_ids_do_not_repeat() -> None:
    ids = [random_uuid() for _ in range(20_000)] + [random_hex() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(h) == 32 for h in ids[20_000:])


def test_random_bytes_span_buffer_refills_without_repeating() -> None:
    # 16-byte ids across many 4 KiB refills, and sizes that do not divide the buffer.
    taken = [random_bytes(16) for _ in range(10_000)] + [random_bytes(33) for _ in range(2_000)]
    assert len(set(taken)) == len(taken)
    assert {len(b) for b in taken} == {16, 33}


def test_forked_child_does_not_repeat_the_parents_next_ids() -> None:
    random_uuid()  # the buffer is filled
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, "".join(random_uuid() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    from_child = os.read(read, 4096).decode()
    os.close(read)
    mine = "".join(random_uuid() for _ in range(8))
    assert from_child and from_child != mine
