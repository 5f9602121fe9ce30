"""ECDSA signature encodings: strict DER ``ECDSA-Sig-Value`` <-> fixed-size ``r || s``.

A cloud or hardware provider may answer a signing call with the DER form (RFC 3279 §2.2.3)::

    ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }

while JWS ES256 needs the 64-byte ``r || s`` (RFC 7518 §3.4). The bytes come from a remote
service, so :func:`der_to_raw` is a small parser that accepts exactly one encoding of each
signature (DER, X.690 §10) and refuses everything else with a short :class:`ValueError`:
BER forms (long-form lengths where the short form fits, lengths with leading zeros,
indefinite lengths), trailing bytes inside or after the sequence, any tag but SEQUENCE and
INTEGER, negative or non-minimal integers, and r or s that is zero or wider than ``size``.
Whether r and s are below the group order is left to verification.
"""

from __future__ import annotations

_SEQUENCE = 0x30
_INTEGER = 0x02


def _read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The DER length at ``data[pos]``: (length, position of the contents)."""
    if pos >= end:
        raise ValueError("truncated length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    if first == 0x80:
        raise ValueError("indefinite length")
    count = first & 0x7F
    if count > 2:
        raise ValueError("length too long")
    if end - pos < count:
        raise ValueError("truncated length")
    if data[pos] == 0:
        raise ValueError("length with a leading zero")
    length = int.from_bytes(data[pos : pos + count], "big")
    if length < 0x80:
        raise ValueError("long-form length where the short form is required")
    return length, pos + count


def _read_header(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """The contents of the element of type ``tag`` at ``pos``: (start, end)."""
    if pos >= end:
        raise ValueError(f"missing {what}")
    if data[pos] != tag:
        raise ValueError(f"{what}: wrong tag 0x{data[pos]:02x}")
    length, start = _read_length(data, pos + 1, end)
    if length > end - start:
        raise ValueError(f"{what}: length beyond the data")
    return start, start + length


def _read_integer(data: bytes, pos: int, end: int, size: int, what: str) -> tuple[bytes, int]:
    """A positive INTEGER no wider than ``size``: (its value left-padded to size, next pos)."""
    start, stop = _read_header(data, pos, end, _INTEGER, what)
    value = data[start:stop]
    if not value:
        raise ValueError(f"{what}: empty integer")
    if value[0] & 0x80:
        raise ValueError(f"{what}: negative integer")
    if len(value) > 1 and value[0] == 0 and not value[1] & 0x80:
        raise ValueError(f"{what}: non-minimal integer encoding")
    if value[0] == 0:
        value = value[1:]  # the one zero byte that keeps a high bit positive
    if not any(value):
        raise ValueError(f"{what} is zero")
    if len(value) > size:
        raise ValueError(f"{what} is too long")
    return value.rjust(size, b"\0"), stop


def der_to_raw(signature: bytes, *, size: int = 32) -> bytes:
    """``r || s`` (each left-padded to ``size`` bytes) of a strict-DER ECDSA-Sig-Value."""
    if size < 1:
        raise ValueError("size must be positive")
    end = len(signature)
    start, stop = _read_header(signature, 0, end, _SEQUENCE, "signature")
    if stop != end:
        raise ValueError("trailing bytes after the signature")
    r, pos = _read_integer(signature, start, stop, size, "r")
    s, pos = _read_integer(signature, pos, stop, size, "s")
    if pos != stop:
        raise ValueError("trailing bytes inside the signature")
    return r + s


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _encode_integer(value: bytes) -> bytes:
    number = int.from_bytes(value, "big")
    if number == 0:
        raise ValueError("r and s must not be zero")
    body = number.to_bytes(number.bit_length() // 8 + 1, "big")  # a sign byte when needed
    return bytes([_INTEGER]) + _encode_length(len(body)) + body


def raw_to_der(signature: bytes, *, size: int = 32) -> bytes:
    """The DER ECDSA-Sig-Value of ``r || s`` (each ``size`` bytes)."""
    if size < 1 or len(signature) != 2 * size:
        raise ValueError(f"expected {2 * size} bytes of r || s")
    body = _encode_integer(signature[:size]) + _encode_integer(signature[size:])
    return bytes([_SEQUENCE]) + _encode_length(len(body)) + body
