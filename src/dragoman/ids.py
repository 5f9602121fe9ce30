"""Random identifiers of requests, records and minted tokens (audit ids, generated request
ids, the tokens' ``jti``).

``uuid.uuid4()`` and :mod:`secrets` read the kernel's randomness once per id (a system
call); a request needs three. These come from a buffer of ``os.urandom`` output (the source
:mod:`secrets` reads) refilled every 4 KiB, each byte handed out once, and the buffer is
dropped in a forked child so two processes never hand out the same ids. They identify
things and must never repeat; none of them is a secret (a ``jti`` travels in its token).
Keys, CSRF secrets and nonces come from :mod:`secrets` directly.
"""

from __future__ import annotations

import os

_REFILL = 4096
_buffer = b""
_offset = 0


def _take(count: int) -> bytes:
    global _buffer, _offset
    if _offset + count > len(_buffer):
        _buffer, _offset = os.urandom(_REFILL), 0
    taken = _buffer[_offset : _offset + count]
    _offset += count
    return taken


def _forget() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", 0


os.register_at_fork(after_in_child=_forget)


def random_uuid() -> str:
    """A version 4 UUID in its usual text form."""
    raw = bytearray(_take(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_hex(size: int = 16) -> str:
    """``size`` random bytes as lower-case hex."""
    return _take(size).hex()


def random_bytes(size: int) -> bytes:
    """``size`` random bytes (at most 4 KiB)."""
    return _take(size)
